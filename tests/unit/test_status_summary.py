"""``fluidfs status`` without a mount: the metrics summary and the walk helpers it shares with ``load``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluidfs.cli.status import metrics_summary
from fluidfs.util.prom import Sample
from fluidfs.warmup.mounted import iter_files, resolve_paths


def sample(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, {"dataset": "d", **labels}, value)


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


def test_cluster_member_dataset_size_and_the_autoscaler_in_the_status() -> None:
    from fluidfs.cli.status import autoscaler_summary, render

    s = [
        sample("fluidfs_peer_members", 3),
        sample("fluidfs_peer_ownership_share_ratio", 1 / 3),
        sample("fluidfs_peer_bytes_total", 4 << 20, side="client", op="get"),
        sample("fluidfs_peer_bytes_total", 1 << 20, side="server", op="get"),
        sample("fluidfs_peer_lookups_total", 9, result="owner"),
        sample("fluidfs_dataset_size_bytes", 10 << 30),
        sample("fluidfs_dataset_size_complete", 0),
    ]
    m = metrics_summary(s)
    assert m["cluster"] == {"members": 3, "ownership_share": pytest.approx(1 / 3), "peer_bytes_received": 4 << 20,
                            "peer_bytes_served": 1 << 20, "lookups": {"owner": 9}}  # fmt: skip
    assert m["dataset_size"] == {"bytes": 10 << 30, "complete": False}
    assert metrics_summary([])["cluster"] is None and metrics_summary([])["dataset_size"] is None
    controller = [
        Sample("fluidfs_autoscaler_replicas", {"namespace": "ml", "dataset": "d"}, 2),
        Sample("fluidfs_autoscaler_recommended_replicas", {"namespace": "ml", "dataset": "d"}, 3),
        Sample("fluidfs_autoscaler_replicas", {"namespace": "ml", "dataset": "other"}, 5),
    ]
    auto = autoscaler_summary(controller, "d")
    assert auto == [{"namespace": "ml", "replicas": 2, "recommended": 3}]
    st = {
        "mountpoint": "/mnt", "dataset": "d", "pid": 1, "uptime_seconds": 5, "sources": ["s3://b"],
        "metrics_url": "http://127.0.0.1:1/metrics", "config": {}, **m, "autoscaler": auto,
        "cached": {"paths": ["/"], "fraction": 0.5, "bytes": 10, "cached_bytes": 5, "files": 2,
                   "fully_cached_files": 1, "errors": 0},
    }  # fmt: skip
    text = render(st)
    assert "cluster    3 members, this one owns 33% of the blocks" in text
    assert "size       10 GiB of files (at least: not every directory listed yet)" in text
    assert "workers    ml/d: 2 cache workers, the autoscaler recommends 3" in text
