"""Cache-affinity placement: weights proportional to cached bytes, required on request, merged
into the pod without touching what the user wrote, and scored the way kube-scheduler scores."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from fluidfs.control.sched.locations import MIB, CacheLocations, dataset_key_for_url, label_name
from fluidfs.control.sched.placement import (
    ANNOTATION,
    CacheAffinity,
    Mode,
    as_node_affinity,
    cache_affinity,
    expression_matches,
    merge_patch,
    parse_mode,
    preferred_score,
    required_matches,
)

GIB = 1024 * MIB
A, B = dataset_key_for_url("s3://d/a"), dataset_key_for_url("s3://d/b")
LOC = CacheLocations({A: {"n1": 100 * GIB, "n2": 50 * GIB, "n3": 10 * GIB}, B: {"n2": 25 * GIB}})
PREF = "preferredDuringSchedulingIgnoredDuringExecution"
REQ = "requiredDuringSchedulingIgnoredDuringExecution"


def labels_of(node: str) -> dict[str, str]:
    return LOC.node_labels(node)


def pod(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [], **spec}}


def test_scores_are_proportional_to_cached_bytes_in_quarters() -> None:
    aff = as_node_affinity(cache_affinity([A], LOC))
    scores = {n: preferred_score(aff, labels_of(n)) for n in ("n1", "n2", "n3", "n4")}
    assert scores == {"n1": 100, "n2": 50, "n3": 0, "n4": 0}
    assert all(1 <= t["weight"] <= 100 for t in aff[PREF])


def test_two_datasets_weigh_by_their_size() -> None:
    aff = as_node_affinity(cache_affinity([A, B, A], LOC))
    assert len(aff[PREF]) == 8
    # n1 holds 100 GiB of a; n2 50 GiB of a and 25 GiB of b: scores follow the bytes
    assert preferred_score(aff, labels_of("n1")) == 100
    assert preferred_score(aff, labels_of("n2")) == 50 + 4 * 6
    assert preferred_score(aff, labels_of("n3")) == 0


def test_nothing_cached_nothing_added() -> None:
    assert cache_affinity([dataset_key_for_url("s3://cold")], LOC) == CacheAffinity()
    assert cache_affinity([A], LOC, mode=Mode.DISABLED) == CacheAffinity()


def test_required_needs_a_node_holding_every_dataset() -> None:
    aff = cache_affinity([A, B], LOC, mode=Mode.REQUIRED)
    assert aff.required == {
        "matchExpressions": [{"key": label_name(A), "operator": "Exists"}, {"key": label_name(B), "operator": "Exists"}]
    }
    na = as_node_affinity(aff)
    assert [n for n in ("n1", "n2", "n3") if required_matches(na, labels_of(n))] == ["n2"]
    lonely = CacheLocations({A: {"n1": GIB}, B: {"n2": GIB}})
    aff = cache_affinity([A, B], lonely, mode=Mode.REQUIRED)
    assert aff.required is None and aff.preferred and "no node holds" in aff.warnings[0]


@pytest.mark.parametrize(
    ("value", "mode", "warned"),
    [
        (None, Mode.PREFERRED, False),
        ("Required", Mode.REQUIRED, False),
        ("none", Mode.DISABLED, False),
        ("preferred", Mode.PREFERRED, False),
        ("always", Mode.PREFERRED, True),
    ],
)
def test_annotation(value: str | None, mode: Mode, warned: bool) -> None:
    got, warning = parse_mode({ANNOTATION: value} if value is not None else {})
    assert got is mode and (warning is not None) == warned


def apply(p: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(p), ops)
    return out


USER_PREF = {"weight": 7, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}}
USER_REQ = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}


@pytest.mark.parametrize(
    "affinity",
    [
        None,
        {"podAntiAffinity": {}},
        {"nodeAffinity": {}},
        {"nodeAffinity": {PREF: [USER_PREF]}},
        {"nodeAffinity": {REQ: USER_REQ}},
        {"nodeAffinity": {REQ: USER_REQ, PREF: [USER_PREF]}},
    ],
)
def test_merge_keeps_everything_the_user_wrote(affinity: dict[str, Any] | None) -> None:
    p = pod() if affinity is None else pod(affinity=affinity)
    aff = cache_affinity([A], LOC, mode=Mode.REQUIRED)
    ops, warnings = merge_patch(p, aff)
    assert all(op["op"] == "add" for op in ops)
    out = apply(p, ops)
    node_aff = out["spec"]["affinity"]["nodeAffinity"]
    user = (affinity or {}).get("nodeAffinity", {})
    for term in user.get(PREF, []):
        assert term in node_aff[PREF]
    assert all(t in node_aff[PREF] for t in aff.preferred)
    if REQ in user:
        assert node_aff[REQ] == USER_REQ and any("own" in w for w in warnings)
    else:
        assert node_aff[REQ] == {"nodeSelectorTerms": [aff.required]}
    if affinity and "podAntiAffinity" in affinity:
        assert out["spec"]["affinity"]["podAntiAffinity"] == {}
    again, _ = merge_patch(out, aff)
    assert again == []  # idempotent


def test_kube_scheduler_operators() -> None:
    labels = {"a": "10", "b": "x"}
    assert expression_matches({"key": "a", "operator": "Gt", "values": ["9"]}, labels)
    assert not expression_matches({"key": "a", "operator": "Gt", "values": ["10"]}, labels)
    assert expression_matches({"key": "a", "operator": "Lt", "values": ["11"]}, labels)
    assert not expression_matches({"key": "b", "operator": "Gt", "values": ["1"]}, labels)
    assert not expression_matches({"key": "c", "operator": "Gt", "values": ["1"]}, labels)
    assert expression_matches({"key": "b", "operator": "In", "values": ["x", "y"]}, labels)
    assert expression_matches({"key": "c", "operator": "NotIn", "values": ["x"]}, labels)
    assert expression_matches({"key": "c", "operator": "DoesNotExist"}, labels)
    assert not expression_matches({"key": "a", "operator": "Bogus"}, labels)
    field = {
        REQ: {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}
    }
    assert required_matches(field, {}, "n1") and not required_matches(field, {}, "n2")
    assert required_matches(None, {}) and not required_matches({REQ: {"nodeSelectorTerms": [{}]}}, {})
