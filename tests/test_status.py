"""``fluidfs status``: the metrics summary (unit), and a real mount's configuration, tiers, hit
ratios, source traffic and % cached; a non-mount is refused with one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fluidfs.status import iter_files, metrics_summary, resolve_paths
from tests.fusehelp import Mount, fluidfs, needs_fuse


def sample(name: str, value: float, **labels: str) -> tuple[str, dict[str, str], float]:
    return name, {"dataset": "d", **labels}, value


def test_metrics_summary_hit_ratios_and_source() -> None:
    s = [
        sample("fluidfs_cache_hits_total", 30, tier="mem"),
        sample("fluidfs_cache_misses_total", 70, tier="mem"),
        sample("fluidfs_cache_hits_total", 50, tier="ssd"),
        sample("fluidfs_cache_misses_total", 20, tier="ssd"),
        sample("fluidfs_cache_used_bytes", 1024, tier="ssd"),
        sample("fluidfs_cache_quota_bytes", 4096, tier="ssd"),
        sample("fluidfs_source_requests_total", 20, kind="s3", op="read"),
        sample("fluidfs_source_requests_total", 3, kind="s3", op="list"),
        sample("fluidfs_source_bytes_total", 123456, kind="s3"),
        sample("fluidfs_readahead_wasted_bytes_total", 7),
    ]
    m = metrics_summary(s)
    assert m["tiers"]["mem"]["hit_ratio"] == pytest.approx(0.3)
    assert m["tiers"]["ssd"]["hit_ratio"] == pytest.approx(50 / 70)
    assert m["hit_ratio"] == pytest.approx((30 + 50) / (30 + 70))  # (mem + ssd hits) / mem lookups
    assert m["tiers"]["ssd"]["used_bytes"] == 1024 and m["tiers"]["ssd"]["quota_bytes"] == 4096
    assert m["source"] == {"bytes": 123456, "requests": 23, "errors": 0, "requests_by_op": {"list": 3, "read": 20}}
    assert m["readahead"] == {"issued": 0, "used": 0, "wasted": 7}
    assert metrics_summary([])["hit_ratio"] is None  # nothing read yet: no ratio, not 0


def test_walk_helpers(tmp_path: Path) -> None:
    for rel in ("a/1", "a/b/2", "c", "d/3"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * len(rel))
    rels = resolve_paths(str(tmp_path), ["a", "a/b", "./c"])
    assert rels == ["a", "a/b", "c"]
    files = [f for batch in iter_files(str(tmp_path), rels) for f in batch]
    assert sorted(files) == [("a/1", 3), ("a/b/2", 5), ("c", 1)]  # a/b is inside a: once
    assert sorted(f for b in iter_files(str(tmp_path), [""]) for f in b)[-1] == ("d/3", 3)
    with pytest.raises(Exception, match="not inside"):
        resolve_paths(str(tmp_path), ["../x"])


def test_status_of_a_non_mount(tmp_path: Path) -> None:
    for target in (str(tmp_path), str(tmp_path / "missing")):
        res = fluidfs("status", target)
        assert res.returncode == 1, res.stderr
        assert res.stderr.strip() == f"fluidfs: error: {target} is not a fluidfs mount"
        assert res.stdout == ""


@needs_fuse
@pytest.mark.fuse
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
