"""Per-open-file read planning: split reads into cache blocks, detect sequential access and
prefetch ahead with a growing window.

Each open handle reads one *version* of one object (taken at open): every block key carries
that version and every source read asks for it, so a file that changes at the source while
open is never served as a mix of old and new bytes (the read fails with EIO instead, unless
the old blocks are still cached).

Readahead: a read that starts where the previous one ended grows the window (doubling from
one block up to ``readahead``); any other read resets it.  Prefetches are cache lookups run in
the background nursery, bounded globally by ``Prefetcher`` (bytes in flight); a prefetch
that finds no free budget is skipped, never queued.  Prefetched blocks that drop out of the
Prefetcher's bounded memory before any read uses them are counted as wasted.

Small objects (≤ one block) are fetched whole with a single GET; opening one also prefetches
a few of its not-yet-cached small siblings (see ``Vfs``), which is what makes a cold shuffled
epoch over many small files fast.

Caveats: "wasted" is an estimate: a prefetched block evicted from the cache before it is read
is only counted once the Prefetcher forgets it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from cachetools import LRUCache

from fluidfs import metrics
from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.tiered import TieredCache
from fluidfs.errors import SourceError
from fluidfs.sources.aio import AsyncSource

log = logging.getLogger(__name__)

_SEQ_SLACK = 2 * 1024 * 1024


class Prefetcher:
    """Shared budget, nursery and bookkeeping for background prefetches of all open files.

    At most ``budget_bytes / block_size`` prefetches run at once; a submission beyond that is
    dropped (never queued).  Prefetched blocks are remembered (bounded LRU) until a demand read
    uses them; blocks that fall out of that memory unread are counted as wasted.
    """

    def __init__(self, cache: TieredCache, budget_bytes: int, block_size: int, dataset: str) -> None:
        self.cache = cache
        self.limiter = trio.CapacityLimiter(max(1, budget_bytes // block_size))
        self.nursery: trio.Nursery | None = None
        self.enabled = budget_bytes > 0
        self._inflight: set[BlockKey] = set()
        tracked = max(1024, (cache.mem.quota_bytes() + (cache.ssd.quota_bytes() if cache.ssd else 0)) // block_size)
        self._unused: _WasteTracker = _WasteTracker(min(tracked, 1_000_000), metrics.READAHEAD_WASTED.labels(dataset))
        self._issued = metrics.READAHEAD_ISSUED.labels(dataset)
        self._used = metrics.READAHEAD_USED.labels(dataset)
        # prefetched blocks the cache did not admit (memory tier full under ``none``) are held
        # here until read, so readahead is never thrown away before it is used (bounded, FIFO)
        self._held: OrderedDict[BlockKey, Buffer] = OrderedDict()
        self._held_bytes = 0
        self._held_limit = budget_bytes

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    def submit(self, key: BlockKey, fetch: Callable[[], Awaitable[bytes]], nbytes: int) -> bool:
        """Start fetching ``key`` in the background; False if there is no budget now."""
        if not self.enabled or self.nursery is None:
            return False
        if key in self._inflight:
            return True
        try:
            self.limiter.acquire_on_behalf_of_nowait(key)
        except trio.WouldBlock:
            return False
        self._inflight.add(key)
        self._issued.inc(nbytes)
        self._unused[key] = nbytes
        self.nursery.start_soon(self._run, key, fetch)
        return True

    def holds(self, key: BlockKey) -> bool:
        return key in self._held

    def take(self, key: BlockKey) -> Buffer | None:
        """The prefetched block ``key`` if it is held outside the cache.  It stays held (the
        kernel often has several requests for one block in flight) until pushed out FIFO."""
        return self._held.get(key)

    def _hold(self, key: BlockKey, data: Buffer) -> None:
        if key in self._held or len(data) > self._held_limit:
            return
        self._held[key] = data
        self._held_bytes += len(data)
        while self._held_bytes > self._held_limit:
            _old, dropped = self._held.popitem(last=False)
            self._held_bytes -= len(dropped)

    def used(self, key: BlockKey) -> None:
        """A demand read just used ``key``: count it if it came from a prefetch."""
        nbytes = self._unused.pop(key, None)
        if nbytes is not None:
            self._used.inc(nbytes)

    async def _run(self, key: BlockKey, fetch: Callable[[], Awaitable[bytes]]) -> None:
        try:
            data = await self.cache.get(key, fetch)
            if self.cache.tier_of(key) is None:
                self._hold(key, data)
        except SourceError as exc:
            self._unused.pop(key, None)
            log.debug("prefetch of %s block %d failed: %s", key.url, key.index, exc)
        except Exception:
            self._unused.pop(key, None)
            log.exception("prefetch of %s block %d failed", key.url, key.index)
        finally:
            self._inflight.discard(key)
            self.limiter.release_on_behalf_of(key)


class _WasteTracker(LRUCache):  # type: ignore[type-arg]
    """Prefetched-but-unread blocks; those pushed out unread count as wasted."""

    def __init__(self, maxsize: int, wasted: Any) -> None:
        super().__init__(maxsize=maxsize)
        self._wasted = wasted

    def popitem(self) -> tuple[Any, Any]:
        key, nbytes = super().popitem()
        self._wasted.inc(nbytes)
        return key, nbytes


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
        self._stall = metrics.FUSE_READ_STALL.labels(cache.dataset)
        self._stalls = metrics.FUSE_READ_STALLS.labels(cache.dataset)

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
        key = self.key(index)
        held = self.prefetcher.take(key) if self.prefetcher is not None else None
        if held is not None:
            self.cache.note_hit("mem", held)
            data = held
        elif self.cache.tier_of(key) is not None:
            data = await self.cache.get(key, self.fetcher(index))
        else:  # a miss of every local tier: the reader stalls until the block arrives
            t0 = time.perf_counter()
            data = await self.cache.get(key, self.fetcher(index))
            self._stall.inc(time.perf_counter() - t0)
            self._stalls.inc()
        if self.prefetcher is not None:
            self.prefetcher.used(key)
        return data

    async def read(self, offset: int, length: int) -> Buffer:
        if offset >= self.size or length <= 0:
            return b""
        end = min(offset + length, self.size)
        self._track(offset, end)
        first, last = offset // self.bs, (end - 1) // self.bs
        if first == last:  # the common case: a view of the cached block goes to the FUSE reply, no copy
            data = await self.block(first)
            base = first * self.bs
            return memoryview(data)[offset - base : end - base]
        parts: list[Buffer] = []
        for index in range(first, last + 1):
            data = await self.block(index)
            base = index * self.bs
            parts.append(memoryview(data)[max(offset, base) - base : min(end, base + len(data)) - base])
        return b"".join(parts)  # a read across blocks: the one copy the FUSE reply needs

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
            if self.cache.tier_of(key) == "mem" or self.prefetcher.holds(key):
                self._ahead_until = index + 1
                continue
            if not self.prefetcher.submit(key, self.fetcher(index), self._block_len(index)):
                break
            self._ahead_until = index + 1
