"""Kernel mount operations of the node plugin: health probes, read-only binds, stacked repairs,
removing every layer of a mount point, private mounts.

Everything goes through ``mount(2)``/``umount2(2)`` directly (libc via ctypes), never through
``mount(8)``/``umount(8)``: those canonicalise and ``stat`` their paths, which blocks on a hung
FUSE mount and fails on a dead one, and each costs a fork.  The mount table is read from
``/proc/self/mountinfo`` (``fluidfs.util.mounts``), which never touches a mounted filesystem.

Why repairs *stack*: a container sees a volume through its own copy of the target mount (kubelet's
``HostToContainer`` propagation: an rslave copy).  Unmounting the dead target on the node does not
remove that copy, and a new bind made after the unmount is not propagated into it; a bind mounted
*on top of* the dead target is, because the target is a shared mount whose slaves receive every
mount made on it.  So a repair leaves the dead layer where it is and binds the new mount over it;
:func:`unmount_all` removes every layer when the volume goes.

Why the dataset mount is made private (:func:`make_private`): a bind of a shared mount joins its
peer group, so every bind of one dataset would be a peer of every other, and a repair stacked on
one pod's target would be propagated onto all the others and onto the dataset mount itself.  Binds
of a private mount each start a peer group of their own.

Caveats: Linux only; needs CAP_SYS_ADMIN in the mount namespace that owns the mounts.  A probe
that hangs keeps one daemon thread per path until the filesystem answers (a second probe of the
same path answers ``hung`` at once instead of starting another thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fluidfs.util.mounts import MOUNTINFO, is_mounted, mount_table, unescape

log = logging.getLogger(__name__)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
# statvfs f_flag bit -> the mount flag that keeps it on a bind remount
_KEEP_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
MAX_LAYERS = 256  # unmount_all gives up beyond this many layers on one path (never seen in practice)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


class MountOpError(OSError):
    """A mount system call failed; ``str()`` is one line naming the operation and the path."""


def _check(rc: int, what: str, path: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise MountOpError(err, f"{what} {path}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, flags: int) -> None:
    rc = _libc.mount(src.encode() if src else None, dst.encode(), None, flags, None)
    _check(rc, "mount" if src else "remount", dst)


def layers(path: str) -> int:
    """How many mounts are stacked on ``path`` (0: not a mount point)."""
    target = os.path.abspath(path)
    return sum(1 for m in mount_table() if m.mountpoint == target)


def top_device(path: str) -> str | None:
    """``major:minor`` of the filesystem of the top mount at ``path`` (None: not a mount point),
    from the mount table: two binds of one FUSE mount show the same device, a new mount of the
    dataset a new one."""
    target = os.path.abspath(path)
    found = None
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split(" ", 5)
            if len(parts) >= 5 and unescape(parts[4]) == target:
                found = parts[2]  # later lines stack on earlier ones
    return found


# -- probes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """Outcome of one ``statvfs``: ``status`` is ``ok``, ``enotconn``, ``missing``, ``hung`` or
    ``error:<errno>``; ``stat`` is the result when ``ok``."""

    status: str
    stat: os.statvfs_result | None = None

    @property
    def usable(self) -> bool:
        """Healthy enough to leave alone: answering, or hung (a hung daemon is reported, not killed)."""
        return self.status in ("ok", "hung")


_pending: dict[tuple[str, str], threading.Thread] = {}
_pending_lock = threading.Lock()


def _bounded(kind: str, path: str, fn: Callable[[], Probe], timeout: float) -> Probe:
    """``fn()`` in a helper thread, at most ``timeout`` seconds; ``hung`` if it takes longer, or
    if an earlier call of the same kind on the same path still has not returned."""
    key = (kind, path)
    with _pending_lock:
        pending = _pending.get(key)
        if pending is not None and pending.is_alive():
            return Probe("hung")
    result: list[Probe] = []

    def run() -> None:
        try:
            result.append(fn())
        except FileNotFoundError:
            result.append(Probe("missing"))
        except OSError as e:
            result.append(Probe("enotconn" if e.errno == errno.ENOTCONN else f"error:{e.errno}"))

    t = threading.Thread(target=run, name=f"csi-{kind}:{path}", daemon=True)
    with _pending_lock:
        _pending[key] = t
    t.start()
    t.join(timeout)
    if t.is_alive():
        return Probe("hung")
    with _pending_lock:
        if _pending.get(key) is t:
            del _pending[key]
    return result[0] if result else Probe("error:unknown")


def probe(path: str, timeout: float) -> Probe:
    """``statvfs(path)``, never blocking the caller longer than ``timeout``.

    ``statvfs`` always reaches the FUSE daemon, while ``stat`` may be answered from the kernel's
    attribute cache for a dead connection until the attribute timeout expires.
    """
    return _bounded("probe", path, lambda: Probe("ok", os.statvfs(path)), timeout)


def path_kind(path: str, timeout: float) -> str:
    """``dir``, ``file``, ``missing``, ``hung``, ``enotconn`` or ``error:<errno>`` for ``path``
    (inside a dataset mount), never blocking the caller longer than ``timeout``."""

    def kind() -> Probe:
        return Probe("dir" if stat.S_ISDIR(os.stat(path).st_mode) else "file")

    return _bounded("stat", path, kind, timeout).status


def healthy_mount(path: str, timeout: float) -> bool:
    """Something is mounted at ``path`` and its top layer answers (or hangs)."""
    return is_mounted(path) and probe(path, timeout).usable


# -- binds ----------------------------------------------------------------------------------------
def bind_ro(src: str, dst: str, *, probe_timeout: float = 5.0) -> None:
    """Bind ``src`` read-only at ``dst`` (an existing directory or file), on top of whatever is
    mounted there already.

    A bind of a fluidfs mount is read-only from birth (the FUSE mount is ``ro``), so every copy
    propagated from it (a pod's) is read-only too; should ``src`` be writable the bind is
    remounted read-only, keeping its other flags.
    """
    _mount(src, dst, MS_BIND)
    p = probe(dst, probe_timeout)
    if p.stat is None or p.stat.f_flag & os.ST_RDONLY:
        return  # read-only already (or not answering: then it is no use to ask)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for st_flag, ms_flag in _KEEP_FLAGS:
        if p.stat.f_flag & st_flag:
            flags |= ms_flag
    try:
        _mount(None, dst, flags)
    except OSError:
        umount_top(dst, lazy=True)
        raise


def make_private(path: str) -> None:
    """Take the mount at ``path`` out of any peer group (mounts on it are no longer propagated)."""
    _mount(None, path, MS_PRIVATE)


def umount_top(path: str, *, lazy: bool = False) -> None:
    """Unmount the top layer at ``path`` (detach it if ``lazy`` or busy)."""
    rc = _libc.umount2(os.path.abspath(path).encode(), MNT_DETACH if lazy else 0)
    if rc != 0 and not lazy and ctypes.get_errno() == errno.EBUSY:
        rc = _libc.umount2(os.path.abspath(path).encode(), MNT_DETACH)
    _check(rc, "unmount", path)


def unmount_all(path: str, *, lazy: bool = False) -> int:
    """Remove every layer mounted at ``path``; returns how many were removed.  A path that is not
    mounted is fine.  Busy layers are detached (lazy unmount) instead of failing."""
    removed = 0
    for _ in range(MAX_LAYERS):
        if not is_mounted(path):
            return removed
        try:
            umount_top(path, lazy=lazy)
        except OSError as e:
            if e.errno == errno.EINVAL and not is_mounted(path):  # raced with another unmount
                return removed
            raise
        removed += 1
    if is_mounted(path):
        raise MountOpError(errno.EBUSY, f"unmount {path}: more than {MAX_LAYERS} layers")
    return removed


def fuse_usable() -> bool:
    """Whether ``/dev/fuse`` can be opened (the supervisor can mount datasets)."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True
