"""What the benchmark derives from fluidfs's metrics (source traffic, block and byte hit ratios
between two snapshots) and the facts it records about the machine."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def source_deltas(m0: dict[str, dict[str, float]] | None, m1: dict[str, dict[str, float]] | None) -> dict[str, float]:
    """fluidfs source request/byte counter deltas between two snapshots (empty if unknown)."""
    out: dict[str, float] = {}
    if m0 is not None and m1 is not None:
        for name in ("fluidfs_source_requests_total", "fluidfs_source_bytes_total"):
            if name in m1:
                out[name] = m1[name][""] - m0.get(name, {}).get("", 0.0)
    return out


def tier_delta(
    m0: dict[str, dict[str, float]] | None, m1: dict[str, dict[str, float]] | None, name: str, tier: str
) -> float | None:
    """The change of counter ``name`` for ``tier`` between two snapshots (None if unknown)."""
    if m0 is None or m1 is None or name not in m1:
        return None
    key = f"tier={tier}"
    return m1[name].get(key, 0.0) - m0.get(name, {}).get(key, 0.0)


def hit_ratios(
    m0: dict[str, dict[str, float]] | None, m1: dict[str, dict[str, float]] | None, bytes_read: int
) -> tuple[float | None, float | None]:
    """(block hit ratio, byte hit ratio) between two metric snapshots; None where unknown."""
    if m0 is None or m1 is None:
        return None, None

    def delta(name: str, key: str = "") -> float | None:
        if name not in m1:
            return None
        return m1[name].get(key, 0.0) - m0.get(name, {}).get(key, 0.0)

    hr = None
    hits = delta("fluidfs_cache_hits_total")
    if hits is not None and "fluidfs_cache_misses_total" in m1:
        tiers = [k for k in m1["fluidfs_cache_misses_total"] if k.startswith("tier=")]
        misses = [delta("fluidfs_cache_misses_total", t) or 0.0 for t in tiers] or [
            delta("fluidfs_cache_misses_total") or 0.0
        ]
        lowest = min(misses)
        hr = hits / (hits + lowest) if hits + lowest > 0 else None
    bhr = None
    src = delta("fluidfs_source_bytes_total")
    read = delta("fluidfs_fuse_read_bytes_total") or bytes_read
    if src is not None and read:
        bhr = max(0.0, 1.0 - src / read)
    return hr, bhr


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    load = ""
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[:3]  # type: ignore[assignment]
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_end": load,
    }
