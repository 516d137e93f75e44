"""The Job queue's decisions over recorded cluster states (tests/component/fixtures/queue/*.json),
and every Job it writes, once patched, validated with kubernetes-validate --strict.

Each fixture holds the cluster's objects as the API returns them (Jobs, Nodes with their
``cache.fluidfs.io`` labels, Pods, and the PVCs/StorageClasses the Jobs' volumes resolve
through), the queue's configuration, and the expected admissions, pass-over counts, warm-up
intents and reported problems.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from fluidfs.control.sched.locations import CacheLocations, dataset_key_for_url
from fluidfs.control.sched.ordering import BasePolicy, OrderingConfig, SourceModel
from fluidfs.control.sched.queue import (
    ADMITTED_AT,
    ClusterState,
    QueueConfig,
    gpu_capacity,
    parse_count,
    plan_queue,
    pod_request,
)
from tests.support.kube_lookups import FakeVolumeLookups

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "queue").glob("*.json"))
KUBE_VERSIONS = ["1.29.0", "1.35.0", kubernetes_validate.latest_version()]


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


def validate(obj: dict[str, Any]) -> None:
    body = copy.deepcopy(obj)
    body.get("metadata", {}).pop("creationTimestamp", None)
    body.pop("status", None)
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(body, version, strict=True)


def load(path: Path) -> tuple[dict[str, Any], ClusterState, QueueConfig, FakeVolumeLookups]:
    fx = json.loads(path.read_text())
    for url, key in fx["datasetKeys"].items():
        assert dataset_key_for_url(url) == key, "the fixture's recorded keys are the keys of its URLs"
    objs = fx["objects"]
    key = fx["datasetKeys"]
    state = ClusterState(
        jobs=objs["jobs"],
        nodes=objs["nodes"],
        pods=objs["pods"],
        locations=CacheLocations.from_nodes(objs["nodes"]),
        dataset_bytes={key[u]: n for u, n in fx["datasetBytes"].items()},
        warming=frozenset(key[u] for u in fx["warming"]),
    )
    c = fx["config"]
    ordering = OrderingConfig(
        base=BasePolicy(c["base"]),
        cache_aware=c["cacheAware"],
        max_pass_over=c.get("maxPassOver", 8),
        warm_ahead=c.get("warmAhead", 0),
        source=SourceModel(c["source"]["bandwidth"], c["source"]["gpuRate"]) if "source" in c else None,
        stagger=c.get("stagger", False),
        local=c.get("preferLocal", False),
    )
    config = QueueConfig(fx["queue"], ordering, slots=c.get("slots"), model_gpus=c.get("modelGpus", True))
    return fx, state, config, FakeVolumeLookups(objs["volumes"])


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_decisions_over_recorded_states(path: Path) -> None:
    fx, state, config, lookups = load(path)
    now = datetime.fromisoformat(fx["now"].replace("Z", "+00:00"))
    got = plan_queue(state, config, lookups, now)
    want = fx["expect"]
    assert [f"{p.namespace}/{p.name}" for p in got.admit] == want["admit"], fx["description"]
    passed = {
        f"{p.namespace}/{p.name}": int(p.patch["metadata"]["annotations"]["fluidfs.io/passed-over"])
        for p in got.passed_over
    }
    assert passed == want["passedOver"]
    keys = fx["datasetKeys"]
    assert [(w.dataset, w.job) for w in got.warm] == [(keys[u], j) for u, j in want["warm"]]
    assert len(got.problems) == len(want["problems"]), got.problems
    for fragment in want["problems"]:
        assert any(fragment in p for p in got.problems), (fragment, got.problems)
    assert got.decision.barrier == want.get("barrier")
    # every Job the controller would write is a valid Job, and admitted ones are unsuspended
    jobs = {f"{j['metadata']['namespace']}/{j['metadata']['name']}": j for j in state.jobs}
    for p in got.admit + got.passed_over:
        patched = merge(jobs[f"{p.namespace}/{p.name}"], p.patch)
        validate(patched)
        if p in got.admit:
            assert patched["spec"]["suspend"] is False
            assert patched["metadata"]["annotations"][ADMITTED_AT] == "2026-03-01T12:00:00Z"


def test_recorded_objects_are_valid_kubernetes_objects() -> None:
    for path in FIXTURES:
        fx = json.loads(path.read_text())
        for group in ("jobs", "pods", "volumes"):
            for obj in fx["objects"][group]:
                validate(obj)


def test_quantities_and_requests() -> None:
    assert [parse_count(x) for x in ("2", 3, "1k", "2Ki", "1.5k")] == [2, 3, 1000, 2048, 1500]
    spec = {
        "containers": [
            {"resources": {"limits": {"nvidia.com/gpu": "2"}}},
            {"resources": {"requests": {"nvidia.com/gpu": 1}}},
        ],
        "initContainers": [{"resources": {"requests": {"nvidia.com/gpu": "4"}}}],
    }
    assert pod_request(spec) == 4
    assert pod_request({"containers": [{}]}) == 0
    free, alloc = gpu_capacity([{"metadata": {"name": "n"}, "status": {"allocatable": {}}}], [])
    assert free == {} and alloc == {}
