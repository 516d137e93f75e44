"""Readahead keeps what it fetched until it is read: with a memory tier smaller than the
readahead window and an SSD tier that admits nothing, every block is fetched from the source
once (not 1.9 times), and the readahead metrics say what happened (issued = used + wasted)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from fluidfs.fs.reader import READ_GRACE_SECONDS
from tests.support.cache import cache_from_config, make_vfs_with_cache, metric, resolve, unique_dataset
from tests.support.doubles import CountingSource, MemorySource

MiB = 1 << 20


def sequential_read(vfs, ino: int, chunk: int, stop_at: int | None = None, pause: float = 0.002) -> bytes:  # type: ignore[no-untyped-def]
    async def main() -> bytes:
        out = bytearray()
        async with trio.open_nursery() as n:
            vfs.prefetcher.start(n)
            vfs.cache.start(n)
            fh, _ = await vfs.open(ino, os.O_RDONLY)
            off = 0
            while stop_at is None or off < stop_at:
                data = await vfs.read(fh, off, chunk)
                if not data:
                    break
                out += data
                off += len(data)
                await trio.sleep(pause)  # let readahead run ahead, as a consumer would
            vfs.release(fh)
            await trio.sleep(0.2)
            n.cancel_scope.cancel()
        return bytes(out)

    return trio.run(main)


def setup(tmp_path: Path, data: bytes, **cfg: object):  # type: ignore[no-untyped-def]
    ds = unique_dataset("ra")
    src = CountingSource(MemorySource({"f": data}))
    # as `fluidfs mount --memory-size 2Mi --cache-size 0 --cache-dir D` builds it: memory LRU
    cache = cache_from_config(
        tmp_path / "c", ds, block_size=MiB, memory_size=2 * MiB, cache_size=64 * 1024, free_space_floor=0
    )
    vfs = make_vfs_with_cache(
        {"/": src}, cache, block_size=MiB, dataset=ds, readahead=8 * MiB, inflight_memory=32 * MiB, **cfg
    )
    ino = trio.run(resolve, vfs, "/f")
    return ds, src, vfs, ino


def test_readahead_larger_than_memory_tier_is_read_once(tmp_path: Path) -> None:
    data = os.urandom(24 * MiB)
    ds, src, vfs, ino = setup(tmp_path, data, prefetch_memory=16 * MiB)
    assert sequential_read(vfs, ino, 256 * 1024) == data
    starts = [start for _p, start, _e in src.reads]
    assert sorted(starts) == sorted(set(starts)), "a block was fetched twice"
    assert src.bytes_read == len(data)
    issued = metric("fluidfs_readahead_issued_bytes_total", dataset=ds)
    used = metric("fluidfs_readahead_used_bytes_total", dataset=ds)
    wasted = metric("fluidfs_readahead_wasted_bytes_total", dataset=ds)
    assert issued > 8 * MiB and used == issued and wasted == 0


def test_block_being_read_survives_readahead_that_fills_the_memory_tier(tmp_path: Path) -> None:
    """A slow consumer: between two reads of the block it fetched itself, readahead lands more
    blocks than the memory tier holds; the block is still read from the source once."""
    data = os.urandom(8 * MiB)
    _ds, src, vfs, ino = setup(tmp_path, data, prefetch_memory=16 * MiB)
    assert sequential_read(vfs, ino, 256 * 1024, pause=0.05) == data
    starts = [start for _p, start, _e in src.reads]
    assert sorted(starts) == sorted(set(starts)), "a block was fetched twice"


def test_prefetched_blocks_never_read_are_counted_as_wasted(tmp_path: Path) -> None:
    data = os.urandom(24 * MiB)
    ds, src, vfs, ino = setup(tmp_path, data, prefetch_memory=16 * MiB)
    assert sequential_read(vfs, ino, 256 * 1024, stop_at=6 * MiB) == data[: 6 * MiB]
    issued = metric("fluidfs_readahead_issued_bytes_total", dataset=ds)
    used = metric("fluidfs_readahead_used_bytes_total", dataset=ds)
    wasted = metric("fluidfs_readahead_wasted_bytes_total", dataset=ds)
    assert wasted > 0, "blocks read ahead past where the reader stopped were dropped unread"
    assert issued == used + wasted
    assert vfs.prefetcher.held_bytes() == 0  # closing the file let go of its readahead


def test_blocks_left_behind_free_their_readahead_slots(tmp_path: Path) -> None:
    """A stream faster than the budget per read-grace period keeps prefetching: blocks two or
    more blocks behind the reader leave the budget at once, not a second after their last read."""
    data = os.urandom(24 * MiB)
    ds, src, vfs, ino = setup(tmp_path, data, prefetch_memory=4 * MiB)  # 4 slots of 1 MiB
    held: list[int] = []

    async def main() -> bytes:
        out = bytearray()
        async with trio.open_nursery() as n:
            vfs.prefetcher.start(n)
            vfs.cache.start(n)
            fh, _ = await vfs.open(ino, os.O_RDONLY)
            off = 0
            while data_ := await vfs.read(fh, off, 256 * 1024):
                out += data_
                off += len(data_)
                held.append(len(vfs.prefetcher._read))
                await trio.sleep(0.002)
            vfs.release(fh)
            n.cancel_scope.cancel()
        return bytes(out)

    t0 = time.monotonic()
    assert trio.run(main) == data
    took = time.monotonic() - t0
    assert max(held) <= 2, "blocks already passed stay in the budget"
    used = metric("fluidfs_readahead_used_bytes_total", dataset=ds)
    if took < READ_GRACE_SECONDS * 4:  # held for the grace period, at most ~4 blocks/s could be prefetched
        assert used >= 16 * MiB, used
