"""TieredCache across its tiers (MEM → SSD → source): quotas under concurrent fills,
single-flight through both tiers, a failing SSD tier never failing reads, and the cache
metrics following the tiers' own counters.  Tier-level behaviour is in test_cache_ssd.py.

Helpers here (``make_vfs_with_cache``, ``disk_usage``...) are shared by the other cache tests.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from prometheus_client import REGISTRY

from fluidfs.cache import blockfile
from fluidfs.cache.base import BlockKey
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.ssdlayout import round_up
from fluidfs.cache.tiered import TieredCache
from fluidfs.config import MountConfig
from fluidfs.mountd import build_cache
from fluidfs.namespace import ROOT_INODE, MountRef, Namespace
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Source
from fluidfs.spec_types import MountSpec
from fluidfs.testing import CountingSource, FlakySource, MemorySource
from fluidfs.vfs import Vfs

KiB = 1024
UNIT = 4096
_ds_seq = iter(range(1_000_000))


def unique_dataset(prefix: str) -> str:
    """A fresh dataset label, so process-global counters start at zero for this test."""
    return f"{prefix}-{os.getpid()}-{next(_ds_seq)}"


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def block_disk_size(url: str, version: str, bs: int, payload: int | None = None) -> int:
    """On-disk (accounted) size of one SSD block file."""
    key = BlockKey(url, version, bs, 0)
    return round_up(blockfile.encoded_size(key, bs if payload is None else payload), UNIT)


def disk_usage(directory: str) -> tuple[int, int]:
    """(apparent bytes rounded to 4 KiB, allocated bytes) of every file under the cache dir."""
    apparent = allocated = 0
    for d, _dirs, files in os.walk(os.path.join(directory, "blocks")):
        for name in files:
            try:
                st = os.stat(os.path.join(d, name))
            except FileNotFoundError:
                continue
            apparent += round_up(st.st_size, UNIT) if st.st_size else 0
            allocated += st.st_blocks * 512
    return apparent, allocated


def check_quotas(cache: TieredCache) -> list[str]:
    """Every quota holds right now: MEM accounted, SSD accounted and SSD bytes really on disk."""
    errors = []
    mem = cache.mem
    if mem.used_bytes() > mem.quota_bytes():
        errors.append(f"mem used {mem.used_bytes()} > quota {mem.quota_bytes()}")
    ssd = cache.ssd
    if isinstance(ssd, SSDTier):
        with ssd._lock:  # freeze admissions/releases while we look at the disk
            used = ssd._used
            apparent, allocated = disk_usage(ssd.directory)
        if not used <= ssd.quota_bytes():
            errors.append(f"ssd accounted {used} > quota {ssd.quota_bytes()}")
        if not (apparent <= used and allocated <= ssd.quota_bytes()):
            errors.append(f"ssd on disk {apparent}/{allocated} vs accounted {used}, quota {ssd.quota_bytes()}")
    return errors


def make_vfs_with_cache(
    mounts: dict[str, Source], cache: TieredCache, *, block_size: int, dataset: str, **cfg_kw: Any
) -> Vfs:
    """A Vfs (no kernel) over ``mounts`` reading through ``cache`` (see tests/test_vfs.py)."""
    cfg = MountConfig(block_size=block_size, memory_size=cache.mem.quota_bytes(), metrics_addr=None, **cfg_kw)
    limiter = trio.CapacityLimiter(8)
    refs = [
        MountRef(
            MountSpec(name=f"m{i}", url=f"memory:///{i}", scheme="file", path=path), AsyncSource(src, dataset, limiter)
        )
        for i, (path, src) in enumerate(mounts.items())
    ]
    ns = Namespace(refs, dataset, cfg.metadata_ttl, cfg.negative_ttl)
    return Vfs(ns, cache, cfg, dataset)


def cache_from_config(tmp: Path | None, dataset: str, **cfg_kw: Any) -> TieredCache:
    """The cache exactly as ``fluidfs mount`` builds it (mountd.build_cache)."""
    cfg = MountConfig(cache_dir=str(tmp) if tmp else None, metrics_addr=None, **cfg_kw)
    return build_cache(SimpleNamespace(name=dataset), cfg)  # type: ignore[arg-type]


async def resolve(vfs: Vfs, path: str) -> int:
    inode = ROOT_INODE
    for part in [p for p in path.split("/") if p]:
        inode = (await vfs.lookup(inode, part)).inode
    return inode


async def read_all(vfs: Vfs, inode: int, chunk: int) -> bytes:
    fh, _ = await vfs.open(inode, os.O_RDONLY)
    out = bytearray()
    try:
        while True:
            data = await vfs.read(fh, len(out), chunk)
            if not data:
                return bytes(out)
            out += data
    finally:
        vfs.release(fh)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------------------ quotas

BS = 16 * KiB


@pytest.mark.parametrize("eviction", ["lru", "none"])
def test_quota_never_exceeded_under_concurrent_fills(tmp_path: Path, eviction: str) -> None:
    """24 tasks fill distinct blocks at once (background SSD writes in flight): after every
    completed read the MEM quota, the SSD quota and the real bytes on disk all hold."""
    files = {f"f{i:02d}": blob(5 * BS + 1000, i) for i in range(12)}  # 6 blocks each, 72 blocks
    counting = CountingSource(MemorySource(files))
    ds = unique_dataset("quota")
    limiter = trio.CapacityLimiter(8)
    asrc = AsyncSource(counting, ds, limiter)
    ssd_quota = 10 * block_disk_size("memory:///f00", "v1", BS)
    mem = MemoryTier(6 * BS, eviction)
    ssd = SSDTier(str(tmp_path / "c"), ssd_quota, eviction=eviction, free_space_floor=0)  # type: ignore[arg-type]
    cache = TieredCache(mem, ssd, dataset=ds, ssd_write_slots=4)
    versions = {p: counting.stat(p).version for p in files}
    errors: list[str] = []
    reads = 0

    async def reader(seed: int) -> None:
        nonlocal reads
        rng = random.Random(seed)
        for _ in range(30):
            path = rng.choice(sorted(files))
            index = rng.randrange(6)
            start, end = index * BS, min((index + 1) * BS, len(files[path]))

            async def fetch(path: str = path, start: int = start, end: int = end) -> bytes:
                return await asrc.read(path, start, end, versions[path])

            data = await cache.get(BlockKey(counting.url(path), versions[path], BS, index), fetch)
            if bytes(data) != files[path][start:end]:
                errors.append(f"{path} block {index}: wrong bytes")
            errors.extend(check_quotas(cache))
            reads += 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache.start(nursery)
            async with trio.open_nursery() as readers:
                for s in range(24):
                    readers.start_soon(reader, s)

    try:
        trio.run(main)
        assert reads == 24 * 30
        assert not errors, errors[:5]
        assert not check_quotas(cache)
        s = ssd.stats()
        assert s["used_bytes"] == disk_usage(ssd.directory)[0] <= ssd_quota
        assert s["corrupt"] == 0 and s["errors"] == 0 and s["puts"] > 0
        if eviction == "lru":
            assert s["evictions"] > 0 and mem.evictions > 0
        else:
            assert s["rejected"] > 0 and s["evictions"] == 0 and mem.rejected > 0
        # what the SSD tier holds is exactly what the source has
        for path, data in files.items():
            for index in range(6):
                got = ssd.get(BlockKey(counting.url(path), versions[path], BS, index))
                assert got is None or bytes(got) == data[index * BS : (index + 1) * BS]
    finally:
        ssd.close()


# ------------------------------------------------------------------------ single flight


def test_single_flight_through_the_tiers(tmp_path: Path) -> None:
    """32 concurrent readers of one cold block → one source read (SSD tier present); with the
    block on SSD only → one SSD read and no source read; then it is served from MEM."""
    bs = 64 * KiB
    data = blob(bs, 1)
    counting = CountingSource(FlakySource(MemorySource({"f": data}), delay=0.05))
    ds = unique_dataset("flight")
    cache = TieredCache(MemoryTier(8 * bs), SSDTier(str(tmp_path / "c"), 1 << 20, free_space_floor=0), dataset=ds)
    ssd = cache.ssd
    assert isinstance(ssd, SSDTier)
    ssd_gets: list[BlockKey] = []
    real_get = ssd.get

    def slow_counting_get(key: BlockKey) -> Any:
        ssd_gets.append(key)
        time.sleep(0.05)  # in a worker thread: every reader joins the flight meanwhile
        return real_get(key)

    ssd.get = slow_counting_get  # type: ignore[method-assign]
    vfs = make_vfs_with_cache({"/": counting}, cache, block_size=bs, dataset=ds, prefetch_memory=0)

    async def readers() -> list[bytes]:
        ino = await resolve(vfs, "/f")
        results: list[bytes] = []

        async def one(i: int) -> None:
            fh, _ = await vfs.open(ino, os.O_RDONLY)
            off = (i * 997) % (bs - 100)
            results.append(bytes(await vfs.read(fh, off, 100)) + off.to_bytes(4, "big"))
            vfs.release(fh)

        async with trio.open_nursery() as n:
            for i in range(32):
                n.start_soon(one, i)
        return results

    def check(results: list[bytes]) -> None:
        assert len(results) == 32
        for r in results:
            off = int.from_bytes(r[-4:], "big")
            assert r[:-4] == data[off : off + 100]

    try:
        check(trio.run(readers))
        assert counting.calls["read"] == 1, counting.reads
        assert len(ssd_gets) == 1  # the leader looked on SSD once (a miss), nobody else did
        key = BlockKey(counting.url("f"), counting.stat("f").version, bs, 0)
        assert cache.tier_of(key) == "mem" and ssd.contains(key)

        cache.mem.discard(key)  # now the block is on SSD only
        assert cache.tier_of(key) == "ssd"
        ssd_gets.clear()
        hits_before = metric("fluidfs_cache_hits_total", dataset=ds, tier="ssd")
        check(trio.run(readers))
        assert counting.calls["read"] == 1, "an SSD-resident block went to the source"
        assert len(ssd_gets) == 1, f"{len(ssd_gets)} SSD reads for one block"
        assert metric("fluidfs_cache_hits_total", dataset=ds, tier="ssd") - hits_before == 1
        assert cache.tier_of(key) == "mem"  # promoted

        ssd_gets.clear()
        check(trio.run(readers))
        assert counting.calls["read"] == 1 and not ssd_gets
    finally:
        ssd.close()


# ------------------------------------------------------------------- failing SSD tier


class BrokenTier:
    """An SSD tier whose disk is gone: every call raises OSError(EIO)."""

    name = "ssd"

    def __init__(self) -> None:
        self.calls = 0

    def get(self, key: BlockKey) -> None:
        self.calls += 1
        raise OSError(5, "Input/output error")

    def put(self, key: BlockKey, data: bytes) -> bool:
        self.calls += 1
        raise OSError(5, "Input/output error")

    def contains(self, key: BlockKey) -> bool:
        return False

    def used_bytes(self) -> int:
        return 0

    def quota_bytes(self) -> int:
        return 1 << 20


def test_failing_ssd_tier_never_fails_reads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fluidfs.cache")
    bs = 16 * KiB
    files = {f"f{i}": blob(3 * bs + 5, 100 + i) for i in range(6)}
    ds = unique_dataset("broken")
    broken = BrokenTier()
    cache = TieredCache(MemoryTier(2 * bs), broken, dataset=ds)  # type: ignore[arg-type]
    vfs = make_vfs_with_cache({"/": MemorySource(files)}, cache, block_size=bs, dataset=ds, prefetch_memory=0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache.start(nursery)
            for _round in range(2):
                for name, data in files.items():
                    assert await read_all(vfs, await resolve(vfs, f"/{name}"), 5000) == data

    trio.run(main)
    assert broken.calls > 20
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("fluidfs.cache")]
    assert len(warnings) == 1 and "SSD cache tier failed" in warnings[0].getMessage(), warnings


# ----------------------------------------------------------------------------- metrics


def test_tier_metrics_follow_the_tiers(tmp_path: Path) -> None:
    """Hits/misses per tier, used bytes, and SSD/MEM evictions and rejections are exported and
    agree with the tiers' own counters."""
    bs = 16 * KiB
    files = {f"f{i:02d}": blob(bs, 200 + i) for i in range(30)}
    counting = CountingSource(MemorySource(files))
    ds_lru, ds_none = unique_dataset("m-lru"), unique_dataset("m-none")
    per_block = block_disk_size("memory:///f00", "v1", bs)

    def run(ds: str, eviction: str) -> TieredCache:
        cache = cache_from_config(
            tmp_path / ds,
            ds,
            block_size=bs,
            memory_size=4 * bs,
            cache_size=10 * per_block,
            eviction=eviction,
            free_space_floor=0,
            prefetch_memory=0,
        )
        vfs = make_vfs_with_cache({"/": counting}, cache, block_size=bs, dataset=ds, prefetch_memory=0)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                cache.start(nursery)
                for _epoch in range(2):
                    for name, data in files.items():
                        assert await read_all(vfs, await resolve(vfs, f"/{name}"), bs) == data

        trio.run(main)
        return cache

    for ds, eviction in ((ds_lru, "lru"), (ds_none, "none")):
        cache = run(ds, eviction)
        ssd = cache.ssd
        assert isinstance(ssd, SSDTier)
        try:
            s = ssd.stats()
            assert metric("fluidfs_cache_hits_total", dataset=ds, tier="ssd") == s["hits"]
            assert metric("fluidfs_cache_misses_total", dataset=ds, tier="ssd") == s["misses"]
            assert metric("fluidfs_cache_used_bytes", dataset=ds, tier="ssd") == s["used_bytes"] > 0
            assert metric("fluidfs_cache_quota_bytes", dataset=ds, tier="ssd") == 10 * per_block
            assert metric("fluidfs_cache_used_bytes", dataset=ds, tier="mem") == cache.mem.used_bytes() > 0
            assert metric("fluidfs_cache_evictions_total", dataset=ds, tier="ssd") == s["evictions"]
            assert metric("fluidfs_cache_rejected_total", dataset=ds, tier="ssd") == s["rejected"]
            assert metric("fluidfs_cache_evictions_total", dataset=ds, tier="mem") == cache.mem.evictions > 0
            lookups = metric("fluidfs_cache_hits_total", dataset=ds, tier="mem") + metric(
                "fluidfs_cache_misses_total", dataset=ds, tier="mem"
            )
            assert lookups == 2 * len(files)
            if eviction == "lru":
                assert s["evictions"] > 0
            else:
                assert s["rejected"] > 0 and s["evictions"] == 0
        finally:
            ssd.close()


