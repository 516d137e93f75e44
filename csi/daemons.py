"""The dataset daemons of the node: start one with ``fluidfs mount`` within a deadline, stop it,
and recognise it again by pid *and* start time.

``fluidfs mount`` detaches the daemon (new session) and exits once the mount answers, so the
daemon is not a child of the process that started it: inside the supervisor's container it is
adopted by PID 1 (the reaper, ``csi/reaper.py``), which is what lets it outlive the supervisor
process.  A daemon is identified by ``(pid, boot id + start time)``: after a container restart
the same pid may belong to an unrelated process of the new PID namespace, which must never be
signalled.

A mount timeout shorter than the source request timeout + 10 s (what ``fluidfs mount --timeout``
requires) is kept by the supervisor itself: ``fluidfs mount`` gets the longer ``--timeout`` and
is interrupted at the supervisor's deadline (SIGINT: it stops the daemon it started and unmounts).

Caveats: if ``fluidfs mount`` itself overruns its own ``--timeout`` by more than
``KILL_GRACE`` seconds its process group is killed; a daemon child stuck before it writes its
pid file cannot be found and is left to its own source timeouts.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc

from fluidfs.config import DEFAULT_REQUEST_TIMEOUT
from fluidfs.util.proc import pid_alive
from fluidfs.util.sizes import parse_duration

from .state import SharedMount
from .volumes import RequestError

log = logging.getLogger(__name__)

_LOG_REF = re.compile(r"\s*\(log: [^)]*\)")
KILL_GRACE = 10.0  # seconds `fluidfs mount` may overrun its --timeout before it is killed
MOUNT_MARGIN = 10.0  # `fluidfs mount --timeout` must exceed the source request timeout by this much
EXIT_USAGE, EXIT_SOURCE = 2, 3  # fluidfs exit codes (fluidfs.errors): bad input, source failure


class MountFailed(RequestError):
    """A mount or bind operation failed (INTERNAL unless the cause says otherwise)."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INTERNAL) -> None:
        super().__init__(code, message)


def fluidfs_command() -> list[str] | None:
    """How to run the fluidfs CLI: ``$FLUIDFS_CSI_FLUIDFS_CMD`` (split on spaces, for tests),
    the ``fluidfs`` script next to ``sys.executable``, ``python -m fluidfs`` if importable, or
    ``fluidfs`` on PATH; None when none is available."""
    override = os.environ.get("FLUIDFS_CSI_FLUIDFS_CMD")
    if override:
        return override.split()
    sibling = os.path.join(os.path.dirname(sys.executable), "fluidfs")
    if os.access(sibling, os.X_OK):
        return [sibling]
    try:
        if importlib.util.find_spec("fluidfs.cli.main") is not None:
            return [sys.executable, "-m", "fluidfs"]
    except (ImportError, ValueError):
        pass
    found = shutil.which("fluidfs")
    return [found] if found else None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_marker(pid: int) -> str:
    """``<boot id>:<start time in ticks>`` of ``pid``, "" if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{_boot_id()}:{start}"


def read_pid_file(m: SharedMount) -> int | None:
    try:
        with open(m.pid_file, encoding="utf-8") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def daemon_pid(m: SharedMount) -> int | None:
    """The pid of ``m``'s daemon if it is alive and really is the one that was started for it."""
    pid = m.daemon_pid or read_pid_file(m)
    if pid is None or not pid_alive(pid, reap=True):
        return None
    if m.daemon_start and start_marker(pid) != m.daemon_start:
        return None  # the pid now belongs to another process
    return pid


