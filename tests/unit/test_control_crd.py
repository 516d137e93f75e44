"""The Dataset CRD: a valid CRD object, a schema that accepts the examples and rejects
malformed Datasets with clear messages, the chart's copy kept in sync, and the controller's
own parsing of a resource (what the schema cannot check)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from fluidfs.control import crd, resource
from fluidfs.errors import SpecError
from fluidfs.spec.parse import parse_dataset
from tests.support.control_validate import schema_errors, validate_strict

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("dataset-*.yaml"))


def example(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docs" / "examples" / name).read_text())
    assert isinstance(data, dict)
    return data


def test_crd_object_validates_strictly_for_every_kubernetes_version() -> None:
    obj = crd.crd()
    validate_strict(obj)
    version = obj["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.cache.replicas"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Cached", "Workers", "Input", "Age"} <= set(columns)


def test_schema_is_structural() -> None:
    """Every node has a type (or int-or-string / preserve-unknown-fields), as the API server requires."""

    def walk(node: dict[str, Any], path: str) -> None:
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        for key, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")
        for bad in ("oneOf", "anyOf", "allOf", "not"):
            assert bad not in node, f"{path}: {bad} with types is not structural"

    walk(crd.openapi_schema(), "")


def test_chart_template_is_generated_from_the_code() -> None:
    from tools.gen_crd import render_template

    chart_file = ROOT / "helm" / "fluidfs" / "templates" / "dataset-crd.yaml"
    assert chart_file.read_text() == render_template(), "run: python -m tools.gen_crd"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted_by_the_schema_and_the_controller(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert schema_errors(obj) == []
    obj["metadata"]["uid"] = "u"
    res = resource.parse(obj)
    assert res.dataset.mounts


BAD: list[tuple[str, Any, str]] = [
    ("spec.mounts", [], "should be non-empty"),
    ("spec.mounts.0.mountPoint", "ftp://host/x", "does not match"),
    ("spec.mounts.0.mountPoint", None, "None is not of type 'string'"),
    ("spec.cache.size", "lots", "does not match"),
    ("spec.cache.eviction", "fifo", "is not one of"),
    ("spec.cache.maxWorkers", -1, "less than the minimum"),
    ("spec.cache.maxWorkers", "4", "is not of type 'integer'"),
    ("spec.cache.autoscaling.policy", "cpu", "is not one of"),
    ("spec.cache.autoscaling.window", "soon", "does not match"),
    ("spec.cache.autoscaling.minGain", -0.1, "less than the minimum"),
    ("spec.cache.autoscaling.fullThreshold", 1.5, "greater than the maximum"),
    ("spec.cache.worker.quota", "10 gigs", "does not match"),
    ("spec.cache.sise", "1Gi", "Additional properties are not allowed ('sise' was unexpected)"),
    ("spec.mounts.0.credentials.accessKeyId", {"env": "AK"}, "'secretKeyRef' is a required property"),
]


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = obj
    for p in parents:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


@pytest.mark.parametrize("path, value, message", BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_malformed_datasets_are_rejected_with_the_field_and_a_clear_message(
    path: str, value: Any, message: str
) -> None:
    obj = copy.deepcopy(example("dataset-autoscaled.yaml"))
    _set(obj, path, value)
    errors = schema_errors(obj)
    where = path.rsplit(".", 1)[0] if message.startswith("Additional") else path
    assert any(e.startswith(f"{where}: ") and message in e for e in errors), errors


def _resource(**cache: Any) -> dict[str, Any]:
    obj = example("dataset-autoscaled.yaml")
    obj["metadata"].update(uid="u1", generation=3)
    obj["spec"]["cache"].update(cache)
    return obj


def test_parse_gives_the_workers_document_with_secrets_as_environment() -> None:
    res = resource.parse(_resource())
    assert res.key == "ml/imagenet" and res.generation == 3
    assert res.bounds.max_workers == 8 and res.params.window == 90
    assert res.worker.quota == 200 << 30 and res.worker.storage_class == "local-nvme"
    doc = res.document
    assert doc["apiVersion"] == "fluidfs.io/v1alpha1"
    creds = doc["spec"]["mounts"][0]["credentials"]
    assert creds == {"accessKeyId": {"env": "FLUIDFS_M0_ACCESS_KEY_ID"},
                     "secretAccessKey": {"env": "FLUIDFS_M0_SECRET_ACCESS_KEY"}}  # fmt: skip
    assert {(e.env, e.secret, e.key) for e in res.secret_env} == {
        ("FLUIDFS_M0_ACCESS_KEY_ID", "s3-credentials", "accessKeyId"),
        ("FLUIDFS_M0_SECRET_ACCESS_KEY", "s3-credentials", "secretAccessKey"),
    }
    assert doc["spec"]["cache"]["size"] == str(200 << 30)  # the worker's quota, not the mount's
    assert doc["spec"]["cache"]["eviction"] == "none"
    assert "secretKeyRef" not in resource.document_yaml(res)


def test_fluid_mounts_carry_over_and_ignored_fields_are_warnings() -> None:
    obj = example("dataset-from-fluid.yaml")
    obj["metadata"]["uid"] = "u2"
    res = resource.parse(obj)
    (mount,) = res.document["spec"]["mounts"]
    assert mount["options"] == {"endpoint": "http://minio.default.svc:9000", "region": "us-east-1",
                                "addressing_style": "path"}  # fmt: skip
    assert set(mount["credentials"]) == {"accessKeyId", "secretAccessKey"}
    assert any("spec.nodeAffinity: ignored" in w for w in res.warnings)
    assert any("spec.accessModes: ignored" in w for w in res.warnings)


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"minWorkers": 5, "maxWorkers": 2}, "spec.cache.minWorkers", "must not exceed maxWorkers"),
        ({"autoscaling": {"policy": "gpu"}}, "spec.cache.autoscaling.policy", "must be one of"),
        ({"autoscaling": {"window": "indefinite"}}, "spec.cache.autoscaling.window", "must be finite"),
        ({"autoscaling": {"interval": "0s"}}, "spec.cache.autoscaling.interval", "more than 0"),
        ({"worker": {"quota": "lots"}}, "spec.cache.worker.quota", "invalid size"),
        ({"worker": {"quotta": "1Gi"}}, "spec.cache.worker.quotta", "did you mean 'quota'"),
        ({"blockSize": "512Ki"}, "spec.cache.blockSize", "between 1Mi and 64Mi"),
    ],
)
def test_parse_rejects_what_the_schema_cannot_see(change: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        resource.parse(_resource(**change))
    assert info.value.document == "Dataset ml/imagenet"
    assert info.value.field == field and problem in info.value.problem


def test_parse_rejects_duplicate_mounts_and_mixed_credential_forms() -> None:
    obj = _resource()
    obj["spec"]["mounts"].append(copy.deepcopy(obj["spec"]["mounts"][0]))
    with pytest.raises(SpecError, match="duplicate mount name"):
        resource.parse(obj)
    obj = example("dataset-from-fluid.yaml")
    obj["spec"]["mounts"].append({"mountPoint": "s3://b", "credentials": {"accessKeyId": {"env": "X"}}})
    with pytest.raises(SpecError, match="not both"):
        resource.parse(obj)


def test_cluster_settings_reach_the_workers_document() -> None:
    """spec.cluster (the protocol settings; the controller sets membership, addresses and secret)."""
    obj = _resource()
    obj["spec"]["cluster"] = {"replicas": 2, "peerCopy": "ssd", "readTimeout": "10s", "transfers": 8}
    assert schema_errors(obj) == []
    res = resource.parse(obj)
    assert res.document["spec"]["cluster"] == obj["spec"]["cluster"]
    worker = parse_dataset(resource.document_yaml(res), "workers")
    assert worker.settings["replicas"] == 2 and worker.settings["peer_copy"] == "ssd"
    assert worker.settings["peer_read_timeout"] == 10.0 and worker.settings["peer_transfers"] == 8
    bad = copy.deepcopy(obj)
    bad["spec"]["cluster"]["replicas"] = 9
    assert any(e.startswith("spec.cluster.replicas: ") for e in schema_errors(bad))
    bad["spec"]["cluster"] = {"listen": "0.0.0.0:7070"}  # the controller's to set
    assert any(e.startswith("spec.cluster: ") for e in schema_errors(bad))
    with pytest.raises(SpecError) as info:
        resource.parse(bad)
    assert info.value.field == "spec.cluster.listen"
    bad["spec"]["cluster"] = {"peerCopy": "disk"}
    with pytest.raises(SpecError):
        resource.parse(bad)
