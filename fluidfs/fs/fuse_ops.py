"""The thin pyfuse3 adapter: translates kernel requests to ``Vfs`` calls, fluidfs errors to
errnos, records per-operation metrics, and never lets an exception escape (an escaping
exception would take the whole mount down: pyfuse3 ends its main loop).

Every write operation answers EROFS.  Failures answered with EIO are logged as warnings, at most
one per (operation, kind of error) every ``WARN_INTERVAL`` seconds with a count of the ones
suppressed (a reader retrying against a source that is down would otherwise flood the log);
the ``fluidfs_fuse_errors_total`` metric counts every one.
"""

from __future__ import annotations

import errno as E
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from fluidfs import metrics
from fluidfs.errors import AccessDeniedError, FsOpError, NotFoundError, SourceError, VersionChangedError
from fluidfs.fs.vfs import Attr, Vfs
from fluidfs.util.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

#: seconds between two warnings about the same (operation, kind of error)
WARN_INTERVAL = 10.0

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def errno_of(exc: BaseException) -> int:
    """The errno a fluidfs error becomes at the FUSE boundary."""
    if isinstance(exc, FsOpError):
        return exc.errno
    if isinstance(exc, NotFoundError):
        return E.ENOENT
    if isinstance(exc, AccessDeniedError):
        return E.EACCES
    return E.EIO  # SourceError (unavailable, version changed) and anything unexpected


def _op(name: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(self: FluidOperations, *args: Any) -> Any:
            ds = self.vfs.dataset
            m = self._m.get(name)
            if m is None:
                m = self._m[name] = (metrics.FUSE_OPS.labels(ds, name), metrics.FUSE_LATENCY.labels(ds, name))
            m[0].inc()
            t0 = time.perf_counter()
            try:
                return await fn(self, *args)
            except pyfuse3.FUSEError as exc:
                metrics.FUSE_ERRORS.labels(ds, name, str(exc.errno)).inc()
                raise
            except (FsOpError, SourceError) as exc:
                code = errno_of(exc)
                if code == E.EIO:
                    hint = "; re-open the file to read the new version" if isinstance(exc, VersionChangedError) else ""
                    self.warn.warning(
                        (name, type(exc).__name__), "dataset %s: %s%r failed: %s%s", ds, name, args[:2], exc, hint
                    )
                metrics.FUSE_ERRORS.labels(ds, name, str(code)).inc()
                raise pyfuse3.FUSEError(code) from None
            except Exception:
                self.warn.log(
                    logging.ERROR,
                    (name, "unexpected"),
                    "dataset %s: unexpected error in %s%r",
                    ds,
                    name,
                    args[:2],
                    exc_info=True,
                )
                metrics.FUSE_ERRORS.labels(ds, name, str(E.EIO)).inc()
                raise pyfuse3.FUSEError(E.EIO) from None
            finally:
                m[1].observe(time.perf_counter() - t0)

        return wrapper  # type: ignore[return-value]

    return deco


class FluidOperations(pyfuse3.Operations):
    """pyfuse3 request handlers for one mount."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: Vfs) -> None:
        super().__init__()
        self.vfs = vfs
        self.timeout = vfs.cfg.kernel_timeout
        self._m: dict[str, tuple[Any, Any]] = {}
        self._ea: dict[int, tuple[Attr, pyfuse3.EntryAttributes]] = {}  # inode -> last reply
        self._read_bytes = metrics.FUSE_READ_BYTES.labels(vfs.dataset)
        self.warn = RateLimitedLog(log, WARN_INTERVAL)

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        cached = self._ea.get(a.inode)
        if cached is not None and cached[0] is a:
            return cached[1]
        ea = self._build_entry(a)
        self._ea[a.inode] = (a, ea)
        return ea

    def _build_entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        ea = pyfuse3.EntryAttributes()
        ea.st_ino = a.inode
        ea.generation = 0
        ea.st_mode = a.mode
        ea.st_nlink = a.nlink
        ea.st_uid = a.uid
        ea.st_gid = a.gid
        ea.st_rdev = 0
        ea.st_size = a.size
        ea.st_blksize = a.blksize
        ea.st_blocks = a.blocks
        ea.st_atime_ns = ea.st_mtime_ns = ea.st_ctime_ns = a.mtime_ns
        ea.entry_timeout = self.timeout
        ea.attr_timeout = self.timeout
        return ea

    @_op("lookup")
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(await self.vfs.lookup(parent_inode, name.decode("utf-8", "surrogateescape")))

    @_op("getattr")
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(await self.vfs.getattr(inode))

    async def forget(self, inode_list: Any) -> None:
        return None  # inodes live for the whole mount (stable numbers)

    @_op("opendir")
    async def opendir(self, inode: int, ctx: Any) -> int:
        return await self.vfs.opendir(inode)

    @_op("readdir")
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        async for name, attr, next_id in self.vfs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name.encode("utf-8", "surrogateescape"), self._entry(attr), next_id):
                break

    @_op("releasedir")
    async def releasedir(self, fh: int) -> None:
        self.vfs.releasedir(fh)

    @_op("open")
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fh, keep = await self.vfs.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=self.vfs.direct_io(fh))

    @_op("read")
    async def read(self, fh: int, off: int, size: int) -> Any:
        data = await self.vfs.read(fh, off, size)
        self._read_bytes.inc(len(data))
        return data

    @_op("release")
    async def release(self, fh: int) -> None:
        self.vfs.release(fh)

    @_op("flush")
    async def flush(self, fh: int) -> None:
        return None

    @_op("statfs")
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        for k, v in self.vfs.statfs().items():
            setattr(st, k, v)
        return st

    @_op("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        return await self.vfs.getxattr(inode, name)

    @_op("listxattr")
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return await self.vfs.listxattr(inode)

    @_op("access")
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(E.EROFS)
        await self.vfs.getattr(inode)
        return True

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(E.EINVAL)

    # --- every write operation: EROFS ------------------------------------------------------
    def _refuse(self, op: str) -> pyfuse3.FUSEError:
        metrics.FUSE_ERRORS.labels(self.vfs.dataset, op, str(E.EROFS)).inc()
        return pyfuse3.FUSEError(E.EROFS)

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> pyfuse3.EntryAttributes:
        raise self._refuse("setattr")

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        raise self._refuse("mknod")

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        raise self._refuse("mkdir")

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise self._refuse("unlink")

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise self._refuse("rmdir")

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        raise self._refuse("symlink")

    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: Any
    ) -> None:
        raise self._refuse("rename")

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        raise self._refuse("link")

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise self._refuse("create")

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise self._refuse("write")

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise self._refuse("setxattr")

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise self._refuse("removexattr")

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None  # nothing is ever dirty

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None
