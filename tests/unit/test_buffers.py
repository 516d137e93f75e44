"""fluidfs.util.buffers: block buffers of every size, huge-page advice and 2 MiB alignment, and a
pool that reuses a buffer only once no view of it is left."""

from __future__ import annotations

import ctypes
import mmap
import threading
from pathlib import Path

import pytest

from fluidfs.util import buffers
from fluidfs.util.buffers import HUGE_PAGE, BufferPool, block_buffer

MiB = 1 << 20


def address(view: memoryview) -> int:
    """Address of the first byte of a writable view."""
    anchor = ctypes.c_char.from_buffer(view)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def vm_flags(addr: int) -> list[str]:
    """The VmFlags of this process's mapping that contains ``addr``."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping contains {addr:#x}")


@pytest.mark.parametrize("size", [0, 1, 4096, MiB - 1, MiB, 3 * MiB, 2 * MiB, 4 * MiB, 16 * MiB])
def test_block_buffer_is_a_writable_flat_buffer_of_the_size(size: int) -> None:
    buf = block_buffer(size)
    assert (buf.nbytes, buf.format, buf.ndim, buf.readonly) == (size, "B", 1, False)
    if size % HUGE_PAGE or size < MiB:  # not pooled: fresh, zeroed memory (pooled ones may be reused)
        assert not any(buf)
    if size:
        buf[0] = 9
        buf[-1] = 7
        assert (buf[0], buf[-1]) == ((9, 7) if size > 1 else (7, 7))


@pytest.mark.parametrize("size", [2 * MiB, 4 * MiB, 8 * MiB])
def test_block_sized_buffers_are_aligned_and_advised_for_huge_pages(size: int) -> None:
    buf = BufferPool().get(size)
    addr = address(buf)
    assert addr % HUGE_PAGE == 0
    if getattr(mmap, "MADV_HUGEPAGE", None) is not None:
        assert "hg" in vm_flags(addr)


def test_a_buffer_is_reused_only_when_no_view_of_it_is_left() -> None:
    pool = BufferPool()
    a = pool.get(4 * MiB)
    a[:4] = b"old!"
    first = address(a)
    piece = a.toreadonly()[100:200]  # e.g. a slice on its way to a FUSE reply
    del a
    b = pool.get(4 * MiB)
    assert address(b) != first  # the slice still pins the first buffer
    assert pool.stats() == {"buffers": 2, "free": 0}
    del piece
    assert pool.stats() == {"buffers": 2, "free": 1}
    c = pool.get(4 * MiB)
    assert address(c) == first
    assert bytes(c[:4]) == b"old!"  # reused as is: the caller fills it
    del b, c


def test_the_pool_keeps_a_bounded_number_of_unused_buffers() -> None:
    pool = BufferPool(free_bytes=8 * MiB)  # two 4 MiB buffers
    held = [pool.get(4 * MiB) for _ in range(6)]
    assert pool.stats() == {"buffers": 6, "free": 0}
    del held
    keep = pool.get(4 * MiB)
    assert pool.stats() == {"buffers": 3, "free": 2}  # one in use, two kept, three unmapped
    assert len(keep) == 4 * MiB


def test_buffers_of_different_sizes_are_pooled_apart() -> None:
    pool = BufferPool()
    a = pool.get(2 * MiB)
    del a
    b = pool.get(4 * MiB)
    assert b.nbytes == 4 * MiB
    assert pool.stats() == {"buffers": 2, "free": 1}


def test_concurrent_gets_never_share_a_live_buffer() -> None:
    pool = BufferPool(free_bytes=16 * MiB)
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors: list[str] = []

    def worker(n: int) -> None:
        for i in range(40):
            buf = pool.get(2 * MiB)
            buf[:8] = (n * 1000 + i).to_bytes(8, "little")
            with lock:
                seen.append((n, i))
            if int.from_bytes(buf[:8], "little") != n * 1000 + i:
                errors.append(f"thread {n} round {i}: buffer shared")
            del buf

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 160
    assert pool.stats()["buffers"] <= 8  # at most one per thread in use, plus the kept ones


def test_module_pool_serves_block_sizes_and_reports_stats() -> None:
    before = buffers.pool_stats()["buffers"]
    buf = block_buffer(4 * MiB)
    assert buffers.pool_stats()["buffers"] >= min(before, 1)
    assert address(buf) % HUGE_PAGE == 0


@pytest.mark.parametrize("size", [0, 1, 4096, 5000, 3 * MiB])
def test_aligned_buffers_start_on_a_page(size: int) -> None:
    buf = buffers.aligned_buffer(size)
    assert buf.nbytes == size and not buf.readonly and not any(buf)
    if size:
        assert address(buf) % mmap.PAGESIZE == 0


def test_a_refused_mapping_is_a_memory_error_not_an_io_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> mmap.mmap:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refuse)
    for size in (4 * MiB, 3 * MiB):
        with pytest.raises(MemoryError, match="cannot map"):
            BufferPool().get(size) if size % HUGE_PAGE == 0 else block_buffer(size)
