"""Scenario files (JSON and YAML) into the simulator's trace, cluster and policies; calibration
from a scenario with measured times; every malformed field a one-line ScenarioError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fluidfs.control.sched.ordering import BasePolicy
from tools.sim.calibrate import calibrate, compare
from tools.sim.engine import simulate
from tools.sim.scenario import ScenarioError, load, mean_gpu_rate, parse

YAML = """
cluster:
  members: [m1, m2, m3]
  gpusPerMember: 1
  cacheBytes: 2Gi
  sourceBandwidth: 50M/s
  chunks: 8
policies:
  - {base: fifo, cacheAware: false, placement: affinity}
  - {base: sjf, cacheAware: true, placement: random, window: 4, maxPassOver: none, sourceAware: true}
datasets:
  - {name: a, bytes: 1Gi, samples: 1000}
  - {name: b, bytes: 500M}
jobs:
  - {name: j1, arrival: 0, dataset: a, gpus: 1, samples: 2000, computePerSample: 0.01}
  - {name: j2, arrival: 5, dataset: b, epochs: 1.5, computeSeconds: 30}
"""


def test_yaml_scenario(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(YAML)
    s = load(path)
    assert s.cluster.node_names() == ["m1", "m2", "m3"] and s.cluster.cache_bytes == 2 * 1024**3
    assert s.cluster.source_bandwidth == 50e6 and s.cluster.chunks == 8
    j1, j2 = s.trace.jobs
    assert (j1.epochs, j1.compute_seconds, j1.gpus) == (2.0, 20.0, 1)
    assert (j2.submit, j2.epochs, j2.compute_seconds) == (5.0, 1.5, 30.0)
    fifo, sjf = s.policies
    assert fifo.base is BasePolicy.FIFO and not fifo.cache_aware and fifo.source is None
    assert sjf.base is BasePolicy.SJF and sjf.placement == "random" and sjf.max_pass_over is None
    assert sjf.source is not None and sjf.source.bandwidth == 50e6
    assert sjf.source.gpu_rate == pytest.approx(mean_gpu_rate(s.trace))
    # the same document as JSON gives the same scenario
    as_json = tmp_path / "s.json"
    as_json.write_text(json.dumps(yaml.safe_load(YAML)))
    assert load(as_json).trace.jobs == s.trace.jobs
    for p in s.policies:
        assert len(simulate(s.trace, s.cluster, p).jobs) == 2


def test_default_policies_and_member_count() -> None:
    doc = yaml.safe_load(YAML)
    del doc["policies"]
    doc["cluster"]["members"] = 4
    s = parse(doc)
    assert s.cluster.node_names() == ["n00", "n01", "n02", "n03"]
    assert [p.name for p in s.policies] == [
        "fifo/affinity",
        "fifo+cache/affinity",
        "sjf/affinity",
        "sjf+cache/affinity",
    ]


def test_cache_sharing_and_prefer_local() -> None:
    doc = yaml.safe_load(YAML)
    assert parse(doc).cluster.shared and not parse(doc).cluster.peer_copy
    doc["cluster"].update(sharedCache=False, peerCopy=True)
    doc["policies"][1]["preferLocal"] = True
    s = parse(doc)
    assert not s.cluster.shared and s.cluster.peer_copy
    assert s.policies[1].local and s.policies[1].name == "sjf+cache+src+local/random"
    assert not s.policies[0].local


def calibration_doc() -> dict[str, Any]:
    # one node, 1 GB/s everywhere, chunk = 1 GB, compute 2 s per chunk (see test_sim)
    return {
        "cluster": {"members": ["m1"], "gpusPerMember": 1, "cacheBytes": 10**10, "sourceBandwidth": 1e9,
                    "localBandwidth": 1e9, "chunks": 2},
        "policy": {"base": "fifo", "cacheAware": False, "placement": "random"},
        "datasets": [{"name": "d", "bytes": 2 * 10**9, "samples": 100}],
        "jobs": [
            {"name": "a", "dataset": "d", "samples": 100, "computePerSample": 0.04, "arrival": 0.0, "ended": 5.5,
             "node": "m1"},
            {"name": "b", "dataset": "d", "computeSeconds": 4.0, "submitted": 0.0, "started": 5.5, "ended": 10.0},
            {"name": "c", "dataset": "d", "computeSeconds": 4.0, "arrival": 100.0},
        ],
    }  # fmt: skip


def test_calibration(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(calibration_doc()))
    rows = {m.name: m for m in calibrate(path)}
    assert set(rows) == {"a", "b"}  # c is simulated, not compared
    assert rows["a"].predicted == pytest.approx(5.0) and rows["a"].error == pytest.approx(5.0 / 5.5 - 1)
    assert rows["b"].predicted == pytest.approx(10.0) and rows["b"].error == pytest.approx(0.0)
    doc = calibration_doc()
    for j in doc["jobs"]:
        j.pop("ended", None)
    with pytest.raises(ScenarioError, match="nothing measured"):
        compare(parse(doc))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("cluster"), "missing 'cluster'"),
        (lambda d: d["cluster"].update(members=[]), "cluster.members"),
        (lambda d: d["cluster"].update(members=0), "cluster.members"),
        (lambda d: d["cluster"].update(cacheBytes="lots"), "cluster.cacheBytes: invalid size"),
        (lambda d: d["cluster"].update(sourceBandwidth=0), "cluster.sourceBandwidth: must be positive"),
        (lambda d: d["policy"].update(base="lifo"), "policies[0].base"),
        (lambda d: d["policy"].update(placement="spread"), "policies[0].placement"),
        (lambda d: d["policy"].update(sourceAware="yes"), "policies[0].sourceAware"),
        (lambda d: d["policy"].update(preferLocal=1), "policies[0].preferLocal: must be true or false"),
        (lambda d: d["cluster"].update(peerCopy="ssd"), "cluster.peerCopy: must be true or false"),
        (lambda d: d.update(policies=[]), "policies: must not be empty"),
        (lambda d: d["datasets"].append({"name": "d", "bytes": 1}), "appears twice"),
        (lambda d: d["jobs"][0].update(dataset="zzz"), "jobs[0].dataset"),
        (lambda d: d["jobs"][0].update(ended=0.0), "must be after arrival"),
        (lambda d: d["jobs"][0].update(node="m9"), "jobs[0].node"),
        (lambda d: d["jobs"][1].update(name="a"), "appears twice"),
        (lambda d: d["jobs"][1].update(computeSeconds="4"), "jobs[1].computeSeconds: must be a number"),
        (lambda d: d["jobs"][1].update(gpus=2), "more than a member has"),
        (lambda d: d["jobs"][1].pop("submitted"), "jobs[1]: missing 'arrival'"),
        (lambda d: d["jobs"][0].pop("samples"), "computePerSample: needs samples"),
        (lambda d: d["datasets"][0].pop("samples"), "gives no samples"),
        (lambda d: d.update(jobs=[]), "jobs: must not be empty"),
        (lambda d: d.update(jobs={}), "jobs: must be a list"),
    ],
)
def test_bad_scenarios(edit: Any, message: str) -> None:
    doc = calibration_doc()
    edit(doc)
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(doc)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="No such file"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: [unclosed\n")
    with pytest.raises(ScenarioError, match="not YAML"):
        load(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(ScenarioError, match="not JSON"):
        load(bad_json)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ScenarioError, match="scenario: must be a mapping"):
        load(top)
