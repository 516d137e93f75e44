#!/usr/bin/env python3
"""Where the time of one cache block goes on the SSD tier's read and write paths (in-process).

    python -m tools.block_path_bench                           # 64 blocks of 4 MiB
    python -m tools.block_path_bench --blocks 128 --drop-caches  # also disk reads (root)

Times every step a block takes, per block (median and 90th percentile over the blocks):

- the checksum of one block: the standard library's ``zlib.crc32``, ``blockfile.checksum``
  (CRC-32 by zlib-ng) and, when installed, CRC-32C (``google-crc32c``: ``bytes`` only;
  ``crc32c``) -- the candidates for the block file format;
- a fresh block-sized buffer filled once (allocation and page faults: what every read into a
  new buffer pays) and a copy of a block into new ``bytes`` (what promoting an SSD block into
  the memory tier cost before the memory tier adopted buffers);
- a pooled block buffer (``fluidfs.util.buffers``) filled once: the buffer a block is read into;
- ``SSDTier.put`` (header, CRC, ``pwritev``, rename) and ``SSDTier.get`` through the page cache
  and with ``O_DIRECT``, page cache warm and, with ``--drop-caches`` (root), dropped;
- the previous read path, for comparison in the same run: ``os.read`` of the whole file, CRC-32
  by ``zlib`` and the ``bytes`` copy of the payload into the memory tier;
- ``TieredCache.get`` of a block held only by the SSD tier, from a trio task (worker thread
  hop, ``SSDTier.get``, memory-tier admission and eviction).

Allocations behave as in the mount daemon (``tune_malloc``).  Prints a table; the numbers go to
docs/cache.md, never into tests.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import TypeVar

import trio

from fluidfs.cache import blockfile
from fluidfs.cache.base import BlockKey
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.daemon.tiers import tune_malloc
from fluidfs.util.buffers import block_buffer
from fluidfs.util.proc import drop_page_cache
from fluidfs.util.sizes import parse_size

Row = tuple[str, str, str, str]
T = TypeVar("T")


def keys(n: int, block_size: int) -> list[BlockKey]:
    return [BlockKey("s3://bench/shard-00000.tar", "etag-0123456789abcdef", block_size, i) for i in range(n)]


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def each(fn: Callable[[T], object], items: list[T]) -> list[float]:
    """Time ``fn(item)`` for every item."""
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t0)
    return out


def row(what: str, times: list[float], nbytes: int) -> Row:
    med = statistics.median(times)
    p90 = sorted(times)[int(0.9 * (len(times) - 1))]
    return (what, f"{med * 1e3:.3f}", f"{p90 * 1e3:.3f}", f"{nbytes / med / 1e9:.2f}")


def checksums(payload: bytes, reps: int) -> list[Row]:
    rows = [
        row("checksum: zlib.crc32 (stdlib)", timed(lambda: zlib.crc32(payload), reps), len(payload)),
        row(
            "checksum: blockfile.checksum (zlib-ng CRC-32)",
            timed(lambda: blockfile.checksum(payload), reps),
            len(payload),
        ),
    ]
    try:  # optional: the CRC-32C candidates (not dependencies of fluidfs)
        import google_crc32c  # type: ignore[import-not-found, unused-ignore]

        rows.append(
            row("checksum: google-crc32c (bytes only)", timed(lambda: google_crc32c.value(payload), reps), len(payload))
        )
    except ImportError:
        rows.append(("checksum: google-crc32c", "not installed", "", ""))
    try:
        import crc32c  # type: ignore[import-not-found, unused-ignore]

        rows.append(row("checksum: crc32c", timed(lambda: crc32c.crc32c(payload), reps), len(payload)))
    except ImportError:
        rows.append(("checksum: crc32c", "not installed", "", ""))
    return rows


def previous_get(path: str) -> bytes:
    """The read path before this work: whole file into bytes, zlib CRC-32, payload copied."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    view = memoryview(data)[blockfile.decode_header(data).header_len :]
    zlib.crc32(view)
    return bytes(view)


def fill(buf: memoryview, payload: bytes) -> None:
    buf[:] = payload


async def tiered_gets(ssd: SSDTier, ks: list[BlockKey], block_size: int) -> list[float]:
    cache = TieredCache(MemoryTier(2 * block_size), ssd, dataset="block-path-bench")

    async def never() -> bytes:
        raise AssertionError("the block should come from the SSD tier")

    out = []
    for k in ks:
        t0 = time.perf_counter()
        await cache.get(k, never)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--block-size", default="4MiB")
    ap.add_argument("--dir", help="parent directory of the cache (default: system temp dir)")
    ap.add_argument("--drop-caches", action="store_true", help="also time gets after drop_caches (root)")
    a = ap.parse_args()
    tune_malloc()  # allocate like the mount daemon does
    bs = parse_size(a.block_size)
    root = tempfile.mkdtemp(prefix="fluidfs-block-path-", dir=a.dir)
    rows: list[Row] = []
    try:
        payload = random.Random(0).randbytes(bs)
        ks = keys(a.blocks, bs)
        rows += checksums(payload, a.blocks)
        rows.append(
            row(
                "fresh buffer, filled once",
                timed(lambda: bytearray(bs).__setitem__(slice(None), payload), a.blocks),
                bs,
            )
        )
        view = memoryview(payload)
        rows.append(row("copy into new bytes (old promotion)", timed(lambda: bytes(view), a.blocks), bs))

        rows.append(
            row("pooled block buffer, filled once", timed(lambda: fill(block_buffer(bs), payload), a.blocks), bs)
        )

        cache_dir = os.path.join(root, "cache")
        ssd = SSDTier(cache_dir, 1 << 50, free_space_floor=0)
        rows.append(row("SSDTier.put (CRC, pwritev, rename)", each(lambda k: ssd.put(k, payload), ks), bs))
        modes = (False, True) if ssd.direct_io else (False,)
        ssd.close()
        paths = [os.path.join(ssd.directory, "blocks", k.digest[:2], k.digest) for k in ks]
        for cold in (False, True):
            if cold and not (a.drop_caches and drop_page_cache()):
                continue
            label = "page cache dropped" if cold else "page cache warm"
            for direct in modes:
                with SSDTier(cache_dir, 1 << 50, free_space_floor=0, direct_io=direct) as tier:
                    if cold:
                        drop_page_cache()
                    else:
                        for k in ks:  # warm up
                            tier.get(k)
                    how = "O_DIRECT (never cached)" if direct else "buffered"
                    rows.append(row(f"SSDTier.get {how}, {label}", each(tier.get, ks), bs))
            if cold:
                drop_page_cache()
            rows.append(row(f"previous get path, {label}", each(previous_get, paths), bs))
        with SSDTier(cache_dir, 1 << 50, free_space_floor=0) as tier:
            rows.append(row("TieredCache.get from the SSD tier (trio)", trio.run(tiered_gets, tier, ks, bs), bs))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nblock path bench: {a.blocks} blocks x {bs:,} B; load average {os.getloadavg()[0]:.1f}")
    heads = ("step (per block)", "median ms", "p90 ms", "GB/s")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
