"""TieredCache: MEM tier → SSD tier → source, with single-flight misses.

``get(key, fetch)`` returns the block's bytes: from RAM, else from the SSD tier (promoted to
RAM), else by awaiting ``fetch()`` exactly once however many tasks ask for the same block at
the same time; if that one fetch fails, every task waiting for it gets the same error (a
source that does not answer costs them one timeout together, not one each).  Fetched blocks go
into RAM at once and into the SSD tier in the background (bounded: at most ``ssd_write_slots``
writes in flight; beyond that the reader waits, which is the back-pressure that keeps memory
bounded).

Memory: with ``fetch_slots`` at most that many blocks are being loaded (from the SSD tier or the
source) or waiting for their SSD write at once; readers wait for a slot.  Readahead reserves its
blocks itself (``get(..., reserved=True)``, see ``fluidfs.fs.reader.Prefetcher``).  So the
block data the daemon holds is bounded by the memory tier's quota plus these two budgets.

Caveats: a failing SSD tier never fails a read: its errors are logged once and the block is
served from the source; the tier itself decides to go degraded.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable

import trio

from fluidfs import metrics
from fluidfs.cache.base import BlockKey, Buffer, Tier
from fluidfs.cache.memory import MemoryTier
from fluidfs.errors import SourceError

log = logging.getLogger(__name__)


class _Flight:
    __slots__ = ("done", "data", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: Buffer | None = None
        self.error: SourceError | None = None


class TieredCache:
    """The block cache every read goes through."""

    def __init__(
        self,
        mem: MemoryTier,
        ssd: Tier | None = None,
        *,
        dataset: str = "",
        ssd_limiter: trio.CapacityLimiter | None = None,
        ssd_write_slots: int = 8,
        fetch_slots: int = 0,
    ) -> None:
        self.mem = mem
        self.ssd = ssd
        self.dataset = dataset
        self._flights: dict[BlockKey, _Flight] = {}
        self._ssd_limiter = ssd_limiter or trio.CapacityLimiter(8)
        self._ssd_slots = trio.Semaphore(ssd_write_slots)
        self._fetch_slots = trio.CapacityLimiter(fetch_slots) if fetch_slots > 0 else None
        self._nursery: trio.Nursery | None = None
        self._warned = False
        self._m_hit = {t: metrics.CACHE_HITS.labels(dataset, t) for t in ("mem", "ssd")}
        self._m_miss = {t: metrics.CACHE_MISSES.labels(dataset, t) for t in ("mem", "ssd")}
        self._m_bytes = {t: metrics.CACHE_HIT_BYTES.labels(dataset, t) for t in ("mem", "ssd")}
        self._m_evict = {t: metrics.CACHE_EVICTIONS.labels(dataset, t) for t in ("mem", "ssd")}
        self._seen_evictions = {"mem": 0, "ssd": 0}  # tier counters already exported
        metrics.CACHE_QUOTA.labels(dataset, "mem").set(mem.quota_bytes())
        if ssd is not None:
            metrics.CACHE_QUOTA.labels(dataset, "ssd").set(ssd.quota_bytes())
        self._update_gauges()  # an SSD tier reopened over a warm cache already holds blocks

    def start(self, nursery: trio.Nursery) -> None:
        """Give the cache a nursery for background SSD writes (else they run inline)."""
        self._nursery = nursery

    async def get(self, key: BlockKey, fetch: Callable[[], Awaitable[bytes]], *, reserved: bool = False) -> Buffer:
        """The block ``key``; ``reserved``: the caller holds memory for it (no fetch slot taken)."""
        while True:
            data = self.mem.get(key)
            if data is not None:
                self._hit("mem", data)
                return data
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.data is not None:
                self._hit("mem", flight.data)
                return flight.data
            if flight.error is not None:
                err = copy.copy(flight.error)  # one object per task: tracebacks are per raise
                err.url = flight.error.url
                raise err
            # the leader was cancelled: loop and try ourselves
        self._m_miss["mem"].inc()
        flight = _Flight()
        self._flights[key] = flight
        try:
            data = await self._load(key, fetch, reserved)
            flight.data = data
            return data
        except SourceError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    async def _load(self, key: BlockKey, fetch: Callable[[], Awaitable[bytes]], reserved: bool) -> Buffer:
        slot = None if reserved else self._fetch_slots
        token = object()
        if slot is not None:
            await slot.acquire_on_behalf_of(token)  # cancelled while waiting: nothing to give back
        try:
            if self.ssd is not None:
                data = await self._ssd_get(key)
                if data is not None:
                    self._hit("ssd", data)
                    self.mem.put(key, bytes(data))
                    self._update_gauges()
                    return data
                self._m_miss["ssd"].inc()
            raw = await fetch()
            self.mem.put(key, raw)
            if self.ssd is not None:
                await self._ssd_slots.acquire()
                if self._nursery is not None:
                    self._nursery.start_soon(self._ssd_put, key, raw, slot, token)
                    slot = None  # the write gives the fetch slot back once the block is on disk
                else:
                    await self._ssd_put(key, raw)
            self._update_gauges()
            return memoryview(raw)
        finally:
            if slot is not None:
                slot.release_on_behalf_of(token)

    async def _ssd_get(self, key: BlockKey) -> Buffer | None:
        assert self.ssd is not None
        try:
            return await trio.to_thread.run_sync(self.ssd.get, key, limiter=self._ssd_limiter)
        except Exception as exc:  # a tier must not fail reads
            self._warn(exc)
            return None

    async def _ssd_put(
        self, key: BlockKey, raw: bytes, slot: trio.CapacityLimiter | None = None, token: object = None
    ) -> None:
        assert self.ssd is not None
        try:
            ok = await trio.to_thread.run_sync(self.ssd.put, key, raw, limiter=self._ssd_limiter)
            if not ok:
                metrics.CACHE_REJECTED.labels(self.dataset, "ssd").inc()
        except Exception as exc:
            self._warn(exc)
        finally:
            self._ssd_slots.release()
            if slot is not None:
                slot.release_on_behalf_of(token)
            self._update_gauges()

    def tier_of(self, key: BlockKey) -> str | None:
        """Which tier holds ``key`` ("mem", "ssd") or None — for status and warmup."""
        if self.mem.contains(key):
            return "mem"
        if self.ssd is not None and self.ssd.contains(key):
            return "ssd"
        return None

    def note_hit(self, tier: str, data: Buffer) -> None:
        """Count a block served from memory outside the tiers (the readahead buffer)."""
        self._hit(tier, data)

    def _hit(self, tier: str, data: Buffer) -> None:
        self._m_hit[tier].inc()
        self._m_bytes[tier].inc(len(data))

    def _update_gauges(self) -> None:
        metrics.CACHE_USED.labels(self.dataset, "mem").set(self.mem.used_bytes())
        self._export_evictions("mem", self.mem.evictions)
        if self.ssd is not None:
            metrics.CACHE_USED.labels(self.dataset, "ssd").set(self.ssd.used_bytes())
            stats = getattr(self.ssd, "stats", None)
            if stats is not None:
                self._export_evictions("ssd", int(stats().get("evictions", 0)))

    def _export_evictions(self, tier: str, total: int) -> None:
        """Advance the evictions counter by what the tier evicted since the last export."""
        delta = total - self._seen_evictions[tier]
        if delta > 0:
            self._m_evict[tier].inc(delta)
            self._seen_evictions[tier] = total

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("dataset %s: SSD cache tier failed (%s); serving without it", self.dataset, exc)
