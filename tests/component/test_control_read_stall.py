"""The data path's autoscaler signals: read() time spent waiting on blocks no local tier held
(``fluidfs_fuse_read_stall_seconds_total``, ``fluidfs_fuse_read_stalls_total``) counts misses
only, and the controller's parser reads it from the real exposition text."""

from __future__ import annotations

import os
import time

import trio
from prometheus_client import REGISTRY, generate_latest

from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.config import MountConfig
from fluidfs.control import signals
from fluidfs.fs.namespace import ROOT_INODE, MountRef, Namespace
from fluidfs.fs.vfs import Vfs
from fluidfs.sources.aio import AsyncSource
from fluidfs.spec.model import MountSpec
from tests.support.doubles import MemorySource

MiB = 1 << 20
DATASET = "stall-test"


class SlowSource(MemorySource):  # type: ignore[misc]
    """A source whose reads take 50 ms (runs in a worker thread, like boto3)."""

    def read(self, *args: object, **kwargs: object) -> bytes:
        time.sleep(0.05)
        return super().read(*args, **kwargs)  # type: ignore[no-any-return]


def value(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"dataset": DATASET}) or 0.0


def test_stall_counts_waits_on_misses_only() -> None:
    src = SlowSource({"f": os.urandom(4 * MiB)})
    cfg = MountConfig(block_size=1 * MiB, metrics_addr=None, memory_size=64 * MiB, readahead=0)
    ref = MountRef(MountSpec(name="m", url="memory:///m", scheme="file", path="/"),
                   AsyncSource(src, DATASET, trio.CapacityLimiter(4)))  # fmt: skip
    ns = Namespace([ref], DATASET, cfg.metadata_ttl, cfg.negative_ttl)
    vfs = Vfs(ns, TieredCache(MemoryTier(cfg.memory_size, cfg.eviction), None, dataset=DATASET), cfg, DATASET)
    before = value("fluidfs_fuse_read_stall_seconds_total"), value("fluidfs_fuse_read_stalls_total")

    async def main() -> tuple[float, float]:
        inode = (await vfs.lookup(ROOT_INODE, "f")).inode
        fh, _ = await vfs.open(inode, os.O_RDONLY)
        for off in range(0, 4 * MiB, 256 * 1024):  # cold: 4 blocks fetched, each waited for once
            await vfs.read(fh, off, 256 * 1024)
        cold = value("fluidfs_fuse_read_stall_seconds_total"), value("fluidfs_fuse_read_stalls_total")
        for off in range(0, 4 * MiB, 256 * 1024):  # warm: served from memory, no stall
            await vfs.read(fh, off, 256 * 1024)
        vfs.release(fh)
        return cold

    cold = trio.run(main)
    stall, stalls = cold[0] - before[0], cold[1] - before[1]
    assert stalls == 4
    assert stall >= 4 * 0.045  # each miss waited for the 50 ms source read
    after = value("fluidfs_fuse_read_stall_seconds_total"), value("fluidfs_fuse_read_stalls_total")
    assert after == cold  # the warm pass added nothing

    target = signals.Target("m", signals.CLIENT, "node", "http://x/metrics")
    snap = signals.snapshot(target, generate_latest(REGISTRY).decode(), DATASET, 1.0)
    assert snap.counters["stall_seconds"] == after[0]
