"""The benchmark harness's arithmetic (tools/bench): medians, ratios, goals, the report, metrics
parsing, sizes and deterministic datasets.  Its end-to-end runs are in tests/slow/test_bench.py."""

from __future__ import annotations

import json

import pytest

from tools.bench import datasets as ds
from tools.bench import report
from tools.bench.cli import parse_size
from tools.bench.measure import hit_ratios
from tools.bench.systems import parse_prometheus


def _recs(system: str, values: list[float], metric: str = "MB/s", better: str = "higher") -> list[dict]:
    return [
        {
            "system": system,
            "workload": "seq",
            "phase": "cold",
            "metric": metric,
            "value": v,
            "unit": "MB/s",
            "better": better,
            "run": i,
        }
        for i, v in enumerate(values)
    ]


def test_summarize_median_min_max() -> None:
    s = report.summarize([3.0, 1.0, 2.0])
    assert s is not None and (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    s2 = report.summarize([1.0, 4.0])
    assert s2 is not None and s2.median == 2.5
    assert report.summarize([]) is None


def test_ratio_direction() -> None:
    assert report.ratio(300.0, 100.0, "higher") == 3.0
    assert report.ratio(2.0, 10.0, "lower") == 5.0  # 2 s vs 10 s: 5x better
    assert report.ratio(None, 1.0, "higher") is None
    assert report.ratio(1.0, 0.0, "higher") is None
    assert report.best({"a": 1.0, "b": 5.0}, "higher") == ("b", 5.0)
    assert report.best({"a": 1.0, "b": 5.0}, "lower") == ("a", 1.0)
    assert report.best({}, "higher") is None


def test_aggregate_and_ratios_against_best_peer_and_limits() -> None:
    records = (
        _recs("fluidfs", [400, 500, 600])
        + _recs("s3fs", [90, 100, 110])
        + _recs("rclone", [200, 250, 300])
        + _recs("boto3", [500, 1000, 700])
        + _recs("local", [2000, 2000, 2000])
    )
    g = report.aggregate(records)[("seq", "cold", "MB/s")]
    assert g["systems"]["fluidfs"].median == 500
    assert g["systems"]["boto3"].median == 700
    r = report.ratios_for(g)
    assert r["best_peer"] == pytest.approx(2.0) and r["best_peer_name"] == "rclone"
    assert r["boto3"] == pytest.approx(500 / 700)
    assert r["local"] == pytest.approx(0.25)


def test_markdown_shows_skips_partial_and_timeouts() -> None:
    records = _recs("fluidfs", [10.0]) + _recs("local", [20.0])
    records[0]["partial"] = True
    records.append(
        {
            "system": "boto3",
            "workload": "seq",
            "phase": "cold",
            "metric": "MB/s",
            "value": None,
            "unit": "MB/s",
            "better": "higher",
            "run": 0,
            "timeout": True,
        }
    )
    result = {
        "meta": {"runs": 1, "workloads": ["seq", "loader"]},
        "records": records,
        "skipped": {"s3fs": "s3fs not installed"},
        "workload_skipped": {"loader": {"local": "torch not installed"}},
    }
    md = report.markdown(result)
    assert "| cold | MB/s | 10.0* |" in md
    assert "skipped: s3fs not installed" in md
    assert "timeout (1x)" in md
    assert "0.50x" in md  # vs local
    assert "skipped: torch not installed" in md  # loader table exists though it has no records
    doc = report.to_json(result)
    json.dumps(doc)
    assert doc["summaries"][0]["systems"]["fluidfs"]["median"] == 10.0


def test_parse_prometheus_and_hit_ratios() -> None:
    before = parse_prometheus(
        '# HELP x\nfluidfs_cache_hits_total{dataset="d",tier="mem"} 0\n'
        'fluidfs_cache_misses_total{dataset="d",tier="mem"} 0\n'
        'fluidfs_cache_misses_total{dataset="d",tier="ssd"} 0\nfluidfs_source_bytes_total{dataset="d"} 0\n'
    )
    after = parse_prometheus(
        'fluidfs_cache_hits_total{dataset="d",tier="mem"} 10\nfluidfs_cache_hits_total{dataset="d",tier="ssd"} 30\n'
        'fluidfs_cache_misses_total{dataset="d",tier="mem"} 90\nfluidfs_cache_misses_total{dataset="d",tier="ssd"} 60\n'
        'fluidfs_source_bytes_total{dataset="d",kind="s3"} 250\nfluidfs_fuse_read_bytes_total{dataset="d"} 1000\n'
    )
    assert after["fluidfs_cache_hits_total"][""] == 40
    assert after["fluidfs_cache_misses_total"]["tier=ssd"] == 60
    hr, bhr = hit_ratios(before, after, 0)
    assert hr == pytest.approx(40 / 100)  # 40 hits, 60 lookups went past the lowest tier
    assert bhr == pytest.approx(0.75)
    assert hit_ratios(None, after, 0) == (None, None)
    assert hit_ratios({}, {}, 0) == (None, None)  # metrics absent: n/a, no crash


def test_parse_size() -> None:
    assert parse_size("256Mi") == 256 << 20
    assert parse_size("110Ki") == 110 << 10
    assert parse_size("1G") == 10**9
    assert parse_size("4096") == 4096


def test_goals_from_medians() -> None:
    def r(system: str, workload: str, phase: str, metric: str, value: float, better: str = "higher") -> dict:
        return {
            "system": system,
            "workload": workload,
            "phase": phase,
            "metric": metric,
            "value": value,
            "unit": "",
            "better": better,
            "run": 0,
        }

    records = [
        r("fluidfs", "seq", "cold", "MB/s", 300),
        r("s3fs", "seq", "cold", "MB/s", 100),
        r("rclone", "seq", "cold", "MB/s", 200),
        r("boto3", "seq", "cold", "MB/s", 400),
        r("fluidfs", "meta", "warm", "walk", 0.3, "lower"),
        r("local", "meta", "warm", "walk", 0.1, "lower"),
        r("fluidfs-none", "pressure", "epoch2", "hit ratio", 0.5),
        r("fluidfs-lru", "pressure", "epoch2", "hit ratio", 0.1),
    ]
    result = {"records": records, "rss": {"fluidfs": {"seq": 300.0}}, "meta": {"fluidfs_memory_mib": 256}}
    g = {x["goal"]: x for x in report.goals(result)}
    assert g["cold large-file read vs best FUSE peer"]["measured"] == 1.5
    assert g["cold large-file read vs best FUSE peer"]["met"] is False
    assert g["cold large-file read vs direct boto3"]["met"] is False  # 0.75 < 0.85
    assert g["warm metadata walk time vs local disk"]["measured"] == pytest.approx(3.0)
    assert g["warm metadata walk time vs local disk"]["met"] is False
    assert g["dataset = 2 x cache, eviction none, epoch2 hit ratio"]["met"] is True
    assert g["dataset = 2 x cache, eviction none, epoch2 hit ratio"]["beside"] == "lru 0.10"
    assert g["fluidfs peak RSS vs memory tier + 200 MiB"]["met"] is True
    assert g["cold small-file epoch vs best FUSE peer"]["met"] is None  # not measured: n/a
    assert "| cold large-file read vs best FUSE peer | >= 2x | 1.5x | **no** |" in "\n".join(
        report.goals_markdown(result)
    )


def test_datasets_are_deterministic() -> None:

    spec = ds.DataSpec(large_files=2, large_size=1000, small_files=50, small_size=2048, classes=5, meta_files=30)
    small = ds.plan(spec, "small")
    assert small == ds.plan(spec, "small")
    assert len({e.key.split("/")[1] for e in small}) == 5
    assert all(1536 <= e.size <= 2560 for e in small)
    assert ds.content(spec, small[0]) == ds.content(spec, small[0])
    assert ds.content(spec, small[0]) != ds.content(spec, small[1])
    assert len(ds.content(spec, ds.plan(spec, "large")[0])) == 1000
    other = ds.DataSpec(**{**spec.__dict__, "seed": 99})
    assert ds.content(other, small[0]) != ds.content(spec, small[0])