# ------------------------------------------------------------------- readahead sharing


def test_two_handles_of_one_file_read_ahead_together() -> None:
    """Regression: a second handle asking to prefetch a block the first handle is already
    prefetching made the prefetch limiter raise RuntimeError (→ EIO for ``cat f & cat f``)."""
    bs = 8 * KiB
    data = blob(12 * bs + 3, 7)
    counting = CountingSource(FlakySource(MemorySource({"f": data}), delay=0.01))
    ds = unique_dataset("ra")
    cache = TieredCache(MemoryTier(64 * bs), None, dataset=ds)
    vfs = make_vfs_with_cache(
        {"/": counting}, cache, block_size=bs, dataset=ds, readahead=4 * bs, prefetch_memory=8 * bs
    )

    async def main() -> list[bytes]:
        async with trio.open_nursery() as background:
            vfs.prefetcher.start(background)
            ino = await resolve(vfs, "/f")
            out: list[bytes] = []

            async def one() -> None:
                out.append(await read_all(vfs, ino, 3000))

            async with trio.open_nursery() as readers:
                for _ in range(4):
                    readers.start_soon(one)
            return out

    results = trio.run(main)
    assert results == [data] * 4
    assert counting.calls["read"] == 13  # every block fetched once, however many handles
    assert metric("fluidfs_readahead_issued_bytes_total", dataset=ds) > 0


