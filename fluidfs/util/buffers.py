"""Block-sized buffers to read into: huge-page backed, and recycled once nothing uses them.

Every block that enters the cache (read from an SSD block file, received from a peer, fetched
from a source) lands in a new buffer that the memory tier then keeps.  A fresh 4 MiB buffer
filled through 4 KiB pages costs 1,024 page faults, each clearing a page: measured here
(2-vCPU VM, under load), reading a cached 4 MiB file into a new ``bytearray`` took 10-11 ms,
into a fresh anonymous ``mmap`` 4 ms, into an ``mmap`` advised ``MADV_HUGEPAGE`` 0.4 ms (two
faults, fewer TLB misses during the copy).  Clearing fresh pages was still 17 % of the mount
daemon's CPU time while serving the SSD tier, so buffers are also recycled.

:func:`block_buffer` returns, for sizes that are a multiple of 2 MiB (the block sizes), a view
of an anonymous mapping advised ``MADV_HUGEPAGE`` and aligned to 2 MiB (the mapping is one huge
page longer than asked; that slack is never touched), taken from a pool: a buffer is reused once
no view of it is left anywhere (its reference count says so: the memory tier evicted the block
and no reader, FUSE reply or peer transfer still holds a slice of it).  At most
``POOL_FREE_BYTES`` of unused buffers per size stay mapped; the rest are unmapped.  Other sizes
get a plain buffer (``mmap`` from 1 MiB, else ``bytearray``).

Caveats: a recycled buffer holds the bytes of an older block until it is filled again; callers
fill it completely or drop it.  Reuse relies on CPython's reference counts (``sys.getrefcount``).
Linux's transparent huge pages must be ``always`` or ``madvise``
(``/sys/kernel/mm/transparent_hugepage/enabled``); with ``never``, or when the kernel finds no
free huge page, the buffer silently uses 4 KiB pages.  With THP ``defrag`` set to ``madvise``
(a common default) the first fault of a new buffer may compact memory to find a huge page.
Each pooled buffer is one memory mapping; a process may hold ``vm.max_map_count`` (65,530 by
default) of them, i.e. more than 200 GiB of 4 MiB blocks.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading

HUGE_PAGE = 2 << 20
MMAP_MIN = 1 << 20  # smaller buffers come from the allocator (bytearray)
POOL_FREE_BYTES = 32 << 20  # unused pooled buffers kept mapped, per buffer size
_ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
_MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)


def _address(m: mmap.mmap) -> int:
    """The virtual address of the first byte of ``m``."""
    anchor = ctypes.c_char.from_buffer(m)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor  # releases the buffer export, so ``m`` can be unmapped later


def _map(size: int) -> mmap.mmap:
    """A new private anonymous mapping; MemoryError (not OSError: no I/O failed) if refused."""
    try:
        return mmap.mmap(-1, size, flags=_ANON)
    except OSError as e:
        raise MemoryError(f"cannot map a {size}-byte buffer: {e.strerror}") from e


def _huge_mapping(size: int) -> tuple[mmap.mmap, int]:
    """A new anonymous mapping advised for huge pages and the offset of its 2 MiB-aligned start."""
    m = _map(size + HUGE_PAGE)
    offset = -_address(m) % HUGE_PAGE
    if _MADV_HUGEPAGE is not None:
        try:
            m.madvise(_MADV_HUGEPAGE)
        except OSError:  # no THP support in this kernel: 4 KiB pages
            pass
    return m, offset


class _Slot:
    __slots__ = ("m", "offset")

    def __init__(self, m: mmap.mmap, offset: int) -> None:
        self.m = m
        self.offset = offset

    def free(self) -> bool:
        # references: this slot's attribute and getrefcount's argument; any live view of the
        # buffer adds one (its managed buffer holds the mapping)
        return sys.getrefcount(self.m) <= 2


class BufferPool:
    """Huge-page buffers of a few sizes, reused once unreferenced.  Thread-safe."""

    def __init__(self, free_bytes: int = POOL_FREE_BYTES) -> None:
        self._free_bytes = free_bytes
        self._lock = threading.Lock()
        self._slots: dict[int, list[_Slot]] = {}

    def get(self, size: int) -> memoryview:
        """A writable buffer of ``size`` bytes (a multiple of 2 MiB); old contents if reused."""
        keep = max(1, self._free_bytes // size)
        with self._lock:
            slots = self._slots.setdefault(size, [])
            free = [s for s in slots if s.free()]
            if len(free) > keep + 1:  # more idle buffers than worth keeping: unmap the extras
                for s in free[keep + 1 :]:
                    slots.remove(s)
                    s.m.close()
                free = free[: keep + 1]
            if free:
                slot = free[0]
            else:
                slot = _Slot(*_huge_mapping(size))
                slots.append(slot)
            return memoryview(slot.m)[slot.offset : slot.offset + size]

    def stats(self) -> dict[str, int]:
        """Mapped buffers and how many of them are unused (for tests and benchmarks)."""
        with self._lock:
            slots = [s for group in self._slots.values() for s in group]
            return {"buffers": len(slots), "free": sum(1 for s in slots if s.free())}


_POOL = BufferPool()


def block_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes to read a block into (flat, unsigned bytes).

    The caller fills all of it (a recycled buffer holds older bytes) before handing it on."""
    if size >= MMAP_MIN and size % HUGE_PAGE == 0:
        return _POOL.get(size)
    if size >= MMAP_MIN:
        return aligned_buffer(size)
    return memoryview(bytearray(size))


def aligned_buffer(size: int) -> memoryview:
    """A fresh, zero-filled, writable buffer of ``size`` bytes starting on a page boundary (for
    ``O_DIRECT``, whose buffers must be aligned)."""
    return memoryview(_map(max(size, 1)))[:size]


def pool_stats() -> dict[str, int]:
    """The shared pool's :meth:`BufferPool.stats`."""
    return _POOL.stats()