def kill_daemon(m: SharedMount, sig: int = signal.SIGKILL) -> None:
    pid = daemon_pid(m)
    if pid is not None:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def start(cmd: list[str], m: SharedMount, timeout: float) -> None:
    """Run ``fluidfs mount`` for ``m`` and record its daemon; raises MountFailed with
    DEADLINE_EXCEEDED when it does not answer within ``timeout`` seconds, INVALID_ARGUMENT for a
    rejected dataset, UNAVAILABLE for a source that cannot be reached or read, INTERNAL otherwise."""
    os.makedirs(m.mountpoint, exist_ok=True)
    os.makedirs(m.cache_dir, mode=0o700, exist_ok=True)
    log_file = os.path.join(os.path.dirname(m.source), "daemon.log")
    # `fluidfs mount` wants room to report a source that does not answer (its request timeout +
    # 10 s); a shorter deadline of ours is kept by interrupting it (it then stops its daemon).
    cli_timeout = max(timeout, request_timeout(m.args) + MOUNT_MARGIN)
    argv = [
        *cmd,
        "mount",
        m.source,
        m.mountpoint,
        "--cache-dir",
        m.cache_dir,
        "--allow-other",
        "--pid-file",
        m.pid_file,
        "--log-file",
        log_file,
        "--timeout",
        f"{max(1.0, math.ceil(cli_timeout)):.0f}",
        *m.args,
    ]
    log.info("dataset %s: mounting at %s (timeout %.0f s)", m.key, m.mountpoint, timeout)
    began = time.monotonic()
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err:
        # stderr to a file, not a pipe: the daemon may keep inherited fds open.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout if cli_timeout > timeout else timeout + KILL_GRACE)
        except subprocess.TimeoutExpired:
            if cli_timeout > timeout:  # our deadline first: SIGINT makes it end its daemon and unmount
                _interrupt(proc)
            if proc.returncode == 0:  # it mounted just then
                rc = 0
            else:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
                rc = -1
        err.seek(0)
        lines = [ln for ln in err.read().splitlines() if ln.strip()]
    elapsed = time.monotonic() - began
    if rc == 0:
        pid = read_pid_file(m)
        m.daemon_pid = pid
        m.daemon_start = start_marker(pid) if pid else ""
        return
    msg = lines[-1] if lines else f"exit code {rc}"
    if msg.startswith("fluidfs: error: "):
        msg = msg[len("fluidfs: error: ") :]
    msg = _LOG_REF.sub("", msg)  # the dataset's directory, log included, goes with the failure
    if rc == EXIT_USAGE:
        code = grpc.StatusCode.INVALID_ARGUMENT
    elif rc == EXIT_SOURCE:
        code = grpc.StatusCode.UNAVAILABLE
    elif elapsed >= timeout - 0.5:
        code = grpc.StatusCode.DEADLINE_EXCEEDED
        msg = f"the dataset did not answer within {timeout:.0f} s"
    else:
        code = grpc.StatusCode.INTERNAL
    raise MountFailed(f"fluidfs mount of dataset {m.key} failed: {msg}", code)


def request_timeout(args: list[str]) -> float:
    """The source request timeout a ``fluidfs mount`` with ``args`` gets (its ``--request-timeout``)."""
    for i, a in enumerate(args[:-1]):
        if a == "--request-timeout":
            try:
                return parse_duration(args[i + 1])
            except ValueError:
                break  # fluidfs mount reports it
    return DEFAULT_REQUEST_TIMEOUT


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT ``fluidfs mount`` (it stops the daemon it started and unmounts), then wait a little."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=KILL_GRACE)
    except (OSError, subprocess.TimeoutExpired):
        pass


def stop(cmd: list[str] | None, m: SharedMount, timeout: float) -> None:
    """Ask ``m``'s daemon to unmount and exit (``fluidfs umount``, bounded); SIGTERM it if it is
    still there.  The caller removes whatever is left mounted."""
    pid = daemon_pid(m)
    if cmd is not None and pid is not None:
        try:
            subprocess.run(
                [*cmd, "umount", m.mountpoint],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(1.0, timeout),
                check=False,
            )
        except subprocess.TimeoutExpired:
            pass
    kill_daemon(m, signal.SIGTERM)
