"""Helpers shared by the cache component tests: fresh dataset labels, blobs, on-disk block sizes,
quota checks, a Vfs without a kernel over a given cache, and metric lookups."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio
from prometheus_client import REGISTRY

from fluidfs.cache import blockfile
from fluidfs.cache.base import BlockKey
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.ssdlayout import round_up
from fluidfs.cache.tiered import TieredCache
from fluidfs.config import MountConfig
from fluidfs.daemon.tiers import build_cache
from fluidfs.fs.namespace import ROOT_INODE, MountRef, Namespace
from fluidfs.fs.vfs import Vfs
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Source
from fluidfs.spec.model import MountSpec

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
    """A Vfs (no kernel) over ``mounts`` reading through ``cache`` (see tests/component/test_vfs.py)."""
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
    """The cache exactly as ``fluidfs mount`` builds it (fluidfs.daemon.tiers.build_cache)."""
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
