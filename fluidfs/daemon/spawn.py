"""Process management for mounts: start the daemon detached and wait for its readiness report,
check a mountpoint, unmount, and signal a running daemon.

``fluidfs mount`` (without ``--foreground``) re-executes itself as a detached child
(``--foreground --ready-fd N``, new session, output to a log file) and waits on a pipe: the
child writes ``READY`` once the kernel answers through the mount, or ``ERR <code> <message>``
when it fails.  The parent exits with the child's outcome; if the child dies without a word,
the parent reports the last line of its log and makes sure nothing is left mounted.
Credentials are never on argv: the child inherits the environment.  The child itself runs
:func:`fluidfs.daemon.run.run_foreground`.

Caveats: ``unmount`` and ``request_refresh`` find the daemon through its runtime record.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time

from fluidfs.daemon.record import read_record, record_path
from fluidfs.errors import MountError
from fluidfs.util.mounts import is_mounted
from fluidfs.util.proc import pid_alive

log = logging.getLogger(__name__)


def check_mountpoint(mountpoint: str) -> None:
    """Raise MountError unless ``mountpoint`` is an existing directory with nothing mounted on it."""
    if is_mounted(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is busy (something is already mounted there)")
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mountpoint {mountpoint} does not exist") from None
    except OSError as exc:
        raise MountError(f"mountpoint {mountpoint} is not usable: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {mountpoint} is not a directory")


def _default_log(mountpoint: str) -> str:
    path = record_path(mountpoint)[: -len(".json")] + ".log"
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    return path


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def spawn_and_wait(argv: list[str], mountpoint: str, log_file: str | None, timeout: float) -> int:
    """Start the daemon child and wait for its readiness report; return the exit code."""
    log_path = os.path.abspath(log_file) if log_file else _default_log(mountpoint)
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "fluidfs", *argv, "--foreground", "--ready-fd", str(w)]
    with open(log_path, "ab", buffering=0) as logf:
        os.chmod(log_path, 0o600)
        child = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            pass_fds=(w,),
            start_new_session=True,
            close_fds=True,
        )
    os.close(w)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                child.terminate()
                _force_unmount(mountpoint)
                print(f"fluidfs: error: mount did not answer within {timeout:.0f}s (log: {log_path})", file=sys.stderr)
                return 1
            ready, _, _ = select.select([r], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                buf += chunk
    except KeyboardInterrupt:
        child.terminate()
        raise
    finally:
        os.close(r)
    line = buf.decode("utf-8", "replace").strip()
    if line == "READY":
        return 0
    if line.startswith("ERR "):
        _, code, msg = (line.split(" ", 2) + [""])[:3]
        print(f"fluidfs: error: {msg}", file=sys.stderr)
        child.wait(timeout=10)
        return int(code) if code.isdigit() else 1
    rc = child.wait(timeout=10)
    _force_unmount(mountpoint)
    last = _tail(log_path)
    print(f"fluidfs: error: daemon exited with status {rc} before mounting: {last} (log: {log_path})", file=sys.stderr)
    return 1


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _force_unmount(mountpoint: str) -> None:
    if is_mounted(mountpoint):
        fm = _fusermount()
        if fm:
            subprocess.run([fm, "-uz", mountpoint], capture_output=True)


def unmount(mountpoint: str, *, lazy: bool = False, timeout: float = 30.0) -> None:
    """Unmount ``mountpoint`` and wait for its daemon to exit."""
    rec = read_record(mountpoint)
    if not is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is not mounted")
    fm = _fusermount()
    cmd = [fm, "-u"] if fm else ["umount"]
    if lazy:
        cmd = [fm, "-uz"] if fm else ["umount", "-l"]
    res = subprocess.run([*cmd, mountpoint], capture_output=True, text=True)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise MountError(f"cannot unmount {mountpoint}: {msg[-1] if msg else 'failed'}")
    pid = rec.get("pid") if rec else None
    if isinstance(pid, int):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)


def request_refresh(mountpoint: str) -> None:
    """Ask a mount's daemon to drop its metadata caches (SIGUSR1)."""
    rec = read_record(mountpoint)
    pid = rec.get("pid") if rec else None
    if not os.path.ismount(mountpoint) or not isinstance(pid, int) or not pid_alive(pid):
        raise MountError(f"{mountpoint} is not a running fluidfs mount")
    os.kill(pid, signal.SIGUSR1)
