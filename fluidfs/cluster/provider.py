"""CacheBlockProvider: serves a dataset's blocks to peers from its TieredCache and its mounts.

This is the :class:`~fluidfs.cluster.protocol.BlockProvider` of a mount or a worker.  A request
names a block by key; the provider maps the key's object URL back to one of the dataset's
sources — a source ``s`` and a relative path ``p`` such that ``s.url(p)`` is exactly the URL
asked for, ``p`` being a clean relative path (no ``..``, no empty components) — and refuses any
URL for which there is none (403).  So a peer can only ever make this member read objects of
the datasets it serves, under the paths they already expose.  A key whose block size is not
this dataset's is refused too (400), so peers cannot fill the cache with odd-sized blocks.

``holds`` (a HEAD, asked before a handoff push) counts only the tier where this member keeps
what it owns — the SSD tier, or memory without one — so a block a new owner has only as a
reader's memory copy is still pushed and kept.

``get_block`` answers from the memory and SSD tiers, else (``mode=fetch``) through
``TieredCache.get`` — the same single-flight path as local reads, so concurrent requests for
one block, local or remote, cause one source read.  It takes none of the readers' fetch slots
(``reserved``): the peer server's transfer slots bound the memory of served blocks.  A block
index beyond the object's end is a 404 (nothing is cached for it).

Caveats: the URL → source mapping tries each mount in turn (a handful per dataset) and
remembers the last 4096 answers.  Objects are read by path, so a path hidden by the namespace
(e.g. under another mount's path) is still readable by a peer if its source exposes it; this
is the same data the member could read anyway.
"""

from __future__ import annotations

import urllib.parse
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.tiered import TieredCache
from fluidfs.errors import NotFoundError, PeerRequestError

__all__ = ["CacheBlockProvider", "ObjectReader", "clean_relative_path"]


class ObjectReader(Protocol):
    """What the provider needs of a source: ``AsyncSource`` has exactly this."""

    def url(self, path: str) -> str: ...

    async def read(self, path: str, start: int, end: int, version: str = "") -> bytes: ...


def clean_relative_path(path: str) -> bool:
    """True for ``a/b/c``: non-empty, relative, no empty, ``.`` or ``..`` component, no NUL."""
    if not path or path.startswith("/") or path.endswith("/") or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


class CacheBlockProvider:
    """Blocks of one dataset: its TieredCache, its sources (in mount order), its block size."""

    def __init__(
        self,
        dataset: str,
        cache: TieredCache,
        sources: Sequence[ObjectReader],
        *,
        block_size: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.cache = cache
        self.sources = list(sources)
        self.block_size = block_size
        self._resolved: OrderedDict[str, tuple[ObjectReader, str]] = OrderedDict()

    # ------------------------------------------------------------------------------ scope

    def resolve(self, url: str) -> tuple[ObjectReader, str] | None:
        """The (source, relative path) whose URL is exactly ``url``, or None."""
        hit = self._resolved.get(url)
        if hit is not None:
            self._resolved.move_to_end(url)
            return hit
        for src in self.sources:
            base = src.url("")  # asked each time: an HTTP source learns its root on first use
            if not url.startswith(base):
                continue
            rest = url[len(base) :]
            if not base.endswith("/"):
                if not rest.startswith("/"):
                    continue
                rest = rest[1:]
            for cand in dict.fromkeys((rest, urllib.parse.unquote(rest, errors="surrogateescape"))):
                if clean_relative_path(cand) and src.url(cand) == url:
                    self._resolved[url] = (src, cand)
                    while len(self._resolved) > 4096:
                        self._resolved.popitem(last=False)
                    return src, cand
        return None

    def check(self, key: BlockKey) -> None:
        if self.block_size is not None and key.block_size != self.block_size:
            raise PeerRequestError(
                400, f"block size {key.block_size} is not this dataset's ({self.block_size})", "protocol"
            )
        if self.resolve(key.url) is None:
            raise PeerRequestError(403, "object URL is not within this dataset's mounts", "protocol")

    # ------------------------------------------------------------------------------ blocks

    async def get_block(self, key: BlockKey, *, cached_only: bool = False) -> Buffer | None:
        if cached_only:
            return await self.cache.lookup(key)
        found = self.resolve(key.url)
        if found is None:
            raise PeerRequestError(403, "object URL is not within this dataset's mounts", "protocol")
        src, rel = found
        start = key.start

        async def fetch() -> bytes:
            data = await src.read(rel, start, start + key.block_size, key.version)
            if not data and key.index > 0:
                raise NotFoundError(f"block {key.index} is beyond the end of the object", key.url)
            return data

        # reserved: the server's transfer slot is this block's memory.  Taking one of the readers'
        # fetch slots instead would let two members whose readers wait on each other stall until
        # the peer timeouts (each one's slots held by reads waiting for the other's server).
        return await self.cache.get(key, fetch, reserved=True)

    def holds(self, key: BlockKey) -> bool:
        """Whether ``key`` is kept where this member keeps what it owns: its SSD tier (memory without one).

        A copy in the memory tier of a member with an SSD tier does not count: it is a reader's
        copy, gone at the next restart, so a handoff must still push the block.
        """
        if self.cache.ssd is not None:
            return self.cache.ssd.contains(key)
        return self.cache.mem.contains(key)

    async def put_block(self, key: BlockKey, data: Buffer) -> bool:
        if self.holds(key):
            return True
        return await self.cache.admit(key, data)

    def usage(self) -> dict[str, int]:
        out = {"mem_used_bytes": self.cache.mem.used_bytes(), "mem_quota_bytes": self.cache.mem.quota_bytes()}
        if self.cache.ssd is not None:
            out["ssd_used_bytes"] = self.cache.ssd.used_bytes()
            out["ssd_quota_bytes"] = self.cache.ssd.quota_bytes()
        return out
