"""Process management for mounts: check a mountpoint, start the daemon detached and wait for its
readiness report, unmount, and signal a running daemon — never touching a mount point, and
never waiting without a bound.

``fluidfs mount`` (without ``--foreground``) re-executes itself as a detached child
(:func:`daemon_command` + ``--ready-fd N``, new session, output to a log file) and waits on a
pipe: the child writes ``READY`` once the kernel answers through the mount, or ``ERR <code>
<message>`` when it fails.  The parent exits with the child's outcome; if the child dies without
a word, the parent reports the last line of its log and makes sure nothing is left mounted; if
it does not answer within ``--timeout``, the parent terminates it, kills it if it is still there
:data:`KILL_GRACE` seconds later, and detaches whatever it mounted.  Credentials are never on
argv: the child inherits the environment.  The child itself runs
:func:`fluidfs.daemon.run.run_foreground`.

Mounts are found through the mount table (:func:`fluidfs.daemon.record.locate`), so ``umount``
and ``refresh`` answer at once even when the mount's daemon hangs; only ``fuse.fluidfs`` mounts
are unmounted.  ``umount`` waits ``--timeout`` for the daemon to exit after the unmount, then
stops it (SIGTERM, then SIGKILL) — only if the record's pid is verified to be that daemon.

Caveats: the default log file is kept after the daemon exits (for post-mortems).
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
from collections.abc import Sequence

from fluidfs.daemon.record import checked_runtime_dir, daemon_pid, locate, open_private, record_path
from fluidfs.errors import MountError
from fluidfs.util.mounts import mount_at
from fluidfs.util.proc import pid_alive, state

log = logging.getLogger(__name__)

#: seconds between SIGTERM and SIGKILL for a daemon (or start-up child) that does not exit
KILL_GRACE = 5.0
#: seconds an unmount command may take
UNMOUNT_TIMEOUT = 30.0


def check_mountpoint(mountpoint: str, *, nonempty: bool = False) -> str:
    """The resolved ``mountpoint`` if a mount can go there; else MountError (one line, exit 1).

    Refused: anything mounted there already (said precisely: a live or a crashed fluidfs mount,
    another filesystem), a missing path or a non-directory, and a non-empty directory unless
    ``nonempty`` (its files would be hidden while mounted).
    """
    found = locate(mountpoint)
    mnt = found.mountpoint
    if found.entry is not None:
        if not found.is_fluidfs:
            raise MountError(f"mountpoint {mnt} is busy ({found.what()} is mounted there)")
        rec = found.record
        if rec is None:
            raise MountError(
                f"mountpoint {mnt} is busy: a fluidfs mount without a runtime record is there (another user's, "
                f"or its daemon is gone); fluidfs umount {mnt} unmounts it"
            )
        rec_pid = rec.get("pid")
        if daemon_pid(rec) is not None or (isinstance(rec_pid, int) and pid_alive(rec_pid)):
            raise MountError(
                f"mountpoint {mnt} is busy: it is already a fluidfs mount (dataset {rec.get('dataset')}, pid {rec_pid})"
            )
        raise MountError(
            f"mountpoint {mnt} is busy: a fluidfs mount whose daemon is no longer running (crashed or killed) "
            f"is still there; run fluidfs umount {mnt} first"
        )
    try:
        st = os.stat(mnt)
    except FileNotFoundError:
        raise MountError(f"mountpoint {mnt} does not exist") from None
    except OSError as exc:
        raise MountError(f"mountpoint {mnt} is not usable: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {mnt} is not a directory")
    if not nonempty:
        try:
            with os.scandir(mnt) as it:
                empty = next(it, None) is None
        except OSError as exc:
            raise MountError(f"mountpoint {mnt} is not usable: {exc.strerror}") from None
        if not empty:
            raise MountError(
                f"mountpoint {mnt} is not empty (its files would be hidden while mounted); "
                "use --nonempty to mount over it anyway"
            )
    return mnt


def daemon_command(argv: Sequence[str]) -> list[str]:
    """The detached daemon's command line for ``fluidfs`` arguments ``argv`` (``--ready-fd`` follows)."""
    return [sys.executable, "-m", "fluidfs", *argv, "--foreground"]


