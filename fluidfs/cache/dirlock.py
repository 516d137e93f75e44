"""Exclusive ownership of a cache directory: an ``flock`` on ``DIR/.lock`` held for a tier's life.

Two fluidfs mounts writing one SSD cache directory would each keep an index the other does not
see, so quotas would be double-spent and one mount's eviction would delete the other's blocks
mid-read.  The first :class:`DirLock` takes ``flock(LOCK_EX | LOCK_NB)`` on ``DIR/.lock`` and
writes its pid into the file; a second one (in any process, or a second open in the same
process) fails at once with :class:`~fluidfs.errors.CacheError` naming the holder's pid.

``flock`` locks belong to the open file description, so the kernel drops the lock when the
holder exits for any reason, including ``kill -9``: a crashed mount never leaves a stale lock.

Caveats: ``flock`` is advisory (a process that ignores the lock can still write the directory)
and is not shared across hosts on NFS with some servers; the cache directory is meant to be a
node-local disk.  The pid recorded in the file is the holder's pid in *its* pid namespace;
:func:`lock_holder` prefers ``/proc/locks`` (which tells whether the lock is really held) and
falls back to the recorded pid.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

from fluidfs.errors import CacheError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _read_pid(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            text = f.read(32).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def lock_holder(directory: str) -> int | None:
    """Pid holding the lock on ``directory`` or None if it is free (never takes the lock).

    Looks the lock file's inode up in ``/proc/locks``; where that is unavailable, returns the
    pid recorded in the lock file if that process exists.
    """
    path = os.path.join(directory, LOCK_NAME)
    try:
        st = os.stat(path)
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        pid = _read_pid(path)
        if pid is None:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid
    # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"  ("->" marks blocked waiters).  Match
    # the exact dev:ino first; then the inode alone (btrfs/overlayfs report another st_dev).
    held = [p for p in (line.split() for line in lines) if "->" not in p and len(p) >= 6 and p[1] == "FLOCK"]
    for exact in (True, False):
        for parts in held:
            if parts[5] == ident if exact else parts[5].rsplit(":", 1)[-1] == str(st.st_ino):
                try:
                    return int(parts[4])
                except ValueError:
                    return _read_pid(path) or -1
    return None


class DirLock:
    """Holds ``flock(LOCK_EX)`` on ``DIR/.lock`` until :meth:`release` (or process exit)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise CacheError(f"cannot open cache lock file {self.path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = lock_holder(directory) or _read_pid(self.path)
                who = f"pid {pid}" if pid else "pid unknown"
                raise CacheError(f"cache directory {directory} is in use by another fluidfs mount ({who})") from None
            raise CacheError(f"cannot lock cache directory {directory}: {e.strerror}") from e
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as e:  # the lock is what matters; the pid is informational
            log.debug("could not record pid in %s: %s", self.path, e)
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock (idempotent).  The file stays; its content is only informational."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
