"""The settings table drives every surface: each row reaches the command line, the Dataset, the CSI
volume attributes and docs/configuration.md as it declares, and a bad value is refused alike
everywhere (one line; exit 2 / SpecError / INVALID_ARGUMENT)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from csi.volumes import RequestError, parse_context
from fluidfs.cli.main import build_parser, main
from fluidfs.cli.options import cli_overrides
from fluidfs.config import SETTINGS, MountConfig, Setting
from fluidfs.config.kinds import count, size
from fluidfs.config.table import check, rows, setting
from fluidfs.errors import SpecError
from fluidfs.spec.parse import parse_dataset
from tools import gen_config_doc

COMMANDS = ("mount", "load")
WITH_CLI = [r for r in SETTINGS if r.cli]
WITH_DATASET = [r for r in SETTINGS if r.dataset]
WITH_CSI = [r for r in SETTINGS if r.csi]


def _ids(rows: list[Setting]) -> list[str]:
    return [r.name for r in rows]


def sample(row: Setting) -> tuple[str, Any]:
    """A value other than the default, as text, and the typed value it means."""
    samples: dict[str, tuple[str, Any]] = {
        "path": ("/var/cache/sample", "/var/cache/sample"),
        "address": ("127.0.0.1:9999", "127.0.0.1:9999"),
        "boolean": ("true", True),
        "choice": ("lru", "lru"),
        "duration": ("2m", 120.0),
        "size": ("8Mi", 8 << 20),
        "whole number": ("3", 3),
        "id": ("4242", 4242),
        "octal mode": ("0640", 0o640),
    }
    return samples[row.kind.name]


def _argv(command: str, tmp_path: Path) -> list[str]:
    return [command, str(tmp_path), str(tmp_path / "mnt")] if command == "mount" else [command, str(tmp_path)]


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _flag_args(row: Setting, text: str) -> list[str]:
    return [str(row.cli)] if row.kind.switch else [str(row.cli), text]


# ----------------------------------------------------------------------------- the table


def test_every_field_is_a_row_and_every_default_reads_back() -> None:
    assert [r.name for r in SETTINGS] == [f.name for f in dataclasses.fields(MountConfig)]
    for row in SETTINGS:
        assert row.parse(row.default) == row.default
        if row.default is not None and not row.kind.switch:
            assert row.parse_arg(row.show_default()) == row.default, row.name  # shown as it is written


def test_a_new_setting_is_one_declaration() -> None:
    @dataclasses.dataclass(frozen=True)
    class Peer:
        replicas: int = setting(
            2, count(1, 16), "copies", group="cache", cli="--replicas", dataset="spec.cluster.replicas", csi="replicas"
        )
        copy_size: int = setting(4 << 20, size(), "largest copy", group="cache", unit="bytes")

    (replicas, copy_size) = rows(Peer)
    assert (replicas.name, replicas.default, replicas.section, replicas.key) == ("replicas", 2, "cluster", "replicas")
    assert replicas.parse_arg("3") == 3 and copy_size.show_default() == "4Mi"
    with pytest.raises(ValueError, match="must be a whole number from 1 to 16, got '17'"):
        replicas.parse_arg("17")


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"cli": "--uid"}, "--uid is also used by uid"),
        ({"csi": "uid"}, "csi:uid is also used by uid"),
        ({"dataset": "spec.cache"}, "the Dataset field must be spec.<section>.<key>"),
        ({"cli": None, "csi": "peerCopy"}, "a CSI attribute is passed on as a flag of mount"),
        ({"group": "nowhere"}, "unknown group 'nowhere'"),
        ({"cli": "-x"}, "the flag must start with '--'"),
    ],
)
def test_declaration_mistakes_are_refused(change: dict[str, Any], problem: str) -> None:
    extra = dataclasses.replace(SETTINGS[0], name="extra", cli="--extra", csi=None, dataset=None)
    with pytest.raises(TypeError, match=problem):
        check([*SETTINGS, dataclasses.replace(extra, **change)])


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("row", WITH_CLI, ids=_ids(WITH_CLI))
def test_every_flag_reaches_its_commands_and_only_those(row: Setting, tmp_path: Path) -> None:
    text, value = sample(row)
    for command in COMMANDS:
        argv = _argv(command, tmp_path) + _flag_args(row, text)
        if command in row.commands:
            assert cli_overrides(_parse(argv)) == {row.name: value} | (
                {"metrics_addr": None} if command == "load" else {}  # load's own default: no endpoint
            )
        else:
            with pytest.raises(SystemExit) as ei:
                _parse(argv)
            assert ei.value.code == 2


def test_help_shows_defaults_and_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["mount", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--block-size SIZE" in text and "(default 4Mi, between 1Mi and 64Mi)" in text
    assert "--file-mode OCTAL" in text and "(default 0444, 0 to 7777)" in text


# ----------------------------------------------------------------------------- the Dataset


@pytest.mark.parametrize("row", WITH_DATASET, ids=_ids(WITH_DATASET))
def test_every_dataset_field_reaches_the_config(row: Setting) -> None:
    text, value = sample(row)
    doc = {
        "apiVersion": "fluidfs.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "d"},
        "spec": {"mounts": [{"mountPoint": "s3://b"}], row.section: {row.key: text}},
    }
    ds = parse_dataset(yaml.safe_dump(doc), "d.yaml")
    assert ds.settings == {row.name: value}


def test_unknown_setting_fields_get_a_suggestion() -> None:
    doc = "apiVersion: fluidfs.io/v1alpha1\nkind: Dataset\nmetadata: {name: d}\nspec:\n"
    doc += "  mounts: [{mountPoint: s3://b}]\n  permissions: {fileMod: '0444'}\n"
    with pytest.raises(
        SpecError, match=r"^d.yaml: spec.permissions.fileMod: unknown field; did you mean 'fileMode'\?$"
    ):
        parse_dataset(doc, "d.yaml")


# ----------------------------------------------------------------------------- CSI attributes


@pytest.mark.parametrize("row", WITH_CSI, ids=_ids(WITH_CSI))
def test_every_csi_attribute_becomes_its_flag(row: Setting, tmp_path: Path) -> None:
    text, value = sample(row)
    req = parse_context({"url": "s3://b", str(row.csi): text})
    assert list(req.cache_args) == [row.cli, text]
    assert cli_overrides(_parse(_argv("mount", tmp_path) + list(req.cache_args))) == {row.name: value}


# ----------------------------------------------------------------------------- the reference


def test_the_reference_is_current_and_lists_every_surface() -> None:
    assert gen_config_doc.DOC.read_text() == gen_config_doc.render(), "run: python -m tools.gen_config_doc"
    assert gen_config_doc.main(["--check"]) == 0
    text = gen_config_doc.DOC.read_text()
    for row in SETTINGS:
        line = next(line for line in text.splitlines() if line.startswith(f"| `{row.name}` |"))
        for surface in (row.cli, row.dataset, row.csi):
            assert surface is None or f"`{surface}" in line, (row.name, surface)


# ----------------------------------------------------------------------------- bad values, everywhere

BAD = [
    ("uid", "--uid", "uid", "-1", "must be a whole number from 0 to 4294967294, got '-1'"),
    ("gid", "--gid", "gid", "4294967295", "must be a whole number from 0 to 4294967294, got '4294967295'"),
    ("uid", "--uid", "uid", "1e3", "must be a whole number from 0 to 4294967294, got '1e3'"),
    ("fileMode", "--file-mode", "fileMode", "040444", "must be octal permission bits from 0 to 7777, got '040444'"),
    ("fileMode", "--file-mode", "fileMode", "0177777", "must be octal permission bits from 0 to 7777, got '0177777'"),
    ("dirMode", "--dir-mode", "dirMode", "0o10000", "must be octal permission bits from 0 to 7777, got '0o10000'"),
    ("dirMode", "--dir-mode", "dirMode", "rwxr-xr-x", "must be octal permission bits from 0 to 7777, got 'rwxr-xr-x'"),
]


@pytest.mark.parametrize("key, flag, attr, value, problem", BAD)
def test_bad_ids_and_modes_from_the_command_line(
    key: str, flag: str, attr: str, value: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mnt").mkdir()
    assert main(["mount", str(tmp_path), str(tmp_path / "mnt"), flag, value]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"fluidfs: error: {flag}: {problem}\n")


@pytest.mark.parametrize("key, flag, attr, value, problem", BAD)
def test_bad_ids_and_modes_from_a_dataset(key: str, flag: str, attr: str, value: str, problem: str) -> None:
    doc = (
        "apiVersion: fluidfs.io/v1alpha1\nkind: Dataset\nmetadata: {name: d}\nspec:\n  mounts: [{mountPoint: s3://b}]\n"
    )
    doc += f"  permissions: {{{key}: '{value}'}}\n"
    with pytest.raises(SpecError) as ei:
        parse_dataset(doc, "d.yaml")
    assert str(ei.value) == f"d.yaml: spec.permissions.{key}: {problem}"


def test_bad_ids_and_modes_as_yaml_numbers() -> None:
    head = (
        "apiVersion: fluidfs.io/v1alpha1\nkind: Dataset\nmetadata: {name: d}\nspec:\n  mounts: [{mountPoint: s3://b}]\n"
    )
    for body, problem in (
        ("uid: -1", "uid: must be a whole number from 0 to 4294967294, got -1"),
        ("gid: true", "gid: must be a whole number from 0 to 4294967294, got True"),
        ("fileMode: 040444", "fileMode: must be octal permission bits from 0 to 7777, got 040444"),
        ("dirMode: 0177777", "dirMode: must be octal permission bits from 0 to 7777, got 0177777"),
    ):
        with pytest.raises(SpecError) as ei:
            parse_dataset(head + f"  permissions: {{{body}}}\n", "d.yaml")
        assert str(ei.value) == f"d.yaml: spec.permissions.{problem}"
    ok = parse_dataset(head + "  permissions: {fileMode: 0440, dirMode: 0o550, uid: 4294967294}\n", "d.yaml")
    assert ok.settings == {"file_mode": 0o440, "dir_mode": 0o550, "uid": 4294967294}


@pytest.mark.parametrize("key, flag, attr, value, problem", BAD)
def test_bad_ids_and_modes_as_csi_attributes(key: str, flag: str, attr: str, value: str, problem: str) -> None:
    with pytest.raises(RequestError) as ei:
        parse_context({"url": "s3://b", attr: value})
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ei.value.message == f"{attr}: {problem}"


def test_the_dataset_schema_exports_every_field_as_json_schema() -> None:
    from fluidfs.spec.schema import dataset_model

    schema = dataset_model().model_json_schema(by_alias=True)
    defs = schema["$defs"]
    for row in WITH_DATASET:
        prop = defs[f"{row.section.title()}Doc"]["properties"][row.key]
        assert row.help in prop["description"], row.name
    assert defs["MountDoc"]["properties"]["mountPoint"]["type"] == "string"
    assert defs["PermissionsDoc"]["additionalProperties"] is False
