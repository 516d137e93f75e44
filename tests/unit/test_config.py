"""Configuration: defaults ← Dataset spec.cache/spec.metadata/spec.permissions ← command line, validated once."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from fluidfs.config import MountConfig, build_config, validate
from fluidfs.errors import ConfigError, SpecError
from fluidfs.spec.parse import parse_dataset

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
  permissions: {uid: 1000, gid: 100, fileMode: 0440, dirMode: "0550"}
"""


def test_every_setting_from_the_spec() -> None:
    cfg = build_config(parse_dataset(DOC, "d.yaml").settings)
    G = 1 << 30
    assert (cfg.cache_dir, cfg.cache_size, cfg.memory_size, cfg.block_size) == ("/var/cache/x", 20 * G, G, 8 << 20)
    assert (cfg.eviction, cfg.readahead, cfg.free_space_floor, cfg.sibling_prefetch) == ("lru", 64 << 20, 2 * G, 4)
    assert cfg.metrics_addr == "127.0.0.1:9100"
    assert math.isinf(cfg.metadata_ttl) and cfg.negative_ttl == 30
    assert cfg.kernel_timeout == 86400.0
    assert (cfg.uid, cfg.gid, cfg.file_mode, cfg.dir_mode) == (1000, 100, 0o440, 0o550)


def test_command_line_wins_and_defaults_apply() -> None:
    ds = parse_dataset(DOC, "d.yaml")
    cfg = build_config(ds.settings, {"block_size": 4 << 20, "eviction": "none", "uid": 7})
    assert cfg.block_size == 4 << 20 and cfg.eviction == "none" and cfg.cache_dir == "/var/cache/x"
    assert cfg.uid == 7 and cfg.gid == 100
    plain = build_config(parse_dataset(DOC.split("  cache:")[0], "p.yaml").settings)
    assert plain == MountConfig() == build_config()


def test_metrics_can_be_disabled_from_the_spec() -> None:
    cfg = build_config(parse_dataset(DOC.replace("127.0.0.1:9100", "none"), "d.yaml").settings)
    assert cfg.metrics_addr is None


@pytest.mark.parametrize(
    "old,new,field",
    [
        ("prefetchSiblings: 4", "prefetchSiblings: -1", "spec.cache.prefetchSiblings"),
        ("metricsAddr: 127.0.0.1:9100", "metricsAddr: nowhere", "spec.cache.metricsAddr"),
        ("freeSpaceFloor: 2Gi", "freeSpaceFloor: lots", "spec.cache.freeSpaceFloor"),
        ("uid: 1000", "uid: -1", "spec.permissions.uid"),
        ("fileMode: 0440", "fileMode: 040444", "spec.permissions.fileMode"),
    ],
)
def test_bad_values_name_the_field(old: str, new: str, field: str) -> None:
    with pytest.raises(SpecError) as ei:
        parse_dataset(DOC.replace(old, new), "d.yaml")
    assert ei.value.field == field


def test_cross_field_rules() -> None:
    settings = parse_dataset(DOC, "d.yaml").settings
    with pytest.raises(ConfigError, match="^memory size 1Mi must hold at least two blocks of 8Mi$"):
        build_config(settings, {"memory_size": 1 << 20})
    with pytest.raises(ConfigError, match="^cache_dir: must be an absolute path, got 'relative/dir'$"):
        build_config(settings, {"cache_dir": "relative/dir"})
    with pytest.raises(ConfigError, match="^unknown setting 'cache_sise'$"):
        build_config({"cache_sise": 1})


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("uid", -1, "uid: must be a whole number from 0 to 4294967294, got -1"),
        ("gid", 2**32 - 1, "gid: must be a whole number from 0 to 4294967294, got 4294967295"),
        ("file_mode", 0o40444, "file_mode: must be octal permission bits from 0 to 7777, got 040444"),
        ("dir_mode", 0o177777, "dir_mode: must be octal permission bits from 0 to 7777, got 0177777"),
        ("block_size", 512 << 10, "block_size: must be between 1Mi and 64Mi, got 524288"),
        ("eviction", "fifo", "eviction: must be 'lru' or 'none', got 'fifo'"),
        ("metadata_ttl", math.nan, "metadata_ttl: invalid duration nan: must be >= 0"),
        ("source_threads", 0, "source_threads: must be a whole number >= 1, got 0"),
    ],
)
def test_a_config_built_in_code_is_checked_too(field: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as ei:
        validate(MountConfig(**{field: value}))  # type: ignore[arg-type]
    assert str(ei.value) == problem


def test_the_edges_of_the_ranges_are_accepted() -> None:
    cfg = validate(MountConfig(uid=2**32 - 2, gid=0, file_mode=0o7777, dir_mode=0, block_size=64 << 20))
    assert cfg.uid == 4294967294 and cfg.file_mode == 0o7777


def test_memory_budgets_in_flight() -> None:
    M = 1 << 20
    default = MountConfig()  # 512Mi memory, 4Mi blocks
    assert default.inflight_bytes == 256 * M and default.prefetch_bytes == 128 * M and default.fetch_slots == 32
    small = MountConfig(memory_size=64 * M)
    assert small.inflight_bytes == 32 * M and small.prefetch_bytes == 16 * M and small.fetch_slots == 4
    tiny = MountConfig(memory_size=8 * M)
    assert tiny.inflight_bytes == 16 * M  # at least 4 blocks
    explicit = MountConfig(memory_size=64 * M, inflight_memory=512 * M)
    assert explicit.inflight_bytes == 512 * M and explicit.prefetch_bytes == 128 * M and explicit.fetch_slots == 96
    no_readahead = MountConfig(prefetch_memory=0)
    assert no_readahead.prefetch_bytes == 0 and no_readahead.fetch_slots == 64


def test_request_timeout_and_inflight_memory_are_checked() -> None:
    settings = parse_dataset(DOC, "d.yaml").settings
    assert build_config(settings).request_timeout == 20.0
    assert build_config(settings, {"request_timeout": 5.0}).request_timeout == 5.0
    for bad in (0.0, math.inf):
        with pytest.raises(ConfigError, match="request.timeout"):
            build_config(settings, {"request_timeout": bad})
    with pytest.raises(ConfigError, match="in-flight memory 8Mi must hold at least two blocks"):
        build_config(settings, {"inflight_memory": 8 << 20})  # blocks of 8Mi


def test_flags_for_the_new_settings() -> None:
    from fluidfs.cli.main import build_parser
    from fluidfs.cli.options import cli_overrides

    args = build_parser().parse_args(
        ["mount", "s3://b", "/mnt", "--request-timeout", "1m", "--inflight-memory", "64Mi"]
    )
    over = cli_overrides(args)
    assert over["request_timeout"] == 60.0 and over["inflight_memory"] == 64 << 20
    with pytest.raises(ConfigError, match="--request-timeout"):
        cli_overrides(build_parser().parse_args(["mount", "s3://b", "/mnt", "--request-timeout", "soon"]))


def test_ssd_admission_problems(tmp_path: Path) -> None:
    from fluidfs.cache.ssd import admission_problem

    M = 1 << 20
    assert admission_problem(str(tmp_path / "c"), 10 << 30, 0, 4 * M) is None
    assert "smaller than one block" in (admission_problem(str(tmp_path / "c"), 4 * M, 0, 4 * M) or "")
    st = os.statvfs(tmp_path)
    disk = st.f_blocks * st.f_frsize
    assert "not below the size of the disk" in (admission_problem(str(tmp_path / "c" / "d"), 10 << 30, disk, M) or "")
