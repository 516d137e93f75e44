"""The real scheduling run's pure parts (tools/bench/schedrun): the queue's view, decisions, the run document."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from fluidfs.control.sched.ordering import BasePolicy
from tools.bench import schedrun
from tools.sim import calibrate
from tools.sim import scenario as sc
from tools.sim.engine import Policy, dataset_key, simulate
from tools.sim.trace import Job

MiB = 1 << 20
DOC = """
cluster: {members: [m1, m2, m3], gpusPerMember: 1, cacheBytes: 64Mi, sourceBandwidth: 4M, chunks: 4}
policies:
  - {base: fifo, cacheAware: false, placement: affinity}
  - {base: fifo, cacheAware: true, placement: affinity}
datasets:
  - {name: a, bytes: 8Mi, samples: 8}
  - {name: c, bytes: 8Mi, samples: 8}
jobs:
  - {name: j1, arrival: 0, dataset: a, samples: 16, computePerSample: 0.1}
  - {name: j2, arrival: 1, dataset: c, samples: 8, computePerSample: 0.1}
  - {name: j3, arrival: 2, dataset: a, samples: 8, computePerSample: 0.1}
rig: {latencyMs: 1, readers: 2}
"""


def test_the_queue_sees_the_members_caches() -> None:
    census = {"m1": {"a": 6 * MiB}, "m2": {"a": 2 * MiB, "c": 1 * MiB}, "m3": {}}
    used = {"m1": 6 * MiB, "m2": 3 * MiB, "m3": 0}
    st = schedrun.dataset_state(census, used, {"a": 8 * MiB, "c": 8 * MiB}, {"a": 1}, 64 * MiB)
    assert st.cached_fraction == {dataset_key("a"): 1.0, dataset_key("c"): 0.125}
    assert st.readers == {dataset_key("a"): 1} and st.cache_free == 3 * 64 * MiB - 9 * MiB


@pytest.mark.parametrize(("aware", "first"), [(False, "j2"), (True, "j3")])
def test_decide_orders_by_policy_and_places_by_affinity(aware: bool, first: str) -> None:
    scen = sc.parse(yaml.safe_load(DOC))
    jobs = {j.name: j for j in scen.trace.jobs if j.name != "j1"}
    census = {"m1": {"a": 80 * MiB}, "m2": {}, "m3": {}}  # labels need >= 64 MiB on a node (LabelPolicy)
    sizes = {"a": 80 * MiB, "c": 8 * MiB}
    st = schedrun.dataset_state(census, {"m1": 80 * MiB, "m2": 0, "m3": 0}, sizes, {}, 128 * MiB)
    free, total = {"m1": 1, "m2": 0, "m3": 0}, {"m1": 1, "m2": 1, "m3": 1}
    policy = Policy(BasePolicy.FIFO, aware, "affinity")
    starts, passed = schedrun.decide(jobs, {"j2": 0, "j3": 0}, free, total, st, census, policy, random.Random(0))
    assert starts == [(first, "m1")]
    assert passed.get("j2", 0) == (1 if aware else 0)
    free = {"m1": 1, "m2": 1, "m3": 1}  # room for both: j3 goes where a is cached
    starts, _ = schedrun.decide(jobs, {"j2": 0, "j3": 0}, free, total, st, census, policy, random.Random(0))
    assert dict(starts)["j3"] == "m1" and dict(starts)["j2"] in ("m2", "m3")


def test_the_run_document_is_the_calibration_input(tmp_path: Path) -> None:
    doc = yaml.safe_load(DOC)
    records = {
        "j1": schedrun.Record(0.0, 0.0, 12.0, "m1"),
        "j2": schedrun.Record(1.0, 1.0, 4.0, "m2"),
        "j3": schedrun.Record(2.0, 2.1, 9.0, "m1", error="trainer exit 1"),
    }
    out = schedrun.run_document(doc, 1, records, {"date": "d"})
    assert out["policies"] == [doc["policies"][1]] and out["run"]["date"] == "d"
    assert "ended" not in out["jobs"][2] and out["jobs"][2]["node"] == "m1"  # a failed job is not compared
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(out))
    scen = sc.load(path)
    assert scen.measured == {"j1": 12.0, "j2": 3.0} and scen.placements == {"j1": "m1", "j2": "m2", "j3": "m1"}
    assert scen.policies[0].cache_aware
    rows = calibrate.compare(scen)
    assert [r.name for r in rows] == ["j1", "j2"] and all(r.predicted > 0 for r in rows)
    assert schedrun.with_source(out, 3.5e6)["cluster"]["sourceBandwidth"] == 3500000
    assert doc["cluster"]["sourceBandwidth"] == "4M"  # not modified in place


def test_bad_input_and_names() -> None:
    doc = yaml.safe_load(DOC)
    assert [(s.name, s.samples, s.sample_bytes) for s in schedrun.data_sets(doc)] == [("a", 8, MiB), ("c", 8, MiB)]
    assert schedrun.rig_params(doc).readers == 2 and schedrun.rig_params(doc).batch_size == 4
    with pytest.raises(sc.ScenarioError, match="whole passes"):
        schedrun.passes(Job("x", 0.0, 1, "a", 1.0, 1.5))
    with pytest.raises(sc.ScenarioError, match="warmAhead"):
        schedrun.check(sc.parse(doc), Policy(warm_ahead=1))
    with pytest.raises(sc.ScenarioError, match="rig.memoryBytes"):
        schedrun.rig_params({**doc, "rig": {"memoryBytes": "lots"}})
    del doc["datasets"][0]["samples"]
    with pytest.raises(sc.ScenarioError, match=r"datasets\[0\].samples"):
        schedrun.data_sets(doc)
    assert schedrun.out_path(Path("d/run.yaml"), 1, True) == Path("d/run-p1.yaml")
    assert schedrun.out_path(Path("d/run.yaml"), 1, False) == Path("d/run.yaml")


def test_a_replayed_job_waits_for_the_member_it_ran_on() -> None:
    doc = yaml.safe_load(DOC)
    doc["policies"] = [doc["policies"][0]]
    for j, node in zip(doc["jobs"], ["m1", "m2", "m1"], strict=True):  # j3 ran on m1 after j1
        j["node"], j["ended"] = node, j["arrival"] + 30.0
    scen = sc.parse(doc)
    rows = {r.name: r for r in calibrate.compare(scen)}
    res = {r.name: r for r in simulate(scen.trace, scen.cluster, scen.policies[0], placements=scen.placements).jobs}
    assert res["j3"].node == "m1" and res["j3"].start == pytest.approx(res["j1"].end)
    assert set(rows) == {"j1", "j2", "j3"}
    text = schedrun.calibration_text(doc, 3.8e6)
    assert text.count("| j3 |") == 2 and "3.80 MB/s" in text
