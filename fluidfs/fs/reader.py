"""Per-open-file read planning: split reads into cache blocks, detect sequential access and
prefetch ahead with a growing window.

Each open handle reads one *version* of one object (taken at open): every block key carries
that version and every source read asks for it, so a file that changes at the source while
open is never served as a mix of old and new bytes (the read fails with EIO instead, unless
the old blocks are still cached).

Readahead: a read that starts where the previous one ended grows the window (doubling from
one block up to ``readahead``); any other read resets it.  Prefetches are cache lookups run in
the background nursery, bounded by ``Prefetcher`` (blocks in flight *or held*); a prefetch
that finds no room is skipped, never queued.

A prefetched block is **held by the Prefetcher until a read uses it** (it also goes into the
cache tiers, which may evict it or not admit it: the held reference keeps it), so readahead is
never thrown away and fetched again when the memory tier is smaller than the readahead window.
Held blocks leave in this order when room is needed: blocks already read (least recently read
first, none read in the last ``READ_GRACE_SECONDS``, so the kernel's several requests for one
block all hit; a block two blocks behind the latest read of its object leaves at once), then
unread sibling prefetches (no open file
waits for them; they stay in the cache tiers if admitted), then unread blocks older than
``STALE_SECONDS``; the unread blocks of a file are dropped when it is closed.  A block dropped
unread counts as *wasted*, so ``issued = used + wasted + held unread`` at every moment.

Small objects (≤ one block) are fetched whole with a single GET; opening one also prefetches
a few of its not-yet-cached small siblings (see ``Vfs``), which is what makes a cold shuffled
epoch over many small files fast.

Caveats: a prefetch that fails is not counted as issued (nothing was fetched).  A block read
through another handle than the one that prefetched it counts as used.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from fluidfs import metrics
from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.tiered import TieredCache
from fluidfs.errors import SourceError
from fluidfs.sources.aio import AsyncSource

log = logging.getLogger(__name__)

_SEQ_SLACK = 2 * 1024 * 1024
#: an unread prefetched block older than this may be dropped (as wasted) to make room
STALE_SECONDS = 30.0
#: a block read less than this ago is not dropped to make room (its next requests are coming)
READ_GRACE_SECONDS = 1.0


class Owner:
    """What a prefetch was made for (one open file); ``closed`` once the file is released."""

    closed = False


@dataclass(slots=True)
class _Held:
    data: Buffer
    owner: Owner | None
    since: float  # when it was fetched (unread) or last read


class Prefetcher:
    """Shared budget, nursery and bookkeeping for background prefetches of all open files.

    At most ``budget_bytes / block_size`` blocks are being prefetched or held at once (see the
    module docstring); a submission beyond that is dropped (never queued).
    """

    def __init__(self, cache: TieredCache, budget_bytes: int, block_size: int, dataset: str) -> None:
        self.cache = cache
        self.slots = max(1, budget_bytes // block_size)
        self.nursery: trio.Nursery | None = None
        self.enabled = budget_bytes > 0
        self._inflight: dict[BlockKey, Owner | None] = {}
        self._used_early: set[BlockKey] = set()  # read while still in flight
        self._unread: OrderedDict[BlockKey, _Held] = OrderedDict()
        self._read: OrderedDict[BlockKey, _Held] = OrderedDict()  # read at least once; since = last read
        self._issued = metrics.READAHEAD_ISSUED.labels(dataset)
        self._used = metrics.READAHEAD_USED.labels(dataset)
        self._wasted = metrics.READAHEAD_WASTED.labels(dataset)

    def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    def held_bytes(self) -> int:
        """Bytes of prefetched blocks held right now (read or not)."""
        return sum(len(h.data) for h in (*self._unread.values(), *self._read.values()))

    def submit(
        self, key: BlockKey, fetch: Callable[[], Awaitable[Buffer]], nbytes: int, owner: Owner | None = None
    ) -> bool:
        """Start fetching ``key`` in the background; False if there is no room now."""
        if not self.enabled or self.nursery is None:
            return False
        if key in self._inflight or key in self._unread or key in self._read:
            return True
        if len(self._inflight) + len(self._unread) + len(self._read) >= self.slots and not self._make_room():
            return False
        self._inflight[key] = owner
        self.nursery.start_soon(self._run, key, fetch, nbytes)
        return True

    def holds(self, key: BlockKey) -> bool:
        return key in self._unread or key in self._read

    def take(self, key: BlockKey) -> Buffer | None:
        """The prefetched block ``key`` if it is held (it stays held: see ``used``)."""
        held = self._unread.get(key)
        if held is not None:
            return held.data
        read = self._read.get(key)
        return read.data if read is not None else None

    def used(self, key: BlockKey) -> None:
        """A read just used ``key``: count it if it came from a prefetch."""
        held = self._unread.pop(key, None)
        if held is not None:
            self._used.inc(len(held.data))
            held.since = time.monotonic()
            self._read[key] = held
        elif key in self._read:
            self._read[key].since = time.monotonic()
            self._read.move_to_end(key)
        elif key in self._inflight:
            self._used_early.add(key)
        self._release_behind(key)

    def keep(self, key: BlockKey, data: Buffer, owner: Owner) -> None:
        """A read fetched ``key`` itself (a miss of every tier): hold it like a read prefetch if a
        slot is free, so the kernel's next requests for the same block hit even when readahead
        pushes it out of a memory tier smaller than the window."""
        if not self.enabled or key in self._read or key in self._unread or key in self._inflight:
            return
        if len(self._inflight) + len(self._unread) + len(self._read) >= self.slots and not self._make_room():
            return
        self._read[key] = _Held(data, owner, time.monotonic())

    def _release_behind(self, key: BlockKey) -> None:
        """Blocks of the same object two or more blocks behind a read of ``key`` are done with:
        they leave the budget at once instead of after ``READ_GRACE_SECONDS`` (they stay in the
        cache tiers if admitted).  Otherwise a stream faster than ``slots`` blocks per grace
        period would find every slot taken by blocks it has already read and stop prefetching."""
        behind = [
            k
            for k in self._read
            if k.index < key.index - 1
            and k.url == key.url
            and k.version == key.version
            and k.block_size == key.block_size
        ]
        for k in behind:
            del self._read[k]

    def forget(self, owner: Owner) -> None:
        """``owner``'s file was closed: drop its blocks (those not read yet count as wasted)."""
        owner.closed = True
        for key in [k for k, h in self._unread.items() if h.owner is owner]:
            self._drop(key)
        for key in [k for k, h in self._read.items() if h.owner is owner]:
            del self._read[key]

    def _drop(self, key: BlockKey) -> None:
        held = self._unread.pop(key)
        self._wasted.inc(len(held.data))

    def _make_room(self) -> bool:
        """Free one slot: the oldest block already read, else the oldest unread block no open
        file asked for, else the oldest stale unread one."""
        now = time.monotonic()
        if self._read and now - next(iter(self._read.values())).since >= READ_GRACE_SECONDS:
            self._read.popitem(last=False)
            return True
        for key, held in self._unread.items():
            if held.owner is None or now - held.since >= STALE_SECONDS:
                self._drop(key)
                return True
        return False

    async def _run(self, key: BlockKey, fetch: Callable[[], Awaitable[Buffer]], nbytes: int) -> None:
        owner = self._inflight.get(key)
        try:
            data = await self.cache.get(key, fetch, reserved=True)
        except SourceError as exc:
            log.debug("prefetch of %s block %d failed: %s", key.url, key.index, exc)
            self._used_early.discard(key)
            del self._inflight[key]
            return
        except BaseException:
            self._used_early.discard(key)
            del self._inflight[key]
            raise
        del self._inflight[key]
        self._issued.inc(len(data))
        if key in self._used_early:
            self._used_early.discard(key)
            self._used.inc(len(data))
            self._read[key] = _Held(data, owner, time.monotonic())
        elif owner is not None and owner.closed:
            self._wasted.inc(len(data))
        else:
            self._unread[key] = _Held(data, owner, time.monotonic())


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
        self.owner = Owner()
        self._next_offset = -1
        self._window = 0
        self._ahead_until = 0  # first block index not yet considered for prefetch
        self._stall = metrics.FUSE_READ_STALL.labels(cache.dataset)
        self._stalls = metrics.FUSE_READ_STALLS.labels(cache.dataset)

    def key(self, index: int) -> BlockKey:
        return BlockKey(self.url, self.version, self.bs, index)

    def close(self) -> None:
        """The handle is released: its readahead not read yet is dropped."""
        if self.prefetcher is not None:
            self.prefetcher.forget(self.owner)

    def _block_len(self, index: int) -> int:
        return max(0, min(self.bs, self.size - index * self.bs))

    def fetcher(self, index: int) -> Callable[[], Awaitable[Buffer]]:
        start = index * self.bs
        end = min(start + self.bs, self.size)

        async def fetch() -> Buffer:
            return await self.source.read_block(self.rel, start, end, self.version)

        return fetch

    async def block(self, index: int, keep: bool = False) -> Buffer:
        """Block ``index``; ``keep``: a sequential read ends inside it (more reads of it follow)."""
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
            if keep and self.prefetcher is not None:
                self.prefetcher.keep(key, data, self.owner)
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
            data = await self.block(first, keep=self._window > 0 and end < (first + 1) * self.bs)
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
            if not self.prefetcher.submit(key, self.fetcher(index), self._block_len(index), self.owner):
                break
            self._ahead_until = index + 1
