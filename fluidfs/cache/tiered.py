"""TieredCache: MEM tier → SSD tier → (peer tier) → source, with single-flight misses.

``get(key, fetch)`` returns the block's bytes: from RAM, else from the SSD tier (promoted to
RAM), else from the cluster's peer tier when one is attached (``attach_peer``; kept where its
``placement`` says), else by awaiting ``fetch()`` exactly once however many tasks ask for the same block at
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
served from the source; the tier itself decides to go degraded.  Likewise a failing peer tier
never fails a read (the source serves; the peer tier's metrics show why).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable

import trio

from fluidfs import metrics
from fluidfs.cache.base import BlockKey, Buffer, PeerLookup, Tier
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
        self._peer_warned = False
        self.peer: PeerLookup | None = None
        self.source_fetches = 0
        self.peer_fetches = 0
        self._m_hit = {t: metrics.CACHE_HITS.labels(dataset, t) for t in ("mem", "ssd", "peer")}
        self._m_miss = {t: metrics.CACHE_MISSES.labels(dataset, t) for t in ("mem", "ssd", "peer")}
        self._m_bytes = {t: metrics.CACHE_HIT_BYTES.labels(dataset, t) for t in ("mem", "ssd", "peer")}
        self._m_evict = {t: metrics.CACHE_EVICTIONS.labels(dataset, t) for t in ("mem", "ssd")}
        self._seen_evictions = {"mem": 0, "ssd": 0}  # tier counters already exported
        metrics.CACHE_QUOTA.labels(dataset, "mem").set(mem.quota_bytes())
        if ssd is not None:
            metrics.CACHE_QUOTA.labels(dataset, "ssd").set(ssd.quota_bytes())
        self._update_gauges()  # an SSD tier reopened over a warm cache already holds blocks

    def start(self, nursery: trio.Nursery) -> None:
        """Give the cache a nursery for background SSD writes (else they run inline)."""
        self._nursery = nursery

    def attach_peer(self, peer: PeerLookup | None) -> None:
        """Ask ``peer`` on a memory and SSD miss, before the source (None detaches)."""
        self.peer = peer

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
            if self.peer is not None:
                got = await self._peer_get(key)
                if got is not None:
                    return got
            raw = await fetch()
            self.source_fetches += 1
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

    async def _peer_get(self, key: BlockKey) -> Buffer | None:
        """Ask the peer tier; keep what it returns where the tier's ``placement`` says."""
        assert self.peer is not None
        try:
            got = await self.peer.get(key)
        except Exception as exc:  # the peer tier must not fail reads
            if not self._peer_warned:
                self._peer_warned = True
                log.warning("dataset %s: peer tier failed (%s); reading from the source", self.dataset, exc)
            got = None
        if got is None:
            self._m_miss["peer"].inc()
            return None
        self.peer_fetches += 1
        self._hit("peer", got)
        where = self.peer.placement(key)
        if where != "none":
            raw = got if isinstance(got, bytes) else bytes(got)
            self.mem.put(key, raw)
            if where == "ssd" and self.ssd is not None:
                await self._ssd_slots.acquire()
                if self._nursery is not None:
                    self._nursery.start_soon(self._ssd_put, key, raw)
                else:
                    await self._ssd_put(key, raw)
            self._update_gauges()
        return got

    async def lookup(self, key: BlockKey) -> Buffer | None:
        """The block if a local tier holds it (memory, then SSD); never fetches, never asks peers."""
        data = self.mem.get(key)
        if data is not None:
            return data
        if self.ssd is not None and self.ssd.contains(key):
            return await self._ssd_get(key)
        return None

    async def admit(self, key: BlockKey, data: Buffer) -> bool:
        """Store a block handed over by a peer: in the SSD tier (memory when there is none)."""
        raw = data if isinstance(data, bytes) else bytes(data)
        if self.ssd is None:
            ok = self.mem.put(key, raw)
        else:
            await self._ssd_slots.acquire()
            try:
                ok = await trio.to_thread.run_sync(self.ssd.put, key, raw, limiter=self._ssd_limiter)
            except Exception as exc:
                self._warn(exc)
                ok = False
            finally:
                self._ssd_slots.release()
        self._update_gauges()
        return bool(ok)

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

    def tier_of(self, key: BlockKey) -> str | None:  # (peer copies are in "mem" or "ssd")
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
