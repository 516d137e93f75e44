"""The mount table of this process's mount namespace, read from ``/proc/self/mountinfo``.

Reading the table never touches the mounted filesystems, so a mount whose FUSE daemon died or
hangs ("Transport endpoint is not connected") is listed like any other, and asking about it
cannot block.

Caveats: paths are compared after ``os.path.abspath`` (no symlink resolution: resolving would
stat a possibly dead mount).  Without ``/proc`` :func:`is_mounted` falls back to
``os.path.ismount``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of the mount table."""

    mountpoint: str
    fstype: str  # e.g. "fuse.fluidfs", "tmpfs"
    source: str  # e.g. "fluidfs:imagenet"


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
                        unescape(parts[4]), after[0] if after else "", unescape(after[1]) if len(after) > 1 else ""
                    )
                )
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
