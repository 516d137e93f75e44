"""VFS: the filesystem's semantics — attributes, lookup, directory handles with stable
offsets, open file handles, reads, xattrs, statfs — independent of the kernel.

The FUSE adapter (``fuse_ops.py``) is a thin translation of these methods; tests drive them
directly.  Errors are fluidfs errors (``FsOpError`` carries an errno); the adapter maps them.

Caveats: opening a file re-validates its attributes when they are older than the metadata TTL,
and the handle then reads exactly that version.  The kernel page cache is kept across opens
(``keep_cache``) while the version is unchanged and dropped when it changed.
"""

from __future__ import annotations

import errno as E
import logging
import os
import stat as S
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import count

from fluidfs.cache.base import BlockKey
from fluidfs.cache.tiered import TieredCache
from fluidfs.config import MountConfig
from fluidfs.errors import FsOpError, NotFoundError, VersionChangedError
from fluidfs.fs.namespace import Namespace, Node
from fluidfs.fs.reader import FileReader, Prefetcher
from fluidfs.fs.xattrs import XATTR_CACHED, XATTR_SOURCE, XATTR_VERSION
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Entry

log = logging.getLogger(__name__)

_BLOCK = 512


@dataclass(frozen=True, slots=True)
class Attr:
    """What ``stat`` shows for a node."""

    inode: int
    mode: int
    nlink: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    blksize: int

    @property
    def blocks(self) -> int:
        return (self.size + _BLOCK - 1) // _BLOCK


@dataclass(slots=True)
class _DirHandle:
    node: Node
    entries: list[tuple[str, Node]]
    pages: AsyncIterator[list[Node]] | None  # None once the listing is complete


@dataclass(slots=True)
class _FileHandle:
    node: Node
    reader: FileReader


