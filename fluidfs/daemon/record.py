"""Runtime records: the small JSON file a running mount leaves for the CLI (``status``, ``umount``,
``refresh``, ``load``) — pid and start time, mountpoint, dataset, sources, metrics URL and
configuration — and finding a mount by its path without touching it.

A record lives in :func:`runtime_dir` as ``<sha256(mountpoint)[:16]>.json``, where the mountpoint
is the mount's real path, as the mount table lists it.  The daemon resolves its mountpoint and
its record's path *before* it mounts, writes the record (tmp → rename) once the mount answers
and removes it on exit, both without touching the mount.  The CLI finds a mount the same way:
the path is resolved with :func:`fluidfs.util.mounts.resolve` (which never stats a mount point)
and looked up in the mount table (:func:`locate`), so a hung or dead mount is found at once.

The runtime directory is ``/run/fluidfs`` for root, else ``$XDG_RUNTIME_DIR/fluidfs``, else
``/tmp/fluidfs-<uid>``.  It is created 0700 and used only if it is a real directory (not a
symlink) owned by the user, that nobody else can write to, in a parent that others cannot
rename it in; one that others may read (an older fluidfs made it 0755) is tightened to 0700.
Its files are opened with ``O_NOFOLLOW``.  A record names its daemon by pid *and* start time,
and :func:`daemon_pid` also checks the process's command line, so a stale or forged record never
makes the CLI signal an unrelated process.

Caveats: records of mounts made in another mount namespace (or by another user) are not found.
Resolving a path inside a mount (``load /mnt/data/train``) still looks inside that mount.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fluidfs.errors import MountError
from fluidfs.util.mounts import FLUIDFS_FSTYPE, MountEntry, mount_at, mount_table, resolve
from fluidfs.util.proc import cmdline, pid_alive, start_time

log = logging.getLogger(__name__)

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def runtime_dir() -> str:
    """Where runtime records and default logs live (no I/O; see the module docstring)."""
    if os.geteuid() == 0:
        return "/run/fluidfs"
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/"):
        return os.path.join(xdg, "fluidfs")
    return f"/tmp/fluidfs-{os.geteuid()}"


def _check_parent(path: str) -> None:
    parent = os.path.dirname(path)
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise MountError(f"runtime directory {path}: {parent}: {exc.strerror}") from None
    others_write = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if st.st_uid not in (0, os.geteuid()) or (others_write and not st.st_mode & stat.S_ISVTX):
        raise MountError(
            f"runtime directory {path}: its parent {parent} can be changed by other users; "
            "set XDG_RUNTIME_DIR to a private directory"
        )


def checked_runtime_dir(create: bool = False) -> str | None:
    """The runtime directory after the safety checks (created if ``create``); None if it does not
    exist (and ``create`` is false).  Raises MountError (one line) when it is not safe to use."""
    path = runtime_dir()
    _check_parent(path)
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise MountError(f"cannot create runtime directory {path}: {exc.strerror}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MountError(f"runtime directory {path}: {exc.strerror}") from None
    uid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"runtime directory {path} is not a directory (a symlink?); remove it")
    if st.st_uid != uid:
        raise MountError(
            f"runtime directory {path} is owned by uid {st.st_uid}, not by you (uid {uid}): another user may "
            "have prepared it; remove it, or set XDG_RUNTIME_DIR to a private directory"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise MountError(
            f"runtime directory {path} has mode {mode:04o}: others can write to it; "
            f"remove it or make it private (chmod 700 {path})"
        )
    if mode & 0o077 and create:
        os.chmod(path, 0o700)  # ours, and nobody else could write to it: safe to tighten
    return path


def _key(mountpoint: str) -> str:
    return hashlib.sha256(mountpoint.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def record_path(mountpoint: str) -> str:
    """The record file of the mount at ``mountpoint`` (resolved here; never stats a mount point)."""
    return os.path.join(runtime_dir(), f"{_key(resolve(mountpoint))}.json")


def open_private(path: str, flags: int) -> int:
    """``os.open`` of a file in the runtime directory: never through a symlink, created 0600."""
    return os.open(path, flags | _NOFOLLOW, 0o600)


def _load(path: str) -> dict[str, Any] | None:
    try:
        fd = open_private(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        with os.fdopen(fd, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_record(mountpoint: str) -> dict[str, Any] | None:
    """The record of the mount at ``mountpoint``, None if there is none (or it is unreadable or not
    its own).  Raises MountError if the runtime directory is not safe to trust."""
    mnt = resolve(mountpoint)
    if checked_runtime_dir() is None:
        return None
    rec = _load(os.path.join(runtime_dir(), f"{_key(mnt)}.json"))
    if rec is None or rec.get("mountpoint") != mnt:
        return None
    return rec


def records() -> Iterator[dict[str, Any]]:
    """Every readable record in :func:`runtime_dir` (live or stale)."""
    try:
        if checked_runtime_dir() is None:
            return
    except MountError:
        return
    for path in glob.glob(os.path.join(runtime_dir(), "*.json")):
        rec = _load(path)
        if rec is not None:
            yield rec


def write_record(path: str, rec: dict[str, Any]) -> None:
    """Write ``rec`` to the record file ``path`` (atomically); a failure is logged, not raised."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(rec, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write runtime record %s: %s", path, exc)