def test_open_after_old_handle_read_drops_page_cache() -> None:
    """Regression: a handle opened before an object changed reads old bytes into the inode's
    page cache; the next open must not keep that cache (keep_cache=False), or it would serve
    old pages mixed with new ones."""
    bs = 8 * KiB
    old, new = blob(3 * bs, 1), blob(3 * bs, 2)
    src = MemorySource({"f": old})
    ds = unique_dataset("pagecache")
    cache = TieredCache(MemoryTier(16 * bs), None, dataset=ds)
    vfs = make_vfs_with_cache({"/": src}, cache, block_size=bs, dataset=ds, metadata_ttl=0.0, prefetch_memory=0)

    async def main() -> None:
        ino = await resolve(vfs, "/f")
        fh_old, _ = await vfs.open(ino, os.O_RDONLY)
        assert bytes(await vfs.read(fh_old, 0, bs)) == old[:bs]
        src.put("f", new)
        fh_new, keep = await vfs.open(ino, os.O_RDONLY)
        assert keep is False  # the version changed: drop the kernel's pages
        assert bytes(await vfs.read(fh_new, 0, 3 * bs)) == new
        fh_again, keep = await vfs.open(ino, os.O_RDONLY)
        assert keep is True  # unchanged since the last open, nothing old read meanwhile
        vfs.release(fh_again)
        assert bytes(await vfs.read(fh_old, 0, bs)) == old[:bs]  # old pages enter the page cache
        fh_after, keep = await vfs.open(ino, os.O_RDONLY)
        assert keep is False, "a new open kept a page cache holding the old version's bytes"
        for fh in (fh_old, fh_new, fh_after):
            vfs.release(fh)

    trio.run(main)


