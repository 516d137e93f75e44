"""Configuration: defaults ← Dataset spec.cache/spec.metadata ← command line."""

from __future__ import annotations

import math

import pytest

from fluidfs.config import MountConfig, build_config
from fluidfs.errors import ConfigError, SpecError
from fluidfs.spec import parse_dataset

DOC = """
apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata: {name: cfg}
spec:
  mounts: [{mountPoint: "s3://bucket/prefix", path: /}]
  cache:
    directory: /var/cache/x
    size: 20Gi
    memorySize: 1Gi
    blockSize: 8Mi
    eviction: lru
    readahead: 64Mi
    freeSpaceFloor: 2Gi
    prefetchSiblings: 4
    metricsAddr: 127.0.0.1:9100
  metadata: {ttl: indefinite, negativeTtl: 30s}
"""


def test_every_cache_knob_from_the_spec() -> None:
    cfg = build_config(parse_dataset(DOC, "d.yaml"))
    G = 1 << 30
    assert (cfg.cache_dir, cfg.cache_size, cfg.memory_size, cfg.block_size) == ("/var/cache/x", 20 * G, G, 8 << 20)
    assert (cfg.eviction, cfg.readahead, cfg.free_space_floor, cfg.sibling_prefetch) == ("lru", 64 << 20, 2 * G, 4)
    assert cfg.metrics_addr == "127.0.0.1:9100"
    assert math.isinf(cfg.metadata_ttl) and cfg.negative_ttl == 30
    assert cfg.kernel_timeout == 86400.0


def test_command_line_wins_and_defaults_apply() -> None:
    ds = parse_dataset(DOC, "d.yaml")
    cfg = build_config(ds, {"block_size": 4 << 20, "eviction": "none", "metrics_addr": None, "cache_dir": None})
    assert cfg.block_size == 4 << 20 and cfg.eviction == "none" and cfg.cache_dir == "/var/cache/x"
    plain = build_config(parse_dataset(DOC.split("  cache:")[0], "p.yaml"))
    assert plain == MountConfig()


def test_metrics_can_be_disabled_from_the_spec() -> None:
    cfg = build_config(parse_dataset(DOC.replace("127.0.0.1:9100", "none"), "d.yaml"))
    assert cfg.metrics_addr is None


@pytest.mark.parametrize(
    "old,new,field",
    [
        ("prefetchSiblings: 4", "prefetchSiblings: -1", "spec.cache.prefetchSiblings"),
        ("metricsAddr: 127.0.0.1:9100", "metricsAddr: nowhere", "spec.cache.metricsAddr"),
        ("freeSpaceFloor: 2Gi", "freeSpaceFloor: lots", "spec.cache.freeSpaceFloor"),
    ],
)
def test_bad_cache_values_name_the_field(old: str, new: str, field: str) -> None:
    with pytest.raises(SpecError) as ei:
        parse_dataset(DOC.replace(old, new), "d.yaml")
    assert ei.value.field == field


def test_cross_field_rules() -> None:
    ds = parse_dataset(DOC, "d.yaml")
    with pytest.raises(ConfigError):
        build_config(ds, {"memory_size": 1 << 20})  # must hold two blocks
    with pytest.raises(ConfigError):
        build_config(ds, {"cache_dir": "relative/dir"})