def remove_record(path: str, pid: int) -> None:
    """Remove the record file ``path`` if process ``pid`` wrote it."""
    rec = _load(path)
    if rec is not None and rec.get("pid") == pid:
        try:
            os.unlink(path)
        except OSError:
            pass


def identity(pid: int) -> dict[str, Any]:
    """What a record says about its daemon: pid and start time."""
    return {"pid": pid, "start_time": start_time(pid)}


def daemon_pid(rec: dict[str, Any] | None) -> int | None:
    """The pid of the record's daemon if that process still runs and is the one that wrote the record
    (same start time, a fluidfs command line); else None."""
    if not rec:
        return None
    pid, started = rec.get("pid"), rec.get("start_time")
    if not isinstance(pid, int) or not isinstance(started, int) or pid <= 0:
        return None
    if not pid_alive(pid) or start_time(pid) != started:
        return None
    args = cmdline(pid)
    if not any(a == "fluidfs" or os.path.basename(a) == "fluidfs" for a in args) or "mount" not in args:
        return None
    return pid


@dataclass(frozen=True)
class Located:
    """What is at a path: its resolved form, the mount on top there, and its fluidfs record."""

    path: str  # as given
    mountpoint: str  # resolved
    entry: MountEntry | None
    record: dict[str, Any] | None

    @property
    def is_fluidfs(self) -> bool:
        return self.entry is not None and self.entry.fstype == FLUIDFS_FSTYPE

    def what(self) -> str:
        """``a tmpfs``, ``an ext4``: what is mounted there (for messages)."""
        fstype = self.entry.fstype if self.entry else "nothing"
        return f"{'an' if fstype[:1] in 'aeiou' else 'a'} {fstype}"


def locate(path: str) -> Located:
    """Find what is mounted at ``path`` (never touching a mount point)."""
    table = mount_table()
    mnt = resolve(path, {m.mountpoint for m in table})
    entry = mount_at(mnt, table)
    rec = read_record(mnt) if entry is not None and entry.fstype == FLUIDFS_FSTYPE else None
    return Located(path, mnt, entry, rec)


def require_mount(path: str) -> dict[str, Any]:
    """The record of the live fluidfs mount at ``path``; MountError (exit 1) with a one-line reason."""
    found = locate(path)
    if not found.is_fluidfs:
        raise MountError(f"{path} is not a fluidfs mount")
    if found.record is None:
        raise MountError(
            f"{path} is a fluidfs mount without a runtime record in {runtime_dir()} (mounted by another user, "
            f"or its daemon is gone); unmount it with fluidfs umount {path}"
        )
    pid = found.record.get("pid")
    if daemon_pid(found.record) is None:
        raise MountError(
            f"{path}: its fluidfs daemon (pid {pid}) is no longer running; unmount it with fluidfs umount {path}"
        )
    return found.record


def mount_record(path: str) -> dict[str, Any] | None:
    """The runtime record of the live fluidfs mount at ``path``, or None if it is not one."""
    try:
        return require_mount(path)
    except MountError:
        return None


def find_mount(path: str) -> tuple[str, str] | None:
    """(mountpoint, path relative to it) if ``path`` is in a live fluidfs mount, else None."""
    if "://" in path:
        return None
    table = mount_table()
    full = resolve(path, {m.mountpoint for m in table})
    probe = full
    while True:
        entry = mount_at(probe, table)
        if entry is not None and entry.fstype == FLUIDFS_FSTYPE:
            if mount_record(probe) is None:
                return None
            return probe, os.path.relpath(full, probe) if probe != full else ""
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