def _open_log(log_file: str | None, mountpoint: str) -> tuple[int, str]:
    """(fd, path) of the daemon's log: ``log_file``, or ``<record>.log`` in the runtime directory."""
    if log_file:
        path = os.path.abspath(log_file)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise MountError(f"log file {path}: {exc.strerror}") from None
    else:
        checked_runtime_dir(create=True)
        path = record_path(mountpoint)[: -len(".json")] + ".log"
        try:
            fd = open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except OSError as exc:
            raise MountError(f"log file {path}: {exc.strerror} (not following a symlink)") from None
    os.fchmod(fd, 0o600)
    return fd, path


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def _end_child(child: subprocess.Popen[bytes], wait: float) -> int | None:
    """Wait up to ``wait`` s for ``child``; then SIGTERM, KILL_GRACE s, SIGKILL.  Its exit status."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            child.send_signal(sig)
        try:
            return child.wait(timeout=wait if sig is None else KILL_GRACE)
        except subprocess.TimeoutExpired:
            continue
    return None


def spawn_and_wait(cmd: Sequence[str], mountpoint: str, log_file: str | None, timeout: float) -> int:
    """Start the daemon ``cmd`` (``--ready-fd N`` is appended) and wait for its readiness report;
    return the exit code.  ``mountpoint`` is resolved (:func:`check_mountpoint`)."""
    logfd, log_path = _open_log(log_file, mountpoint)
    r, w = os.pipe()
    try:
        child = subprocess.Popen(
            [*cmd, "--ready-fd", str(w)],
            stdin=subprocess.DEVNULL,
            stdout=logfd,
            stderr=logfd,
            pass_fds=(w,),
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(w)
        os.close(logfd)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                _end_child(child, 0)
                force_unmount(mountpoint)
                print(f"fluidfs: error: mount did not answer within {timeout:.0f}s (log: {log_path})", file=sys.stderr)
                return 1
            ready, _, _ = select.select([r], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                buf += chunk
    except KeyboardInterrupt:
        _end_child(child, 0)
        force_unmount(mountpoint)
        raise
    finally:
        os.close(r)
    line = buf.decode("utf-8", "replace").strip()
    if line == "READY":
        return 0
    if line.startswith("ERR "):
        _, code, msg = (line.split(" ", 2) + [""])[:3]
        print(f"fluidfs: error: {msg}", file=sys.stderr)
        _end_child(child, 10)
        return int(code) if code.isdigit() else 1
    rc = _end_child(child, 10)
    force_unmount(mountpoint)
    last = _tail(log_path)
    print(f"fluidfs: error: daemon exited with status {rc} before mounting: {last} (log: {log_path})", file=sys.stderr)
    return 1


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _unmount_cmd(lazy: bool) -> list[str]:
    fm = _fusermount()
    if fm:
        return [fm, "-uz"] if lazy else [fm, "-u"]
    return ["umount", "-l"] if lazy else ["umount"]


def force_unmount(mountpoint: str, dev: str | None = None) -> None:
    """Detach the FUSE mount at ``mountpoint`` (resolved), if there is one — only if its device is
    ``dev`` when given (never someone else's newer mount there) — lazily, errors ignored."""
    entry = mount_at(mountpoint)
    if entry is not None and entry.fstype.startswith("fuse") and dev in (None, entry.dev):
        try:
            subprocess.run([*_unmount_cmd(lazy=True), mountpoint], capture_output=True, timeout=UNMOUNT_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("could not detach %s: %s", mountpoint, exc)


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_daemon(pid: int) -> str | None:
    """End daemon ``pid``: SIGTERM (and SIGCONT if it is stopped), then SIGKILL after KILL_GRACE s.
    The signal that ended it (``SIGTERM``/``SIGKILL``), None if it is still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
            if sig == signal.SIGTERM and state(pid) in ("T", "t"):
                os.kill(pid, signal.SIGCONT)  # a stopped process handles SIGTERM only once continued
        except ProcessLookupError:
            return sig.name
        if _wait_exit(pid, KILL_GRACE):
            return sig.name
    return None


def unmount(mountpoint: str, *, lazy: bool = False, timeout: float = 30.0) -> None:
    """Unmount the fluidfs mount at ``mountpoint`` and wait up to ``timeout`` s for its daemon to exit
    (then stop it).  MountError (exit 1) if nothing, or something else than fluidfs, is mounted there."""
    found = locate(mountpoint)
    if found.entry is None:
        raise MountError(f"{mountpoint} is not mounted")
    if not found.is_fluidfs:
        raise MountError(f"{mountpoint} is not a fluidfs mount ({found.what()} is mounted there); use umount(8) for it")
    mnt = found.mountpoint
    pid = daemon_pid(found.record)
    try:
        res = subprocess.run(
            [*_unmount_cmd(lazy), mnt], capture_output=True, text=True, timeout=max(timeout, UNMOUNT_TIMEOUT)
        )
    except subprocess.TimeoutExpired:
        raise MountError(f"cannot unmount {mountpoint}: no answer; try fluidfs umount --lazy {mountpoint}") from None
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        why = msg[-1] if msg else "failed"
        hint = "" if lazy else f"; if it is busy, fluidfs umount --lazy {mountpoint} detaches it now"
        raise MountError(f"cannot unmount {mountpoint}: {why}{hint}")
    if pid is not None and not _wait_exit(pid, timeout):
        how = stop_daemon(pid)
        print(
            f"fluidfs: warning: {mountpoint} is unmounted, but its daemon (pid {pid}) did not exit within "
            f"{timeout:g}s; " + (f"ended it with {how}" if how else "could not end it"),
            file=sys.stderr,
        )
    rec = found.record
    if rec is not None and daemon_pid(rec) is None:  # its daemon is gone: a record left by a crash
        try:
            os.unlink(record_path(mnt))
        except OSError:
            pass


def request_refresh(mountpoint: str) -> None:
    """Ask a mount's daemon to drop its metadata caches (SIGUSR1)."""
    found = locate(mountpoint)
    if found.entry is None:
        raise MountError(f"{mountpoint} is not mounted")
    if not found.is_fluidfs or found.record is None:
        raise MountError(f"{mountpoint} is not a fluidfs mount")
    pid = daemon_pid(found.record)
    rec_pid = found.record.get("pid")
    if pid is None:
        if isinstance(rec_pid, int) and pid_alive(rec_pid):
            raise MountError(
                f"{mountpoint}: process {rec_pid} named by its runtime record cannot be verified as its daemon "
                "(start time or command line differ); not signalling it"
            )
        raise MountError(
            f"{mountpoint}: its fluidfs daemon (pid {rec_pid}) is no longer running; "
            f"unmount it with fluidfs umount {mountpoint}"
        )
    if state(pid) in ("T", "t"):
        raise MountError(
            f"{mountpoint}: its daemon (pid {pid}) is stopped; resume it (kill -CONT {pid}) "
            f"or unmount with fluidfs umount --lazy {mountpoint}"
        )
    os.kill(pid, signal.SIGUSR1)
