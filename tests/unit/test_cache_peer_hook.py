"""TieredCache's peer hook: asked after memory and SSD, before the source; single-flight kept;
a failing peer tier never fails a read (and is counted); placement decides where copies go."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY

from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache

_seq = itertools.count()
BS = 64 * 1024


class FakePeer:
    def __init__(self, blocks: dict[BlockKey, bytes], where: str = "memory", fail: bool = False) -> None:
        self.blocks = blocks
        self.where = where
        self.fail = fail
        self.calls = 0

    async def get(self, key: BlockKey) -> Buffer | None:
        self.calls += 1
        await trio.sleep(0.05)
        if self.fail:
            raise RuntimeError("peer tier exploded")
        data = self.blocks.get(key)
        return memoryview(bytearray(data)) if data is not None else None

    def placement(self, key: BlockKey) -> str:
        return self.where


def key(i: int) -> BlockKey:
    return BlockKey("file:///d/x", "v1", BS, i)


def ds() -> str:
    return f"hook-{os.getpid()}-{next(_seq)}"


@pytest.mark.parametrize("where", ["memory", "ssd", "none"])
def test_peer_before_source_single_flight_and_placement(tmp_path: Path, where: str) -> None:
    name = ds()
    blocks = {key(0): os.urandom(BS), key(1): os.urandom(BS)}
    ssd = SSDTier(str(tmp_path / "ssd"), 8 << 20, free_space_floor=0)
    cache = TieredCache(MemoryTier(4 << 20), ssd, dataset=name)
    peer = FakePeer({key(0): blocks[key(0)]}, where)
    cache.attach_peer(peer)
    fetches = 0

    async def fetch() -> bytes:
        nonlocal fetches
        fetches += 1
        return blocks[key(1)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache.start(nursery)
            got: list[bytes] = []

            async def one() -> None:
                got.append(bytes(await cache.get(key(0), fetch)))

            async with trio.open_nursery() as readers:
                for _ in range(5):
                    readers.start_soon(one)
            assert got == [blocks[key(0)]] * 5
            assert peer.calls == 1 and fetches == 0 and cache.peer_fetches == 1
            # a block no peer has: the source, once
            assert bytes(await cache.get(key(1), fetch)) == blocks[key(1)]
            assert fetches == 1 and peer.calls == 2
            # local hits never ask the peer
            await cache.get(key(1), fetch)
            assert peer.calls == 2
        # (the nursery waited for the background SSD writes)
        assert cache.mem.contains(key(0)) is (where != "none")
        assert ssd.contains(key(0)) is (where == "ssd")

    trio.run(main)
    assert REGISTRY.get_sample_value("fluidfs_cache_hits_total", {"dataset": name, "tier": "peer"}) == 1
    assert REGISTRY.get_sample_value("fluidfs_cache_misses_total", {"dataset": name, "tier": "peer"}) == 1
    ssd.close()


def test_a_failing_peer_tier_never_fails_a_read(caplog: pytest.LogCaptureFixture) -> None:
    name = ds()
    data = os.urandom(BS)
    cache = TieredCache(MemoryTier(4 << 20), dataset=name)
    peer = FakePeer({}, fail=True)
    cache.attach_peer(peer)

    async def fetch() -> bytes:
        return data

    async def main() -> None:
        for i in range(3):
            assert bytes(await cache.get(key(i), fetch)) == data

    trio.run(main)
    assert peer.calls == 3 and cache.source_fetches == 3
    assert REGISTRY.get_sample_value("fluidfs_cache_misses_total", {"dataset": name, "tier": "peer"}) == 3
    assert sum("peer tier failed" in r.getMessage() for r in caplog.records) == 1  # logged once
    cache.attach_peer(None)
    assert cache.peer is None


def test_lookup_and_admit(tmp_path: Path) -> None:
    ssd = SSDTier(str(tmp_path / "ssd"), 8 << 20, free_space_floor=0)
    cache = TieredCache(MemoryTier(4 << 20), ssd, dataset=ds())
    mem_only = TieredCache(MemoryTier(4 << 20), dataset=ds())
    data = os.urandom(1000)

    async def main() -> None:
        assert await cache.lookup(key(0)) is None
        assert await cache.admit(key(0), memoryview(data))
        assert ssd.contains(key(0)) and not cache.mem.contains(key(0))
        assert bytes(await cache.lookup(key(0)) or b"") == data
        assert await mem_only.admit(key(0), data)
        assert bytes(await mem_only.lookup(key(0)) or b"") == data

    trio.run(main)
    ssd.close()
