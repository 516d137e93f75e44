"""A source that stops answering, in-process: every call ends within the request timeout, the
source is then failed fast until it answers again, waiters on one block share its leader's
error, and readers wait for a fetch slot instead of holding unbounded memory.  Also what the
tree shows for objects deleted while open and for directories without a time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.errors import SourceTimeoutError, VersionChangedError
from fluidfs.sources.aio import AsyncSource
from tests.support.cache import blob, make_vfs_with_cache, metric, resolve, unique_dataset
from tests.support.doubles import MemorySource, PausableSource, SlowSource

MiB = 1 << 20
SLACK = 3.0  # generous: the machine is shared and noisy


def test_timeout_then_fail_fast_then_probe_recovers() -> None:
    src = PausableSource(MemorySource({"f": b"data"}))
    asrc = AsyncSource(src, unique_dataset("probe"), trio.CapacityLimiter(4), timeout=0.5, cooldown=1.0)

    async def main() -> None:
        with trio.fail_after(30):
            await scenario()

    async def scenario() -> None:
        assert await asrc.read("f", 0, 4) == b"data"
        src.pause()
        t0 = time.monotonic()
        with pytest.raises(SourceTimeoutError, match="within 0.5s"):
            await asrc.read("f", 0, 4)
        assert 0.4 < time.monotonic() - t0 < 0.5 + SLACK
        t0 = time.monotonic()
        for _ in range(20):  # failed at once while the source is known not to answer
            with pytest.raises(SourceTimeoutError, match="not responding"):
                await asrc.stat("f")
        assert time.monotonic() - t0 < 0.5
        assert src.calls["stat"] == 0
        await trio.sleep(1.1)
        src.resume()  # the next call is a probe and it gets an answer
        assert await asrc.read("f", 0, 4) == b"data"
        assert (await asrc.stat("f")).size == 4

    try:
        trio.run(main)
    finally:
        src.resume()


def test_waiters_on_one_block_share_the_leaders_timeout() -> None:
    """Eight readers of one uncached block of a paused source get EIO after one timeout together,
    not one after the other (the old single-flight let each waiter retry in turn)."""
    ds = unique_dataset("flight")
    src = PausableSource(MemorySource({"f": blob(2 * MiB, 1)}))
    cache = TieredCache(MemoryTier(16 * MiB), None, dataset=ds)
    vfs = make_vfs_with_cache({"/": src}, cache, block_size=MiB, dataset=ds, prefetch_memory=0)
    for ref in vfs.ns.mounts:
        ref.source.timeout = 0.5
        ref.source.health.cooldown = 0.0  # no fail-fast: single-flight alone must bound the wait
    errors: list[BaseException] = []

    async def main() -> float:
        ino = await resolve(vfs, "/f")
        src.pause()
        t0 = time.monotonic()

        async def reader() -> None:
            fh, _ = await vfs.open(ino, os.O_RDONLY)
            try:
                await vfs.read(fh, 4096, 4096)
            except SourceTimeoutError as exc:
                errors.append(exc)
            finally:
                vfs.release(fh)

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for _ in range(8):
                    n.start_soon(reader)
        return time.monotonic() - t0

    took = trio.run(main)
    src.resume()
    assert len(errors) == 8
    assert took < 0.5 + SLACK, took
    assert src.calls["read"] == 1


def test_readers_wait_for_a_fetch_slot() -> None:
    """With fetch_slots=3, 12 readers of 12 different blocks never have more than 3 fetches
    (blocks of data) in flight at once."""
    ds = unique_dataset("slots")
    data = blob(12 * MiB, 2)
    src = SlowSource(MemorySource({"f": data}), delay=0.05)
    cache = TieredCache(MemoryTier(64 * MiB), None, dataset=ds, fetch_slots=3)
    vfs = make_vfs_with_cache({"/": src}, cache, block_size=MiB, dataset=ds, prefetch_memory=0)

    async def main() -> list[bytes]:
        ino = await resolve(vfs, "/f")
        out: list[bytes] = [b""] * 12

        async def reader(i: int) -> None:
            fh, _ = await vfs.open(ino, os.O_RDONLY)
            out[i] = bytes(await vfs.read(fh, i * MiB, MiB))
            vfs.release(fh)

        async with trio.open_nursery() as n:
            for i in range(12):
                n.start_soon(reader, i)
        return out

    out = trio.run(main)
    assert b"".join(out) == data
    assert src.peak == 3


def test_read_of_object_deleted_while_open_is_eio_not_enoent() -> None:
    ds = unique_dataset("deleted")
    mem = MemorySource({"d/f": blob(3 * MiB, 3)})
    cache = TieredCache(MemoryTier(16 * MiB), None, dataset=ds)
    vfs = make_vfs_with_cache({"/": mem}, cache, block_size=MiB, dataset=ds, prefetch_memory=0)

    async def main() -> None:
        ino = await resolve(vfs, "/d/f")
        fh, _ = await vfs.open(ino, os.O_RDONLY)
        assert len(await vfs.read(fh, 0, 4096)) == 4096
        mem.delete("d/f")
        with pytest.raises(VersionChangedError, match="deleted at the source while open"):
            await vfs.read(fh, 2 * MiB, 4096)
        assert len(await vfs.read(fh, 0, 4096)) == 4096  # cached blocks of the version it opened
        vfs.release(fh)

    trio.run(main)


def test_directories_without_a_time_show_newest_child_or_mount_time() -> None:
    ds = unique_dataset("dirtime")
    mem = MemorySource({"a/x": b"1", "a/y": b"2", "b/c/z": b"3"})  # directories carry no time
    cache = TieredCache(MemoryTier(16 * MiB), None, dataset=ds)
    vfs = make_vfs_with_cache({"/": mem}, cache, block_size=MiB, dataset=ds)
    started = time.time()

    async def main() -> None:
        root = await resolve(vfs, "/")
        a = await vfs.lookup(root, "a")
        assert abs(a.mtime_ns / 1e9 - started) < 60  # before it is listed: the mount's start time
        fh = await vfs.opendir(a.inode)
        names = {n: attr async for n, attr, _ in vfs.readdir(fh, 0)}
        vfs.releasedir(fh)
        newest = max(names["x"].mtime_ns, names["y"].mtime_ns)
        assert (await vfs.getattr(a.inode)).mtime_ns == newest
        assert names["."].inode == a.inode and names[".."].inode == root
        assert all(attr.mtime_ns > 0 for attr in names.values())

    trio.run(main)


def test_reopened_ssd_tier_is_in_the_used_gauge_at_once(tmp_path: Path) -> None:
    ds = unique_dataset("gauge")
    tier = SSDTier(str(tmp_path / "c"), 64 * MiB, free_space_floor=0)
    first = TieredCache(MemoryTier(8 * MiB), tier, dataset=ds)

    async def fill() -> None:
        from fluidfs.cache.base import BlockKey

        for i in range(3):
            await first.get(BlockKey("memory:///f", "v1", MiB, i), lambda: _bytes(MiB))

    trio.run(fill)
    used = tier.used_bytes()
    tier.close()
    assert used > 0
    reopened = SSDTier(str(tmp_path / "c"), 64 * MiB, free_space_floor=0)
    TieredCache(MemoryTier(8 * MiB), reopened, dataset=ds + "-again")
    assert metric("fluidfs_cache_used_bytes", dataset=ds + "-again", tier="ssd") == used
    reopened.close()


async def _bytes(n: int) -> bytes:
    return os.urandom(n)
