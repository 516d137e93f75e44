"""The shipped Grafana dashboard (tools/grafana/fluidfs-dashboard.json): valid JSON of the
right shape, every metric its queries use exists in fluidfs/metrics.py, every panel has a
title and a datasource, and it covers what issue 3 asks a dashboard to show."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.metrics import MetricWrapperBase

from fluidfs import metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "tools" / "grafana" / "fluidfs-dashboard.json"
_NAME = re.compile(r"\b(fluidfs_[a-zA-Z0-9_]+)")
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}


def exported_names() -> dict[str, str]:
    """Every sample name fluidfs/metrics.py can expose → the family it belongs to."""
    out: dict[str, str] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        for fam in obj.describe():
            for suffix in _SUFFIXES[fam.type]:
                out[fam.name + suffix] = fam.name
    return out


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", []) if t.get("expr")]


def test_dashboard_shape(dash: dict[str, Any]) -> None:
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["title"] and dash["uid"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    dataset = variables["dataset"]
    assert dataset["type"] == "query"
    query = dataset["query"]["query"] if isinstance(dataset["query"], dict) else dataset["query"]
    assert query == "label_values(fluidfs_cache_used_bytes, dataset)"
    assert dataset["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in all_panels(dash["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in all_panels(dash["panels"]):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]


def test_every_panel_has_title_and_datasource(dash: dict[str, Any]) -> None:
    panels = list(all_panels(dash["panels"]))
    assert len([p for p in panels if p["type"] != "row"]) >= 10
    for p in panels:
        assert isinstance(p.get("title"), str) and p["title"].strip(), p
        assert p.get("datasource", {}).get("uid") == "${datasource}", p["title"]
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no queries"
        for t in p["targets"]:
            assert t.get("expr"), f"panel {p['title']!r}: target without an expression"
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", p["title"]
            assert 'dataset=~"$dataset"' in t["expr"], f"panel {p['title']!r} ignores the dataset variable"


def test_every_metric_in_every_expression_exists(dash: dict[str, Any]) -> None:
    known = exported_names()
    assert "fluidfs_cache_hits_total" in known and "fluidfs_source_request_duration_seconds_bucket" in known
    used: set[str] = set()
    for p in all_panels(dash["panels"]):
        for e in exprs(p):
            names = _NAME.findall(e)
            assert names, f"panel {p['title']!r}: no fluidfs metric in {e!r}"
            for n in names:
                assert n in known, f"panel {p['title']!r} uses {n}, which fluidfs/metrics.py does not export"
            used.update(known[n] for n in names)
            if "histogram_quantile" in e:
                assert re.search(r"_bucket\{", e) and "le" in e, f"panel {p['title']!r}: quantile without buckets by le"
    for v in dash["templating"]["list"]:
        q = v.get("definition", "")
        for n in _NAME.findall(q):
            assert n in known, f"variable {v['name']} uses unknown metric {n}"
    families = {fam for fam in known.values()}
    unused = families - used
    assert not unused, f"metrics without a panel: {sorted(unused)}"


def test_required_panels_present(dash: dict[str, Any]) -> None:
    panels = [p for p in all_panels(dash["panels"]) if p["type"] != "row"]

    def find(*metric_names: str) -> list[dict[str, Any]]:
        return [p for p in panels if all(any(m in e for e in exprs(p)) for m in metric_names)]

    assert find("fluidfs_cache_hits_total", "fluidfs_cache_misses_total"), "hit ratio per tier"
    assert find("fluidfs_cache_used_bytes", "fluidfs_cache_quota_bytes"), "used vs quota"
    assert find("fluidfs_source_requests_total"), "source request rate"
    assert find("fluidfs_source_errors_total"), "source error rate"
    latency = find("fluidfs_source_request_duration_seconds_bucket")
    assert latency and any("histogram_quantile(0.5," in e for e in exprs(latency[0]))
    assert any("histogram_quantile(0.99," in e for e in exprs(latency[0]))
    assert find("fluidfs_source_bytes_total"), "source throughput"
    assert find("fluidfs_fuse_operations_total"), "FUSE op rate"
    assert find("fluidfs_fuse_operation_duration_seconds_bucket"), "FUSE latency"
    assert find(
        "fluidfs_readahead_issued_bytes_total",
        "fluidfs_readahead_used_bytes_total",
        "fluidfs_readahead_wasted_bytes_total",
    ), "readahead issued/used/wasted"
    assert find("fluidfs_cache_evictions_total"), "evictions"
    for p in find("fluidfs_cache_hits_total"):
        assert any("tier" in e for e in exprs(p)), "hit ratio must be split by tier"
