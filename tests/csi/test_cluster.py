"""A volume with ``clusterService`` through the real plugin: its node daemon mounts the dataset and
serves peers on the service's port as the supervisor's member id, with the volume's ``peerSecret``
(a signed ``/v1/status`` answers; the secret never appears on a command line), and the plugin
publishes the port; without ``peerSecret`` the stage is refused with INVALID_ARGUMENT.

There is no Kubernetes API here: the daemon's EndpointSlice discovery keeps retrying in the
background (logged), which is what a member does while the API server is away."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc

from csi._gen import csi_pb2 as pb
from fluidfs.cluster.peerstatus import ask
from fluidfs.util.prom import parse_samples, total
from tests.support.csi import BUCKET, DATASET, Plugin, cap, expect_code, params, read_tree, secrets
from tests.support.fuse import needs_fuse
from tests.support.net import free_ports

pytestmark = needs_fuse

SERVICE = "ml/imagenet-cache"
PEER_SECRET = "peer-secret-for-the-test-0123456789"


def stage(vid: str, stp: str, ctx: dict[str, str], sec: dict[str, str]) -> pb.NodeStageVolumeRequest:
    return pb.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=stp, volume_capability=cap(), volume_context=ctx, secrets=sec
    )


def test_a_clustered_volume_serves_peers_on_its_port(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    port, metrics_port = free_ports(2)
    p = start_plugin("--peer-ports", f"{port}-{port}", "--metrics-addr", f"127.0.0.1:{metrics_port}")
    ctx = params(s3, clusterService=SERVICE, peerCopy="none")
    stp = str(workdir / "staging" / "pv1")
    os.makedirs(stp)
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, p.node.NodeStageVolume, stage("v1", stp, ctx, secrets(s3)))
    p.node.NodeStageVolume(stage("v1", stp, ctx, {**secrets(s3), "peerSecret": PEER_SECRET}))
    assert read_tree(stp) == DATASET

    secret_file = workdir / "peer-secret"
    secret_file.write_text(PEER_SECRET)
    st = ask(f"127.0.0.1:{port}", str(secret_file))
    assert "error" not in st, st
    assert st["dataset"] == BUCKET, st  # the dataset is named after the bucket
    assert st["copy"] == "none" and st["members"] == []  # no API server: no members yet
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert total(parse_samples(text), "fluidfs_csi_cluster_port", service=SERVICE) == port
    cmdlines = [open(f"/proc/{pid}/cmdline", "rb").read() for pid in os.listdir("/proc") if pid.isdigit()]
    mine = [c for c in cmdlines if f"0.0.0.0:{port}".encode() in c and b"--member-id\0node-1" in c]
    assert mine and not any(PEER_SECRET.encode() in c for c in cmdlines)

    p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id="v1", staging_target_path=stp))
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert total(parse_samples(text), "fluidfs_csi_cluster_port", service=SERVICE) == 0