class Vfs:
    """The read-only filesystem over a Namespace and a TieredCache."""

    def __init__(self, namespace: Namespace, cache: TieredCache, cfg: MountConfig, dataset: str) -> None:
        self.ns = namespace
        self.cache = cache
        self.cfg = cfg
        self.dataset = dataset
        self.prefetcher = Prefetcher(cache, cfg.prefetch_bytes, cfg.block_size, dataset)
        self._fh = count(1)
        self._dirs: dict[int, _DirHandle] = {}
        self._files: dict[int, _FileHandle] = {}
        self._kernel_version: dict[int, str] = {}  # inode -> version the page cache holds
        self._open_versions: dict[int, dict[str, int]] = {}  # inode -> {version: open handles}
        self._sibling_cursor: dict[int, int] = {}  # dir inode -> next listing index to prefetch
        self._attrs: dict[int, tuple[Entry, Attr]] = {}  # inode -> (entry it was made from, attr)

    # --- attributes -----------------------------------------------------------------------
    def attr(self, node: Node) -> Attr:
        """The node's stat attributes (the same object while the node's entry is unchanged)."""
        cached = self._attrs.get(node.inode)
        if cached is not None and cached[0] is node.entry:
            return cached[1]
        a = self._make_attr(node)
        self._attrs[node.inode] = (node.entry, a)
        return a

    def _make_attr(self, node: Node) -> Attr:
        e = node.entry
        if e.is_dir:
            mode, nlink, size = S.S_IFDIR | self.cfg.dir_mode, 2, 0
        else:
            mode, nlink, size = S.S_IFREG | self.cfg.file_mode, 1, e.size
        return Attr(
            inode=node.inode,
            mode=mode,
            nlink=nlink,
            size=size,
            mtime_ns=e.mtime_ns or int(round(e.mtime * 1e9)),
            uid=self.cfg.uid,
            gid=self.cfg.gid,
            blksize=min(self.cfg.block_size, 1 << 20),
        )

    async def lookup(self, parent: int, name: str) -> Attr:
        return self.attr(await self.ns.lookup(parent, name))

    async def getattr(self, inode: int) -> Attr:
        return self.attr(await self.ns.getattr(inode))

    # --- directories ----------------------------------------------------------------------
    async def opendir(self, inode: int) -> int:
        node = await self.ns.getattr(inode)
        if not node.is_dir:
            raise FsOpError(E.ENOTDIR)
        fh = next(self._fh)
        self._dirs[fh] = _DirHandle(node, [], self.ns.list_dir(inode).__aiter__())
        return fh

    async def readdir(self, fh: int, start: int) -> AsyncIterator[tuple[str, Attr, int]]:
        """Entries from offset ``start``, ``.`` and ``..`` first; each comes with the offset of
        the one after it."""
        h = self._dir(fh)
        if start == 0:
            yield ".", self.attr(h.node), 1
        if start <= 1:
            yield "..", self.attr(self.ns.node(h.node.parent)), 2
        i = max(0, start - 2)
        while True:
            while i < len(h.entries):
                name, node = h.entries[i]
                i += 1
                yield name, self.attr(node), i + 2
            if h.pages is None:
                return
            try:
                page = await h.pages.__anext__()
            except StopAsyncIteration:
                h.pages = None
                continue
            h.entries.extend((n.path.rsplit("/", 1)[1], n) for n in page)

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    def _dir(self, fh: int) -> _DirHandle:
        try:
            return self._dirs[fh]
        except KeyError:
            raise FsOpError(E.EBADF) from None

    # --- files ----------------------------------------------------------------------------
    async def open(self, inode: int, flags: int) -> tuple[int, bool]:
        """Open for reading; returns (fh, keep_cache)."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise FsOpError(E.EROFS)
        node = await self.ns.getattr(inode)
        if node.is_dir:
            raise FsOpError(E.EISDIR)
        assert node.mount is not None
        e = node.entry
        reader = FileReader(
            node.mount.source,
            node.rel,
            node.url,
            e.version,
            e.size,
            self.cache,
            self.cfg.block_size,
            self.cfg.readahead,
            self.prefetcher,
        )
        fh = next(self._fh)
        self._files[fh] = _FileHandle(node, reader)
        versions = self._open_versions.setdefault(inode, {})
        versions[e.version] = versions.get(e.version, 0) + 1
        keep = self._kernel_version.get(inode) == e.version
        self._kernel_version[inode] = e.version
        if e.size <= self.cfg.block_size and self.cfg.sibling_prefetch:
            self._prefetch_siblings(node)
        return fh, keep

    def _prefetch_siblings(self, node: Node) -> None:
        """Prefetch the next few small files of ``node``'s directory that are not cached.

        Each small-file open moves a per-directory cursor forward by up to ``sibling_prefetch``
        submissions, so a shuffled pass over many small files keeps the source busy with
        parallel whole-object GETs instead of one GET per open.
        """
        parent = self.ns.node(node.parent)
        listing = parent.listing
        if listing is None or parent.mount is None:
            return
        start = self._sibling_cursor.get(parent.inode, 0)
        if start >= len(listing):
            return
        names = parent.listing_names
        budget = self.cfg.sibling_prefetch
        i = start
        while i < len(names) and budget > 0:
            entry = listing[names[i]]
            if entry.is_dir or entry.size == 0 or entry.size > self.cfg.block_size:
                i += 1
                continue
            rel = f"{parent.rel}/{entry.name}" if parent.rel else entry.name
            url = parent.mount.source.url(rel)
            key = BlockKey(url, entry.version, self.cfg.block_size, 0)
            if self.cache.tier_of(key) is None:
                src = parent.mount.source

                async def fetch(
                    rel: str = rel, size: int = entry.size, version: str = entry.version, src: AsyncSource = src
                ) -> bytes:
                    return await src.read(rel, 0, size, version)

                if not self.prefetcher.submit(key, fetch, entry.size):
                    break
                budget -= 1
            i += 1
        self._sibling_cursor[parent.inode] = i

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        h = self._file(fh)
        try:
            data = await h.reader.read(offset, size)
        except VersionChangedError:
            # the adapter logs it (rate-limited) and answers EIO
            self.ns.expire(h.node)
            raise
        except NotFoundError:
            self.ns.expire(h.node)
            raise VersionChangedError(
                f"{h.node.path} was deleted at the source while open (read at offset {offset})", h.reader.url
            ) from None
        inode = h.node.inode
        if self._kernel_version.get(inode) != h.reader.version:
            # a handle opened before the object changed just put bytes of its (old) version into
            # the inode's page cache, which a newer open kept: the next open must drop it
            self._kernel_version.pop(inode, None)
        return data

    def direct_io(self, fh: int) -> bool:
        """Whether handle ``fh`` must bypass the kernel page cache: true while handles of another
        version of the same inode are open, since their reads fill the (per-inode) page cache
        with that version's bytes."""
        h = self._files.get(fh)
        return h is not None and len(self._open_versions.get(h.node.inode, ())) > 1

    def release(self, fh: int) -> None:
        h = self._files.pop(fh, None)
        if h is not None:
            h.reader.close()
            versions = self._open_versions.get(h.node.inode, {})
            left = versions.get(h.reader.version, 0) - 1
            if left > 0:
                versions[h.reader.version] = left
            else:
                versions.pop(h.reader.version, None)
                if not versions:
                    self._open_versions.pop(h.node.inode, None)

    def _file(self, fh: int) -> _FileHandle:
        try:
            return self._files[fh]
        except KeyError:
            raise FsOpError(E.EBADF) from None

    # --- misc -----------------------------------------------------------------------------
    def statfs(self) -> dict[str, int]:
        used = self.cache.mem.used_bytes() + (self.cache.ssd.used_bytes() if self.cache.ssd else 0)
        quota = self.cache.mem.quota_bytes() + (self.cache.ssd.quota_bytes() if self.cache.ssd else 0)
        bsize = 4096
        return {
            "f_bsize": bsize,
            "f_frsize": bsize,
            "f_blocks": max(quota, used) // bsize,  # size = cache quota, used = cached bytes
            "f_bfree": max(0, quota - used) // bsize,
            "f_bavail": max(0, quota - used) // bsize,
            "f_files": len(self.ns),
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    async def listxattr(self, inode: int) -> list[bytes]:
        node = self.ns.node(inode)
        if node.mount is None:
            return []
        names = [XATTR_SOURCE]
        if not node.is_dir:
            names += [XATTR_VERSION, XATTR_CACHED]
        return names

    async def getxattr(self, inode: int, name: bytes) -> bytes:
        node = self.ns.node(inode)
        if node.mount is not None:
            if name == XATTR_SOURCE:
                return node.url.encode("utf-8", "surrogateescape")
            if not node.is_dir and name == XATTR_VERSION:
                return node.entry.version.encode()
            if not node.is_dir and name == XATTR_CACHED:
                return f"{self.cached_fraction(node):.4f}".encode()
        raise FsOpError(E.ENODATA)

    def cached_fraction(self, node: Node) -> float:
        """Fraction of the file's blocks held by any cache tier (1.0 for empty files)."""
        e = node.entry
        if e.is_dir or e.size == 0:
            return 1.0
        bs = self.cfg.block_size
        n = (e.size + bs - 1) // bs
        held = sum(1 for i in range(n) if self.cache.tier_of(BlockKey(node.url, e.version, bs, i)))
        return held / n
