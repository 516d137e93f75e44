"""Eviction policies by training epochs, through the VFS with the cache exactly as
``fluidfs mount`` builds it: a dataset twice the cache, every file read once per epoch in a
fresh (seeded) shuffled order, 3 epochs.

With ``none`` (keep what is there once full) epochs 2–3 hit at cache/dataset = 0.5.  With
``lru`` each epoch's misses evict the blocks the rest of the epoch is about to read: under
per-epoch reshuffling the expected hit ratio is ≈ 0.12 at cache/dataset = 0.5 (simulation:
mean 0.122, sd 0.015 for 400 files), and exactly 0 when every epoch reads in the same order.
A hit is a file read that caused no source read (CountingSource).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

from fluidfs.cache.ssd import SSDTier
from fluidfs.testing import CountingSource, MemorySource
from tests.test_cache_tiered import (
    block_disk_size,
    blob,
    cache_from_config,
    make_vfs_with_cache,
    metric,
    read_all,
    resolve,
    unique_dataset,
)

BS = 4096  # one block per file; the policy, not the block size, is under test
FILES = 400  # dataset = 2 × cache
CACHE_BLOCKS = FILES // 2
EPOCHS = 3


def run_epochs(tmp: Path | None, eviction: str, *, shuffle: bool = True, seed: int = 1) -> tuple[list[float], Any]:
    """Hit ratio of each epoch, and the cache (closed)."""
    files = {f"train/s{i:04d}": blob(BS, i) for i in range(FILES)}
    counting = CountingSource(MemorySource(files))
    ds = unique_dataset(f"epochs-{eviction}")
    if tmp is not None:  # MEM (2 blocks, lru as build_cache makes it) in front of an SSD of CACHE_BLOCKS
        per_block = block_disk_size(counting.url("train/s0000"), "v100", BS)
        cache = cache_from_config(
            tmp,
            ds,
            block_size=BS,
            memory_size=2 * BS,
            cache_size=CACHE_BLOCKS * per_block,
            eviction=eviction,
            free_space_floor=0,
        )
    else:  # memory only: the MEM tier is the cache and follows the policy
        cache = cache_from_config(None, ds, block_size=BS, memory_size=CACHE_BLOCKS * BS, eviction=eviction)
    vfs = make_vfs_with_cache({"/": counting}, cache, block_size=BS, dataset=ds, prefetch_memory=0)
    rng = random.Random(seed)
    ratios: list[float] = []

    async def main() -> None:
        inodes = {name: await resolve(vfs, "/" + name) for name in files}
        order = sorted(files)
        async with trio.open_nursery() as nursery:
            cache.start(nursery)
            for _epoch in range(EPOCHS):
                if shuffle:
                    rng.shuffle(order)
                hits = 0
                for name in order:
                    before = counting.calls["read"]
                    assert await read_all(vfs, inodes[name], BS) == files[name]
                    hits += counting.calls["read"] == before
                    await trio.sleep(0)  # let the background SSD write land before the next read
                ratios.append(hits / len(order))

    try:
        trio.run(main)
        # the tiers' own counters agree with the source-read counting
        lookups = FILES * EPOCHS
        tier_hits = metric("fluidfs_cache_hits_total", dataset=ds, tier="mem") + metric(
            "fluidfs_cache_hits_total", dataset=ds, tier="ssd"
        )
        assert tier_hits == round(sum(ratios) * FILES)
        assert (
            metric("fluidfs_cache_misses_total", dataset=ds, tier="mem")
            + metric("fluidfs_cache_hits_total", dataset=ds, tier="mem")
            == lookups
        )
        if isinstance(cache.ssd, SSDTier):
            assert cache.ssd.used_bytes() <= cache.ssd.quota_bytes()
        assert cache.mem.used_bytes() <= cache.mem.quota_bytes()
    finally:
        if isinstance(cache.ssd, SSDTier):
            cache.ssd.close()
    return ratios, cache


@pytest.fixture(scope="module")
def ssd_ratios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[float]]:
    return {ev: run_epochs(tmp_path_factory.mktemp(f"ssd-{ev}"), ev)[0] for ev in ("none", "lru")}


def test_none_keeps_hit_ratio_at_cache_over_dataset(ssd_ratios: dict[str, list[float]]) -> None:
    none = ssd_ratios["none"]
    print(f"SSD tier, shuffled epochs: none={none} lru={ssd_ratios['lru']}")
    assert none[0] == 0.0
    for r in none[1:]:
        assert 0.4 <= r <= 0.55, none  # cache/dataset = 0.5 (+ at most the 2 MEM blocks)


def test_lru_falls_well_below_none_under_reshuffling(ssd_ratios: dict[str, list[float]]) -> None:
    none, lru = ssd_ratios["none"], ssd_ratios["lru"]
    assert lru[0] == 0.0
    for r_lru, r_none in zip(lru[1:], none[1:]):
        assert r_lru <= 0.2, lru  # expected ≈ 0.12 (see the module docstring)
        assert r_lru < r_none - 0.25, (lru, none)
    assert sum(lru[1:]) / 2 <= 0.15, lru


def test_lru_hits_nothing_when_epochs_repeat_the_order(tmp_path: Path) -> None:
    lru, _ = run_epochs(tmp_path / "lru", "lru", shuffle=False)
    none, _ = run_epochs(tmp_path / "none", "none", shuffle=False)
    print(f"SSD tier, same order every epoch: none={none} lru={lru}")
    assert lru[1:] == [0.0, 0.0], lru
    assert all(r >= 0.4 for r in none[1:]), none


def test_memory_only_none_keeps_hit_ratio() -> None:
    none, cache = run_epochs(None, "none")
    lru, _ = run_epochs(None, "lru")
    print(f"MEM only, shuffled epochs: none={none} lru={lru}")
    assert cache.ssd is None
    assert none[0] == 0.0 and all(0.45 <= r <= 0.55 for r in none[1:]), none
    assert all(r_lru < r_none - 0.25 for r_lru, r_none in zip(lru[1:], none[1:])), (lru, none)
