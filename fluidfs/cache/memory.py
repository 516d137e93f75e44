"""MEM tier: a byte-bounded in-memory block store (cachetools), returning zero-copy views.

Caveats: ``eviction="none"`` stops admitting once full (keeps what is there); ``lru`` evicts
the least recently used blocks.  Thread-safe (one lock), although the tiered cache only calls
it from the trio thread.
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


class MemoryTier:
    """Byte-bounded block cache held in RAM."""

    def __init__(self, quota: int, eviction: str = "lru", name: str = "mem") -> None:
        self.name = name
        self._quota = quota
        self._policy = eviction
        self._lock = threading.Lock()
        self._data: Cache = _CountingLRU(maxsize=quota, getsizeof=len)  # type: ignore[type-arg]
        self.rejected = 0

    def get(self, key: BlockKey) -> Buffer | None:
        with self._lock:
            data = self._data.get(key)
        return memoryview(data) if data is not None else None

    def put(self, key: BlockKey, data: bytes) -> bool:
        size = len(data)
        with self._lock:
            if key in self._data:
                return True
            if size > self._quota:
                self.rejected += 1
                return False
            if self._policy == "none" and self._data.currsize + size > self._quota:
                self.rejected += 1
                return False
            self._data[key] = bytes(data)
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
