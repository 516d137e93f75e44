"""MEM tier: a byte-bounded in-memory block store (cachetools) that adopts the buffers it is given.

``put`` keeps a read-only view of the caller's buffer instead of copying it (a 4 MiB copy on
the trio thread per block was the largest cost of serving from the SSD tier); ``get`` returns
that view, so every reader of a block shares one buffer and slices of it reach the FUSE reply
without a copy.

Caveats: ``eviction="none"`` stops admitting once full (keeps what is there); ``lru`` evicts
the least recently used blocks.  The tier accounts ``nbytes`` of the view it keeps: a caller
handing over a small view of a larger object keeps the whole object alive (the cache's callers
pass block-sized buffers: source reads, SSD payloads, peer bodies).  The caller must not write
into a buffer after handing it over.  Thread-safe (one lock), although the tiered cache only
calls it from the trio thread.
"""

from __future__ import annotations

import threading

from cachetools import Cache, LRUCache

from fluidfs.cache.base import BlockKey, Buffer


class _CountingLRU(LRUCache):  # type: ignore[type-arg]
    evictions = 0

    def popitem(self):  # type: ignore[no-untyped-def]
        item = super().popitem()
        self.evictions += 1
        return item


def _nbytes(view: memoryview) -> int:
    return view.nbytes


def adopt(data: Buffer | bytearray) -> memoryview:
    """A read-only, flat byte view of ``data`` (no copy)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view if view.readonly else view.toreadonly()


class MemoryTier:
    """Byte-bounded block cache held in RAM."""

    def __init__(self, quota: int, eviction: str = "lru", name: str = "mem") -> None:
        self.name = name
        self._quota = quota
        self._policy = eviction
        self._lock = threading.Lock()
        self._data: Cache = _CountingLRU(maxsize=quota, getsizeof=_nbytes)  # type: ignore[type-arg]
        self.rejected = 0

    def get(self, key: BlockKey) -> Buffer | None:
        with self._lock:
            data: memoryview | None = self._data.get(key)
        return data

    def put(self, key: BlockKey, data: Buffer) -> bool:
        """Keep ``data`` (adopted, not copied); False if not admitted (too big, or full under ``none``)."""
        size = memoryview(data).nbytes
        with self._lock:
            if key in self._data:
                return True
            if size > self._quota:
                self.rejected += 1
                return False
            if self._policy == "none" and self._data.currsize + size > self._quota:
                self.rejected += 1
                return False
            self._data[key] = adopt(data)
            return True

    def contains(self, key: BlockKey) -> bool:
        with self._lock:
            return key in self._data

    def used_bytes(self) -> int:
        return int(self._data.currsize)

    def quota_bytes(self) -> int:
        return self._quota

    @property
    def evictions(self) -> int:
        return self._data.evictions  # type: ignore[attr-defined, no-any-return]

    def __len__(self) -> int:
        return len(self._data)
