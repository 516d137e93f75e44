"""The cluster rows of the settings table: the rules across them, their mapping onto the peer tier's
settings, and the one-line errors of ``fluidfs mount`` / ``fluidfs worker`` (exit 2) for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluidfs.cli.main import main
from fluidfs.cluster.member import announced_weight, peer_settings
from fluidfs.cluster.node import PeerSettings
from fluidfs.config import build_config
from fluidfs.errors import ConfigError
from fluidfs.spec.parse import parse_dataset


def test_no_cluster_by_default() -> None:
    cfg = build_config({})
    assert not cfg.clustered and peer_settings(cfg) is None


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"peer_listen": "127.0.0.1:7070"}, "--listen needs the cluster's members"),
        ({"peers_file": "/etc/peers"}, "needs this member's peer address"),
        ({"kube_service": "ml/data-cache"}, "needs this member's peer address"),
        (
            {"peer_listen": "0.0.0.0:7070", "peers_file": "/p", "kube_service": "ml/data-cache"},
            "a peers file or a Kubernetes Service, not both",
        ),
    ],
)
def test_rules_across_the_cluster_settings(values: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        build_config(values)


def test_the_settings_become_the_peer_tiers() -> None:
    cfg = build_config(
        {
            "peer_listen": "0.0.0.0:7070",
            "kube_service": "ml/imagenet-cache",
            "member_id": "imagenet-cache-0",
            "peer_secret_file": "/etc/fluidfs/peer/secret",
            "replicas": 2,
            "peer_copy": "ssd",
            "handoff_timeout": 90.0,
            "peer_transfers": 8,
            "peer_connect_timeout": 2.0,
            "peer_read_timeout": 6.0,
            "peer_fetch_timeout": 20.0,
            "peer_max_skew": 10.0,
        }
    )
    assert peer_settings(cfg) == PeerSettings(
        listen="0.0.0.0:7070",
        kube_service="ml/imagenet-cache",
        member_id="imagenet-cache-0",
        secret_file="/etc/fluidfs/peer/secret",
        replicas=2,
        peer_copy="ssd",
        handoff_timeout=90.0,
        server_transfers=8,
        client_transfers=8,
        connect_timeout=2.0,
        read_timeout=6.0,
        fetch_timeout=20.0,
        max_skew=10.0,
        weight=0.5,  # no SSD tier: the memory tier's 512 MiB in GiB
    )
    assert announced_weight(build_config({"cache_dir": "/c", "cache_size": 200 << 30})) == 200.0
    assert announced_weight(build_config({"cache_dir": "/c", "peer_weight": 3.0})) == 3.0


def test_a_dataset_document_sets_the_cluster() -> None:
    doc = """
apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata: {name: imagenet}
spec:
  mounts: [{mountPoint: s3://bucket/imagenet}]
  cluster: {peersFile: /etc/fluidfs/peers, listen: "10.0.0.5:7070", replicas: 2, peerCopy: none, handoffTimeout: 2m}
"""
    ds = parse_dataset(doc, "d.yaml")
    cfg = build_config(ds.settings)
    assert (cfg.peers_file, cfg.peer_listen, cfg.replicas, cfg.peer_copy, cfg.handoff_timeout) == (
        "/etc/fluidfs/peers",
        "10.0.0.5:7070",
        2,
        "none",
        120.0,
    )


@pytest.mark.parametrize(
    "flags, problem",
    [
        (
            ["--listen", "127.0.0.1:7070"],
            "--listen needs the cluster's members: --peers FILE or --kube-service NAMESPACE/NAME",
        ),
        (["--kube-service", "ML"], "--kube-service: must be NAMESPACE/NAME (lowercase DNS labels), got 'ML'"),
        (["--replicas", "9"], "--replicas: must be a whole number from 1 to 8, got '9'"),
        (["--peer-copy", "disk"], "--peer-copy: must be memory, ssd or none, got 'disk'"),
        (["--handoff-timeout", "0"], "--handoff-timeout: must be more than 0 seconds, got '0'"),
        (["--member-id", "a b"], "--member-id: must be 1-63 characters of A-Z a-z 0-9 . _ -, got 'a b'"),
        (["--weight", "-1"], "--weight: must be a positive number, got '-1'"),
    ],
)
def test_mount_mistakes_are_one_line_and_exit_2(
    flags: list[str], problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mnt").mkdir()
    assert main(["mount", str(tmp_path), str(tmp_path / "mnt"), *flags]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"fluidfs: error: {problem}\n")


@pytest.mark.parametrize(
    "flags, problem",
    [
        ([], "a worker holds cache for its cluster: give it --cache-dir DIR"),
        (["--cache-dir", "/tmp/c"], "a worker serves a cluster: give --listen HOST:PORT and --peers FILE or"),
        (["--cache-dir", "/tmp/c", "--peers", "/tmp/p"], "joining a cluster needs this member's peer address"),
    ],
)
def test_worker_mistakes_are_one_line_and_exit_2(
    flags: list[str], problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", str(tmp_path), *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"fluidfs: error: {problem}") and err.count("\n") == 1


def test_worker_takes_no_mount_only_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["worker", str(tmp_path), "--uid", "1000"])
    assert ei.value.code == 2
