"""``fluidfs status``: the metrics summary (unit), and a real mount's configuration, tiers, hit
ratios, source traffic and % cached; a non-mount is refused with one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.fuse import Mount, fluidfs, needs_fuse


def test_status_of_a_non_mount(tmp_path: Path) -> None:
    for target in (str(tmp_path), str(tmp_path / "missing")):
        res = fluidfs("status", target)
        assert res.returncode == 1, res.stderr
        assert res.stderr.strip() == f"fluidfs: error: {target} is not a fluidfs mount"
        assert res.stdout == ""


@needs_fuse
def test_status_of_a_mount(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "two.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    (src / "other.bin").write_bytes(os.urandom(1024 * 1024))
    cache = tmp_path / "cache"
    with Mount(
        str(src),
        str(tmp_path / "mnt"),
        "--cache-dir",
        str(cache),
        "--block-size",
        "1Mi",
        "--metadata-ttl",
        "indefinite",
        "--memory-size",
        "64Mi",
    ) as m:
        with open(os.path.join(m.mnt, "dir", "two.bin"), "rb") as f:
            assert len(f.read()) == 2 * 1024 * 1024 + 5
        res = fluidfs("status", "--json", m.mnt)
        assert res.returncode == 0, res.stderr
        st = json.loads(res.stdout)
        assert st["mountpoint"] == m.mnt and st["pid"] == m.record()["pid"]
        assert st["sources"] == [f"file://{src}"] and st["metrics_url"].startswith("http://127.0.0.1:")
        assert st["uptime_seconds"] is not None and st["uptime_seconds"] >= 0
        cfg = st["config"]
        assert cfg["cache_dir"] == str(cache) and cfg["block_size"] == 1 << 20
        assert cfg["metadata_ttl"] == "indefinite" and cfg["eviction"] == "none"
        mem, ssd = st["tiers"]["mem"], st["tiers"]["ssd"]
        assert mem["quota_bytes"] == 64 << 20 and ssd["quota_bytes"] == 10 << 30
        assert mem["used_bytes"] >= 2 * 1024 * 1024 + 5 and mem["misses"] >= 3
        assert st["source"]["bytes"] >= 2 * 1024 * 1024 + 5 and st["source"]["requests_by_op"]["read"] >= 3
        assert set(st["readahead"]) == {"issued", "used", "wasted"}
        c = st["cached"]
        assert c["files"] == 2 and c["bytes"] == 3 * 1024 * 1024 + 5
        assert c["cached_bytes"] >= 2 * 1024 * 1024 + 5 and c["fully_cached_files"] >= 1
        # the whole file we read is cached; of the directory, 100%
        sub = json.loads(fluidfs("status", "--json", m.mnt, "dir").stdout)["cached"]
        assert sub["fraction"] == 1.0 and sub["files"] == 1 and sub["paths"] == ["/dir"]
        # read again: memory hits show up in the hit ratios
        with open(os.path.join(m.mnt, "dir", "two.bin"), "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            f.read()
        st2 = json.loads(fluidfs("status", "--json", m.mnt).stdout)
        hits = st2["tiers"]["mem"]["hits"] + st2["tiers"]["ssd"]["hits"]
        lookups = st2["tiers"]["mem"]["hits"] + st2["tiers"]["mem"]["misses"]
        assert st2["hit_ratio"] == pytest.approx(hits / lookups)
        text = fluidfs("status", m.mnt, "dir")
        assert text.returncode == 0, text.stderr
        for part in (
            "dataset",
            "sources",
            "block size 1 MiB",
            "metadata TTL indefinite",
            "mem ",
            "ssd ",
            "overall hit ratio",
            "source ",
            "readahead",
            "100.0% of 2 MiB",
            "1/1 files fully cached",
        ):
            assert part in text.stdout, (part, text.stdout)
        bad = fluidfs("status", m.mnt, "nope")
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
