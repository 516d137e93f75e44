"""Per-open-file read planning: split reads into cache blocks, detect sequential access and
prefetch ahead with a growing window.

Each open handle reads one *version* of one object (taken at open): every block key carries
that version and every source read asks for it, so a file that changes at the source while
open is never served as a mix of old and new bytes (the read fails with EIO instead, unless
the old blocks are still cached).

Readahead: a read that starts where the previous one ended grows the window (doubling from
one block up to ``readahead``); any other read resets it.  Prefetches are cache lookups run in
the background nursery, bounded globally by ``Prefetcher`` (bytes in flight); a prefetch
that finds no free budget is skipped, never queued.  Blocks prefetched but never read by the
handle are counted as wasted when it is released.

Caveats: small objects (≤ one block) are naturally fetched whole with a single GET.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from fluidfs import metrics
from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.tiered import TieredCache
from fluidfs.errors import SourceError
from fluidfs.sources.aio import AsyncSource

log = logging.getLogger(__name__)

_SEQ_SLACK = 2 * 1024 * 1024


class Prefetcher:
    """Shared budget and nursery for background prefetches of all open files."""

    def __init__(self, cache: TieredCache, budget_bytes: int, block_size: int, dataset: str) -> None:
        self.cache = cache
        self.limiter = trio.CapacityLimiter(max(1, budget_bytes // block_size))
        self.nursery: trio.Nursery | None = None
        self.enabled = budget_bytes > 0
        self._issued = metrics.READAHEAD_ISSUED.labels(dataset)

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    def submit(self, key: BlockKey, fetch: Callable[[], Awaitable[bytes]], nbytes: int) -> bool:
        if not self.enabled or self.nursery is None:
            return False
        try:
            self.limiter.acquire_on_behalf_of_nowait(key)
        except trio.WouldBlock:
            return False
        self._issued.inc(nbytes)
        self.nursery.start_soon(self._run, key, fetch)
        return True

    async def _run(self, key: BlockKey, fetch: Callable[[], Awaitable[bytes]]) -> None:
        try:
            await self.cache.get(key, fetch)
        except SourceError as exc:
            log.debug("prefetch of %s block %d failed: %s", key.url, key.index, exc)
        except Exception:
            log.exception("prefetch of %s block %d failed", key.url, key.index)
        finally:
            self.limiter.release_on_behalf_of(key)


class FileReader:
    """Reads one version of one object through the block cache."""

    def __init__(
        self,
        source: AsyncSource,
        rel: str,
        url: str,
        version: str,
        size: int,
        cache: TieredCache,
        block_size: int,
        max_window: int,
        prefetcher: Prefetcher | None,
    ) -> None:
        self.source = source
        self.rel = rel
        self.url = url
        self.version = version
        self.size = size
        self.cache = cache
        self.bs = block_size
        self.max_window = max_window
        self.prefetcher = prefetcher
        self._next_offset = -1
        self._window = 0
        self._ahead_until = 0  # first block index not yet considered for prefetch
        self._prefetched: set[int] = set()
        self._m_used = metrics.READAHEAD_USED.labels(source.dataset)
        self._m_wasted = metrics.READAHEAD_WASTED.labels(source.dataset)

    def key(self, index: int) -> BlockKey:
        return BlockKey(self.url, self.version, self.bs, index)

    def _block_len(self, index: int) -> int:
        return max(0, min(self.bs, self.size - index * self.bs))

    def fetcher(self, index: int) -> Callable[[], Awaitable[bytes]]:
        start = index * self.bs
        end = min(start + self.bs, self.size)

        async def fetch() -> bytes:
            return await self.source.read(self.rel, start, end, self.version)

        return fetch

    async def block(self, index: int) -> Buffer:
        data = await self.cache.get(self.key(index), self.fetcher(index))
        if index in self._prefetched:
            self._prefetched.discard(index)
            self._m_used.inc(len(data))
        return data

    async def read(self, offset: int, length: int) -> Buffer:
        if offset >= self.size or length <= 0:
            return b""
        end = min(offset + length, self.size)
        self._track(offset, end)
        first, last = offset // self.bs, (end - 1) // self.bs
        if first == last:
            data = await self.block(first)
            base = first * self.bs
            return data[offset - base : end - base]
        parts: list[Buffer] = []
        for index in range(first, last + 1):
            data = await self.block(index)
            base = index * self.bs
            parts.append(data[max(offset, base) - base : min(end, base + len(data)) - base])
        return b"".join(parts)

    def _track(self, offset: int, end: int) -> None:
        """Update the sequential-access state and issue readahead."""
        # requests may arrive slightly out of order (the kernel issues readahead requests in
        # parallel), so "near the previous end" counts as sequential
        prev = self._next_offset
        sequential = (prev < 0 and offset == 0) or (prev >= 0 and abs(offset - prev) <= _SEQ_SLACK)
        self._next_offset = max(end, prev) if sequential else end
        if not sequential:
            self._window = 0
            self._ahead_until = 0
            return
        if self.prefetcher is None or self.max_window <= 0:
            return
        self._window = min(self.max_window, max(self.bs, self._window * 2))
        last_block = (self.size - 1) // self.bs
        first = max((end - 1) // self.bs + 1, self._ahead_until)
        stop = min(last_block, (end + self._window - 1) // self.bs)
        for index in range(first, stop + 1):
            key = self.key(index)
            if self.cache.tier_of(key) == "mem":
                self._ahead_until = index + 1
                continue
            if not self.prefetcher.submit(key, self.fetcher(index), self._block_len(index)):
                break
            self._prefetched.add(index)
            self._ahead_until = index + 1

    def close(self) -> None:
        """Count prefetched-but-unread blocks as wasted."""
        for index in self._prefetched:
            self._m_wasted.inc(self._block_len(index))
        self._prefetched.clear()
