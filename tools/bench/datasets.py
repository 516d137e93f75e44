"""Deterministic, seeded benchmark datasets, uploaded to the store and mirrored to a local dir.

Three sets, each under its own key prefix (and local subdirectory):

- ``large/``: ``large_files`` shards of ``large_size`` bytes (``shard-00000.bin``, ...);
- ``small/``: ``small_files`` ImageNet-like files in ``classes`` folders, sizes drawn around
  ``small_size`` (±25 %, uniform);
- ``meta/``: ``meta_files`` tiny objects (16-256 bytes) in 100 folders.

The same (spec, seed) always gives the same names, sizes and bytes.  The local mirror is what
the ``local`` system reads (the storage limit).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PREFIXES = ("large", "small", "meta")


@dataclass(frozen=True)
class DataSpec:
    large_files: int = 4
    large_size: int = 256 << 20
    small_files: int = 10000
    small_size: int = 110 << 10
    classes: int = 100
    meta_files: int = 100000
    meta_dirs: int = 100
    seed: int = 1234


@dataclass(frozen=True)
class FileEntry:
    key: str  # "large/shard-00000.bin" (relative to the bucket, and to the local root)
    size: int


def plan(spec: DataSpec, which: str) -> list[FileEntry]:
    """The file list of one set (names and sizes only; cheap)."""
    rng = random.Random(f"{spec.seed}:{which}")
    if which == "large":
        return [FileEntry(f"large/shard-{i:05d}.bin", spec.large_size) for i in range(spec.large_files)]
    if which == "small":
        lo, hi = int(spec.small_size * 0.75), int(spec.small_size * 1.25)
        classes = max(1, spec.classes)
        return [
            FileEntry(f"small/class-{i % classes:03d}/img-{i:06d}.jpg", rng.randint(lo, hi))
            for i in range(spec.small_files)
        ]
    if which == "meta":
        dirs = max(1, spec.meta_dirs)
        return [
            FileEntry(f"meta/dir-{i % dirs:03d}/f-{i:06d}.txt", rng.randint(16, 256)) for i in range(spec.meta_files)
        ]
    raise ValueError(which)


def content(spec: DataSpec, entry: FileEntry) -> bytes:
    """The bytes of one file: seeded pseudo-random (incompressible)."""
    seed = int.from_bytes(hashlib.sha256(f"{spec.seed}:{entry.key}".encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(entry.size)


def total_bytes(entries: list[FileEntry]) -> int:
    return sum(e.size for e in entries)


def generate(
    spec: DataSpec,
    which: list[str],
    client: Any,
    bucket: str,
    local_root: Path,
    threads: int = 16,
) -> dict[str, list[FileEntry]]:
    """Write the sets to ``local_root`` and upload them to ``bucket``; return the plans.

    A set whose local mirror already matches this spec (a ``.spec.json`` marker) is not
    rewritten locally, but is always uploaded (the store is fresh each run).
    """
    out: dict[str, list[FileEntry]] = {}
    for name in which:
        entries = plan(spec, name)
        out[name] = entries
        marker = local_root / f".{name}.spec.json"
        want = json.dumps(asdict(spec), sort_keys=True)
        local_ok = marker.exists() and marker.read_text() == want

        def one(entry: FileEntry, local_ok: bool = local_ok) -> None:
            path = local_root / entry.key
            if local_ok:
                data = path.read_bytes()
            else:
                data = content(spec, entry)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            client.put_object(Bucket=bucket, Key=entry.key, Body=data)

        if not local_ok and marker.exists():
            marker.unlink()
        # Large objects are few and big: fewer threads keep memory bounded.
        n = min(threads, 4) if name == "large" else threads
        with cf.ThreadPoolExecutor(n) as pool:
            for fut in [pool.submit(one, e) for e in entries]:
                fut.result()
        marker.write_text(want)
    return out
