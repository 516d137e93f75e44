"""A volume with ``clusterService`` makes its node daemon a cluster member: the supervisor adds the
listen address (the service's port, the same on every node), its member id and the peer secret file,
refuses what cannot work (no ``peerSecret``, no member id, a second mount of one service), and
publishes the port as a metric for fluidfs-controller."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from csi import metrics, peers
from csi.mounts import MountManager
from csi.state import SharedMount, State, StateStore
from csi.volumes import RequestError, parse_context

PORTS = (7100, 7999)
SERVICE = "ml/imagenet-cache"


def shared(key: str, *args: str) -> SharedMount:
    return SharedMount(key=key, mountpoint=f"/m/{key}", source=f"/d/{key}/dataset.yaml", args=list(args))


def test_the_port_of_a_service_is_the_same_everywhere_and_inside_the_range() -> None:
    port = peers.preferred_port(SERVICE, PORTS)
    assert 7100 <= port <= 7999 and port == peers.preferred_port(SERVICE, PORTS)
    assert peers.choose_port(SERVICE, [], PORTS) == port
    assert peers.choose_port(SERVICE, [port], PORTS) == (port + 1 if port < 7999 else 7100)
    with pytest.raises(RequestError) as ei:
        peers.choose_port(SERVICE, [5], (5, 5))
    assert ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("text", ["7100", "9-8", "0-10", "1-70000", "a-b", ""])
def test_bad_port_ranges(text: str) -> None:
    with pytest.raises(ValueError, match="--peer-ports"):
        peers.parse_ports(text)


def test_cluster_args() -> None:
    plain = ["--cache-size", "1Gi"]
    assert peers.cluster_args(plain, {}, [], ports=PORTS, member_id="") == plain
    req = parse_context({"url": "s3://b/p", "clusterService": SERVICE, "peerCopy": "none"})
    assert list(req.cache_args) == ["--kube-service", SERVICE, "--peer-copy", "none"]
    files = {"peerSecret": "/d/k/secrets/peerSecret", "accessKeyId": "/d/k/secrets/accessKeyId"}
    args = peers.cluster_args(req.cache_args, files, [], ports=PORTS, member_id="fluidfs-mounter-x7")
    port = peers.preferred_port(SERVICE, PORTS)
    assert args == [
        *req.cache_args, "--listen", f"0.0.0.0:{port}", "--member-id", "fluidfs-mounter-x7",
        "--peer-secret-file", "/d/k/secrets/peerSecret",
    ]  # fmt: skip
    # another dataset of the node holds the port: the next one
    other = shared("k2", "--kube-service", "ml/other", "--listen", f"0.0.0.0:{port}")
    again = peers.cluster_args(req.cache_args, files, [other], ports=PORTS, member_id="p")
    assert peers.flag_value(again, "--listen") != f"0.0.0.0:{port}"
    cases: list[tuple[str, dict[str, str], list[SharedMount], str, grpc.StatusCode]] = [
        ("under the key peerSecret", {}, [], "p", grpc.StatusCode.INVALID_ARGUMENT),
        ("no member id", files, [], "", grpc.StatusCode.FAILED_PRECONDITION),
        ("already served on this node by dataset mount k3", files, [shared("k3", "--kube-service", SERVICE)], "p",
         grpc.StatusCode.FAILED_PRECONDITION),
    ]  # fmt: skip
    for problem, secret_files, others, member_id, code in cases:
        with pytest.raises(RequestError, match=problem) as ei:
            peers.cluster_args(req.cache_args, secret_files, others, ports=PORTS, member_id=member_id)
        assert ei.value.code == code


def test_a_clustered_dataset_is_prepared_with_its_flags_and_a_refused_one_leaves_nothing(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "state"))
    mm = MountManager(store, State(), cache_root=str(tmp_path / "cache"), member_id="mounter-a")
    req = parse_context({"url": "s3://b/p", "clusterService": SERVICE})
    m = mm._prepare("key1", req, {"peerSecret": "s" * 32}, mm.reservations.reserve("key1", req))
    secret_file = os.path.join(m.secret_dir, "peerSecret")
    assert open(secret_file).read() == "s" * 32
    assert peers.service_of(m) == SERVICE and peers.port_of(m) == peers.preferred_port(SERVICE, PORTS)
    assert peers.flag_value(m.args, "--member-id") == "mounter-a"
    assert peers.flag_value(m.args, "--peer-secret-file") == secret_file
    mm.state.mounts["key1"] = m
    with pytest.raises(RequestError, match="already served"):
        mm._prepare("key2", req, {"peerSecret": "t" * 32}, mm.reservations.reserve("key2", req))
    other = parse_context({"url": "s3://b/q", "clusterService": "ml/q"})
    with pytest.raises(RequestError, match="peerSecret"):
        mm._prepare("key3", other, {"accessKeyId": "AK"}, mm.reservations.reserve("key3", other))
    assert sorted(os.listdir(tmp_path / "state" / "datasets")) == ["key1"]  # no secrets left by refusals


def test_the_port_is_published_while_mounted() -> None:
    m = shared("k", "--kube-service", SERVICE, "--listen", "0.0.0.0:7321")

    def value() -> float | None:
        return metrics.REGISTRY.get_sample_value("fluidfs_csi_cluster_port", {"service": SERVICE})

    peers.publish(m)
    assert value() == 7321
    peers.unpublish(m)
    assert value() is None
    peers.publish(shared("plain", "--cache-size", "1Gi"))  # not clustered: nothing
    peers.unpublish(shared("plain"))


def test_peer_ports_flag_mistake_is_a_usage_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "csi", "--endpoint", f"unix://{tmp_path}/s.sock", "--state-dir", str(tmp_path),
         "--mode", "mounter", "--peer-ports", "9000-8000"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--peer-ports" in r.stderr and len(r.stderr.strip().splitlines()) == 1
