"""The mount table of this process's mount namespace (``/proc/self/mountinfo``), and paths resolved
against it without ever touching a mounted filesystem.

Reading the table never touches the mounted filesystems, so a mount whose FUSE daemon died or
hangs ("Transport endpoint is not connected", or no answer at all) is listed like any other, and
asking about it cannot block.  :func:`resolve` is ``os.path.realpath`` for the same situation: it
never calls ``stat`` on a path the table lists as a mount point (a mount point is never a symlink), so
resolving the mountpoint of a hung FUSE mount returns at once.  :func:`answers` asks a mount
itself, from a helper thread, and gives up after a timeout.

Caveats: :func:`is_mounted` and :func:`mounts_under` compare after ``os.path.abspath`` only;
resolve the path first where symlinks matter.  :func:`resolve` still calls ``lstat`` on the components
*below* a mount point (a path inside a hung mount blocks).  Without ``/proc`` :func:`is_mounted`
falls back to ``os.path.ismount``.  A thread of :func:`answers` that never gets an answer stays
blocked in the kernel until the process exits.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections.abc import Collection
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
#: the filesystem type fluidfs mounts show in the mount table
FLUIDFS_FSTYPE = "fuse.fluidfs"
_OCTAL = re.compile(r"\\([0-7]{3})")
_MAX_SYMLINKS = 40


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of the mount table."""

    mountpoint: str
    fstype: str  # e.g. "fuse.fluidfs", "tmpfs"
    source: str  # e.g. "fluidfs:imagenet"
    dev: str = ""  # "major:minor" of the mounted filesystem (its st_dev, without a stat)


def unescape(field: str) -> str:
    """Undo the octal escapes of mount-table fields (``\\040`` is a space)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_table(path: str = MOUNTINFO) -> list[MountEntry]:
    """Every mount of this process's namespace, in mount order (later ones stack on earlier ones)."""
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            after = right.split()
            if len(parts) >= 5:
                out.append(
                    MountEntry(
                        unescape(parts[4]),
                        after[0] if after else "",
                        unescape(after[1]) if len(after) > 1 else "",
                        parts[2],
                    )
                )
    return out


def mount_at(path: str, table: list[MountEntry] | None = None) -> MountEntry | None:
    """The mount on top at exactly ``path`` (already resolved), None if nothing is mounted there."""
    entries = mount_table() if table is None else table
    found = None
    for m in entries:
        if m.mountpoint == path:
            found = m  # a later mount stacks on an earlier one
    return found


def resolve(path: str, mountpoints: Collection[str] | None = None) -> str:
    """``os.path.realpath(path)`` without ever ``stat``-ing a mount point.

    Components are resolved left to right; one that the mount table lists as a mount point is
    taken as it is (a mount point is never a symlink), any other is ``lstat``-ed and, if it is a
    symlink, replaced by its target.  Missing components are kept literally, as ``realpath`` does.
    """
    if mountpoints is None:
        mountpoints = {m.mountpoint for m in mount_table()}
    full = path if path.startswith("/") else os.path.join(os.getcwd(), path)  # no normpath: ".." after links
    pending = [c for c in reversed(full.split("/")) if c]
    out = "/"
    links = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            out = os.path.dirname(out)
            continue
        cand = os.path.join(out, name)
        if cand in mountpoints:
            out = cand
            continue
        try:
            st = os.lstat(cand)
        except OSError:
            out = cand
            continue
        if not stat.S_ISLNK(st.st_mode):
            out = cand
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        target = os.readlink(cand)
        if target.startswith("/"):
            out = "/"
        pending.extend(c for c in reversed(target.split("/")) if c)
    return out


def is_mounted(path: str) -> bool:
    """Whether something is mounted at ``path`` (a dead FUSE mount counts)."""
    target = os.path.abspath(path)
    try:
        return any(m.mountpoint == target for m in mount_table())
    except OSError:
        return os.path.ismount(path)


def mounts_under(root: str) -> list[str]:
    """Mount points strictly below ``root``, in mount order."""
    prefix = os.path.abspath(root).rstrip("/") + "/"
    return [m.mountpoint for m in mount_table() if m.mountpoint.startswith(prefix)]


def answers(path: str, timeout: float) -> bool:
    """Whether ``statvfs(path)`` returns (with a result or an error) within ``timeout`` seconds.

    The call runs in a daemon thread: a mount whose daemon is stopped or deadlocked costs the
    caller ``timeout``, never more.  ``statvfs`` always reaches a FUSE daemon (``stat`` may be
    answered from the kernel's attribute cache).
    """
    done = threading.Event()

    def probe() -> None:
        try:
            os.statvfs(path)
        except OSError:
            pass
        done.set()

    threading.Thread(target=probe, name=f"fluidfs-probe:{path}", daemon=True).start()
    return done.wait(timeout)
