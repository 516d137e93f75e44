#!/usr/bin/env python3
"""Benchmark the SSD tier's start-up index rebuild (and put/get cost) on N block files.

    python -m tools.cache_index_bench --blocks 100000                 # 4 KiB payloads
    python -m tools.cache_index_bench --blocks 10000 --payload 1MiB --drop-caches

Creates N blocks with ``SSDTier.put`` in a fresh directory (default: a temp dir next to /tmp),
then times constructing a new ``SSDTier`` on it -- the index rebuild a mount does after a restart
-- with ``scan="stat"`` (the default: one stat per file, headers checked lazily on get) and
``scan="headers"`` (read and validate every header up front).  With ``--drop-caches`` (root) each
rebuild also runs after ``echo 3 > /proc/sys/vm/drop_caches``, the after-reboot case.  Also
reports put and get throughput, the index's memory per block and CRC-32 (stdlib and zlib-ng) vs
BLAKE2b speed.
Prints a table; removes the directory afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
import zlib

from fluidfs.cache import blockfile
from fluidfs.cache.base import BlockKey
from fluidfs.cache.ssd import SSDTier
from fluidfs.util.proc import drop_page_cache as drop_caches
from fluidfs.util.sizes import parse_size


def keys(n: int, block_size: int) -> list[BlockKey]:
    return [
        BlockKey(f"s3://bench/shard-{i // 64:05d}.tar", "etag-0123456789abcdef", block_size, i % 64) for i in range(n)
    ]


def open_tier(d: str, scan: str) -> tuple[SSDTier, float]:
    t0 = time.perf_counter()
    tier = SSDTier(d, 1 << 50, free_space_floor=0, scan=scan)  # type: ignore[arg-type]
    return tier, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=100_000)
    ap.add_argument("--payload", default="4KiB", help="payload bytes per block (e.g. 4KiB, 1MiB)")
    ap.add_argument("--dir", help="parent directory for the cache (default: system temp dir)")
    ap.add_argument("--drop-caches", action="store_true", help="also time cold rebuilds (root)")
    ap.add_argument("--gets", type=int, default=10_000, help="random gets to time")
    ap.add_argument("--keep", action="store_true", help="keep the cache directory")
    a = ap.parse_args()
    size = parse_size(a.payload)
    root = tempfile.mkdtemp(prefix="fluidfs-index-bench-", dir=a.dir)
    d = os.path.join(root, "cache")
    rows: list[tuple[str, str, str]] = []
    try:
        ks = keys(a.blocks, max(size, 4096))
        data = random.Random(0).randbytes(size)
        tier = SSDTier(d, 1 << 50, free_space_floor=0)
        t0 = time.perf_counter()
        for k in ks:
            tier.put(k, data)
        dt = time.perf_counter() - t0
        rows.append(
            (
                "put (write tmp + rename)",
                f"{dt:.2f} s",
                f"{a.blocks / dt:,.0f} blocks/s, {a.blocks * size / dt / 1e6:,.0f} MB/s",
            )
        )
        used = tier.used_bytes()
        sample = random.Random(1).sample(ks, min(a.gets, len(ks)))
        t0 = time.perf_counter()
        for k in sample:
            assert tier.get(k) is not None
        dt = time.perf_counter() - t0
        rows.append(
            (
                "get (read + validate), warm",
                f"{dt / len(sample) * 1e6:.0f} us/get",
                f"{len(sample) / dt:,.0f} blocks/s, {len(sample) * size / dt / 1e6:,.0f} MB/s",
            )
        )
        tier.close()

        for scan in ("stat", "headers"):
            for cold in (True, False):  # cold first; the warm run follows a warm-up pass
                if cold and not (a.drop_caches and drop_caches()):
                    continue
                if not cold:
                    open_tier(d, scan)[0].close()
                tier, dt = open_tier(d, scan)
                assert tier.stats()["blocks"] == a.blocks and tier.used_bytes() == used
                tier.close()
                rows.append(
                    (
                        f"rebuild scan={scan}, {'cold (drop_caches)' if cold else 'warm'}",
                        f"{dt:.3f} s",
                        f"{a.blocks / dt:,.0f} blocks/s",
                    )
                )

        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        tier, _ = open_tier(d, "stat")
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        mem = sum(s.size_diff for s in after.compare_to(before, "filename"))
        tier.close()
        rows.append(("index memory", f"{mem / 1e6:.1f} MB", f"{mem / a.blocks:.0f} bytes/block"))

        buf = random.Random(2).randbytes(max(size, 4096))
        for name, fn in (
            ("crc32 (stdlib zlib)", lambda: zlib.crc32(buf)),
            ("crc32 (zlib-ng, blockfile.checksum)", lambda: blockfile.checksum(buf)),
            ("blake2b-128", lambda: hashlib.blake2b(buf, digest_size=16).digest()),
        ):
            reps = max(3, (64 << 20) // len(buf))
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            dt = time.perf_counter() - t0
            rows.append(
                (
                    f"checksum {name} of {len(buf)} B",
                    f"{dt / reps * 1e6:.1f} us",
                    f"{reps * len(buf) / dt / 1e9:.2f} GB/s",
                )
            )
    finally:
        if a.keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nSSD tier index bench: {a.blocks:,} blocks x {size:,} B payload in {d}")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'measure':<{w0}}  {'time':>{w1}}  rate")
    print(f"{'-' * w0}  {'-' * w1}  {'-' * 30}")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