def test_handles_of_two_versions_bypass_the_page_cache() -> None:
    """Regression: while a handle of the old version is open (and fills the inode's page cache
    with old bytes), handles of the new version are opened with direct_io."""
    bs = 8 * KiB
    src = MemorySource({"f": blob(bs, 1)})
    ds = unique_dataset("directio")
    cache = TieredCache(MemoryTier(16 * bs), None, dataset=ds)
    vfs = make_vfs_with_cache({"/": src}, cache, block_size=bs, dataset=ds, metadata_ttl=0.0, prefetch_memory=0)

    async def main() -> None:
        ino = await resolve(vfs, "/f")
        a1, _ = await vfs.open(ino, os.O_RDONLY)
        a2, _ = await vfs.open(ino, os.O_RDONLY)
        assert not vfs.direct_io(a1) and not vfs.direct_io(a2)  # one version: page cache is fine
        src.put("f", blob(bs, 2))
        b, _ = await vfs.open(ino, os.O_RDONLY)
        assert vfs.direct_io(b)
        vfs.release(a1)
        c, _ = await vfs.open(ino, os.O_RDONLY)
        assert vfs.direct_io(c)  # a2 (old) is still open
        vfs.release(a2)
        d, _ = await vfs.open(ino, os.O_RDONLY)
        assert not vfs.direct_io(d)  # only the new version is open now
        for fh in (b, c, d):
            vfs.release(fh)
        assert not vfs._open_versions

    trio.run(main)
