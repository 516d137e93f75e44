"""The cache location model: dataset keys (same digits as the CSI plugin's), bucketed label
values, the bound on labels per node, clean-up of gone datasets, and reading labels back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csi.volumes import parse_context, volume_id_for
from fluidfs.control.sched.locations import (
    MIB,
    CacheLocations,
    LabelPolicy,
    bucket_mib,
    dataset_key_for_url,
    desired_labels,
    key_of_label,
    label_name,
    label_patch,
    parse_label_value,
)
from fluidfs.spec.identity import KEY_LENGTH, dataset_key

GIB = 1024 * MIB
DOC = """
apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata: {name: mixed}
spec:
  mounts:
    - {mountPoint: "s3://bucket/train", name: train}
    - {mountPoint: "https://example.org/labels", name: labels}
  cache: {size: 10Gi}
"""
CONTEXTS = [
    {"url": "s3://training-data/imagenet"},
    {"url": "s3://training-data/imagenet", "endpoint": "http://minio:9000", "options.addressing_style": "path"},
    {"url": " s3://training-data/imagenet ", "region": "eu-west-1", "cacheSize": "200Gi", "subPath": "val"},
    {"url": "https://example.org/data", "csi.storage.k8s.io/ephemeral": "true", "memorySize": "1Gi"},
    {"dataset": DOC},
    {"dataset": DOC.replace("10Gi", "99Gi"), "name": "other-name", "metadataTTL": "60"},
]


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_key_is_the_csi_plugins_dataset_digest(ctx: dict[str, str]) -> None:
    key = dataset_key(ctx)
    assert key == parse_context(ctx).dataset_digest()[:KEY_LENGTH]
    assert volume_id_for("pvc-1", parse_context(ctx)).startswith(f"fluidfs-{key}-")


def test_key_ignores_cache_settings_and_credentials_but_not_the_data() -> None:
    assert dataset_key(CONTEXTS[4]) == dataset_key(CONTEXTS[5])
    assert dataset_key({"url": "s3://a/b"}) != dataset_key({"url": "s3://a/c"})
    assert dataset_key({"url": "s3://a/b"}) == dataset_key_for_url("s3://a/b")


@pytest.mark.parametrize(
    "ctx",
    [{}, {"url": "s3://a", "dataset": DOC}, {"dataset": "kind: Other"}, {"dataset": "{not yaml"}, {"dataset": "- a"}],
)
def test_no_key_for_attributes_naming_no_dataset(ctx: dict[str, str]) -> None:
    assert dataset_key(ctx) is None


def test_label_names_round_trip_and_foreign_labels_are_not_ours() -> None:
    key = dataset_key_for_url("s3://a/b")
    assert key_of_label(label_name(key)) == key
    assert len(label_name(key).split("/")[1]) <= 63
    for other in ["kubernetes.io/hostname", "cache.fluidfs.io/short", "cache.fluidfs.io/" + "G" * KEY_LENGTH]:
        assert key_of_label(other) is None


def test_bucket_values() -> None:
    sizes = (0, 1, 7, 8, 9, 10, 11, 12, 15, 16, 100)
    assert [bucket_mib(n * MIB) for n in sizes] == [0, 1, 7, 8, 8, 10, 10, 12, 14, 16, 96]
    assert bucket_mib(MIB - 1) == 0
    assert parse_label_value("96") == 96 * MIB
    assert parse_label_value("9x") is None and parse_label_value("") is None


@given(st.integers(min_value=MIB, max_value=2**50))
def test_bucket_is_a_lower_bound_within_25_percent(nbytes: int) -> None:
    b = bucket_mib(nbytes) * MIB
    assert b <= nbytes
    assert b >= 0.75 * (nbytes // MIB * MIB)


def test_at_most_max_labels_and_never_below_min_bytes() -> None:
    cached = {dataset_key_for_url(f"s3://b/{i}"): (i + 1) * GIB for i in range(30)}
    cached[dataset_key_for_url("s3://b/tiny")] = 10 * MIB
    labels = desired_labels(cached, LabelPolicy(max_labels=5))
    assert len(labels) == 5
    assert sorted(int(v) for v in labels.values()) == [bucket_mib(n * GIB) for n in (26, 27, 28, 29, 30)]
    assert label_name(dataset_key_for_url("s3://b/tiny")) not in desired_labels(cached)
    with pytest.raises(ValueError):
        LabelPolicy(max_labels=-1)


def test_label_patch_adds_updates_and_removes_only_our_labels() -> None:
    a, b, c = (dataset_key_for_url(f"s3://x/{n}") for n in "abc")
    current = {"kubernetes.io/hostname": "n1", label_name(a): "1024", label_name(b): "2048"}
    patch = label_patch(current, {a: GIB, c: 3 * GIB})
    assert patch == {"metadata": {"labels": {label_name(b): None, label_name(c): "3072"}}}
    assert label_patch(current, {a: GIB, b: 2 * GIB}) is None


def test_cleanup_of_datasets_that_are_gone() -> None:
    a, b = (dataset_key_for_url(f"s3://x/{n}") for n in "ab")
    current = {"team": "ml", label_name(a): "1024", label_name(b): "2048"}
    assert label_patch(current, None, live={a}) == {"metadata": {"labels": {label_name(b): None}}}
    assert label_patch(current, {a: GIB, b: 2 * GIB}, live={a}) == {"metadata": {"labels": {label_name(b): None}}}
    assert label_patch(current, None) is None


def test_model_from_nodes_and_dataset_status() -> None:
    a, b = (dataset_key_for_url(f"s3://x/{n}") for n in "ab")
    nodes: list[dict[str, Any]] = [
        {"metadata": {"name": "n1", "labels": {label_name(a): "1024", label_name(b): "junk", "x": "1"}}},
        {"metadata": {"name": "n2", "labels": {label_name(a): "512"}}},
        {"metadata": {"name": "n3"}},
    ]
    loc = CacheLocations.from_nodes(nodes)
    assert dict(loc.nodes(a)) == {"n1": GIB, "n2": 512 * MIB}
    assert loc.total(a) == GIB + 512 * MIB and loc.total(b) == 0 and list(loc.keys()) == [a]
    precise = loc.with_dataset(a, {"n2": 700 * MIB, "n3": 0})
    assert dict(precise.nodes(a)) == {"n2": 700 * MIB}
    assert precise.node_labels("n2") == {label_name(a): "640"}
    assert loc.with_dataset(a, {}).total(a) == 0
