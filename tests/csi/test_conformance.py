"""The plugin against the error tables of the CSI spec (v1.9), RPC by RPC.

The table checked (also in docs/kubernetes.md, "CSI conformance"); "n/a" rows cannot happen for
volumes that are views of datasets.  Rows marked * are tested here, the others in
``test_grpc.py`` (requests rejected before any mount) and ``test_lifecycle.py`` (idempotency).

| RPC | condition | code |
|---|---|---|
| Probe | a dependency is missing (/dev/fuse, the fluidfs CLI)* | FAILED_PRECONDITION |
| Probe | the mount supervisor does not answer (forwarding plugin) | OK, ready=false |
| CreateVolume | name, volume_capabilities missing; malformed or unsupported capability | INVALID_ARGUMENT |
| CreateVolume | volume_content_source given (not supported) | INVALID_ARGUMENT |
| CreateVolume | name exists with other parameters, capacity* or topology* | ALREADY_EXISTS |
| CreateVolume | the same request again* | OK, the same volume |
| CreateVolume | capacity_range negative or required > limit | OUT_OF_RANGE |
| CreateVolume | source does not exist / topology cannot be met | n/a |
| DeleteVolume | volume_id missing | INVALID_ARGUMENT |
| DeleteVolume | volume unknown | OK |
| ValidateVolumeCapabilities | volume unknown | NOT_FOUND |
| ValidateVolumeCapabilities | a capability not supported | OK, no ``confirmed``, a message |
| ControllerPublish/Unpublish, ListVolumes, GetCapacity, snapshots, expansion | not offered | UNIMPLEMENTED |
| NodeStageVolume | volume_id, staging_target_path, volume_capability missing or malformed | INVALID_ARGUMENT |
| NodeStageVolume | no dataset in the volume context (the volume does not exist) | NOT_FOUND |
| NodeStageVolume | staged at that path with another capability or context | ALREADY_EXISTS |
| NodeStageVolume | block or a writer access mode ("Exceeds capabilities") | FAILED_PRECONDITION |
| NodeUnstageVolume | not staged at that path (never, already, or elsewhere)* | OK |
| NodeUnstageVolume | still published (the CO broke the order) | FAILED_PRECONDITION |
| NodePublishVolume | required field missing or malformed | INVALID_ARGUMENT |
| NodePublishVolume | volume not staged on this node | NOT_FOUND |
| NodePublishVolume | published at that target with another capability or readonly | ALREADY_EXISTS |
| NodePublishVolume | "Exceeds capabilities"; staging_target_path missing | FAILED_PRECONDITION |
| NodePublishVolume | another target, MULTI_NODE_... access mode* | OK |
| NodePublishVolume | another target, any other access mode* | FAILED_PRECONDITION |
| NodeUnpublishVolume | not published at that target (never, already)*; never a stat of it* | OK |
| NodeGetVolumeStats | volume or path unknown | NOT_FOUND |
| NodeGetVolumeStats | mount dead or hung | OK, volume_condition abnormal |

Refusals by the node's policy (PERMISSION_DENIED) and budgets (RESOURCE_EXHAUSTED) are not in
the spec's tables; they are tested in ``test_security.py`` and ``test_resources.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from csi import TOPOLOGY_KEY
from csi._gen import csi_pb2 as pb
from tests.csi.conftest import plugin_env
from tests.support.csi import (
    DATASET,
    Mode,
    Plugin,
    cap,
    daemon_pids,
    expect_code,
    layers,
    params,
    publish_req,
    read_tree,
    stage_req,
)
from tests.support.fuse import needs_fuse

PARAMS = {"url": "s3://bucket/train", "endpoint": "http://127.0.0.1:1"}
FAST = 10.0  # "answered without waiting for the hung mount" (a stat of it would never return)


def test_probe_fails_without_a_required_dependency(workdir: Path) -> None:
    env = {**plugin_env(), "FLUIDFS_CSI_FLUIDFS_CMD": "/nonexistent/fluidfs"}
    p = Plugin(workdir, env=env).start()
    try:
        e = expect_code(grpc.StatusCode.FAILED_PRECONDITION, p.identity.Probe, pb.ProbeRequest())
        assert "/nonexistent/fluidfs" in (e.details() or "")
    finally:
        p.stop()


def test_create_volume_same_name_other_capacity_or_node(start_plugin: Callable[..., Plugin]) -> None:
    p = start_plugin()

    def create(name: str, required: int, limit: int = 0, **extra: str) -> pb.CreateVolumeRequest:
        return pb.CreateVolumeRequest(
            name=name,
            volume_capabilities=[cap()],
            parameters={**PARAMS, **extra},
            capacity_range=pb.CapacityRange(required_bytes=required, limit_bytes=limit),
        )

    vol = p.controller.CreateVolume(create("pvc-cap", 1 << 30)).volume
    assert p.controller.CreateVolume(create("pvc-cap", 1 << 30)).volume == vol
    assert p.controller.CreateVolume(create("pvc-cap", 1 << 29, 1 << 31)).volume == vol  # the range holds it
    for required, limit in ((2 << 30, 2 << 30), (1 << 29, 1 << 29)):
        e = expect_code(grpc.StatusCode.ALREADY_EXISTS, p.controller.CreateVolume, create("pvc-cap", required, limit))
        assert "capacity" in (e.details() or "")

    def pinned(node: str) -> pb.CreateVolumeRequest:
        req = create("pvc-pin", 1 << 30, pinToNode="true")
        topo = pb.Topology(segments={TOPOLOGY_KEY: node})
        req.accessibility_requirements.CopyFrom(pb.TopologyRequirement(requisite=[topo], preferred=[topo]))
        return req

    first = p.controller.CreateVolume(pinned("node-1")).volume
    assert [dict(t.segments) for t in first.accessible_topology] == [{TOPOLOGY_KEY: "node-1"}]
    either = pinned("node-2")
    either.accessibility_requirements.requisite.append(pb.Topology(segments={TOPOLOGY_KEY: "node-1"}))
    assert p.controller.CreateVolume(either).volume == first, "the volume stays on the node it was created for"
    e = expect_code(grpc.StatusCode.ALREADY_EXISTS, p.controller.CreateVolume, pinned("node-2"))
    assert "node-1" in (e.details() or "")


@needs_fuse
def test_node_calls_on_paths_the_volume_is_not_at(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin()
    ctx = params(s3)
    stp, tp = workdir / "staging", workdir / "pods" / "p1" / "data"
    stp.mkdir()
    tp.parent.mkdir(parents=True)
    p.node.NodeStageVolume(stage_req("pv-1", str(stp), ctx, s3), timeout=120)
    p.node.NodePublishVolume(publish_req("pv-1", str(stp), str(tp), ctx), timeout=120)
    # unstage/unpublish at paths the volume is not at, and of volumes never seen: OK, nothing touched
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    for vid in ("pv-1", "pv-never"):
        p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(elsewhere)))
        p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(elsewhere / "t")))
    p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id="pv-never", staging_target_path=str(stp)))
    p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id="pv-never", target_path=str(tp)))
    assert read_tree(str(stp)) == DATASET and read_tree(str(tp)) == DATASET, "another volume's paths are left alone"
    assert elsewhere.is_dir(), "a staging directory is kubelet's"
    # a fluidfs bind left at a target no volume knows (a lost state file): removed, with its directory
    stray = workdir / "pods" / "p9" / "data"
    stray.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(tp), str(stray)], check=True)
    p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id="pv-lost", target_path=str(stray)))
    assert layers(str(stray)) == 0 and not stray.exists()


@needs_fuse
def test_unpublish_of_an_unknown_volume_never_stats_a_hung_mount(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin()
    ctx = params(s3)
    stp, tp = workdir / "staging", workdir / "pods" / "p1" / "data"
    stp.mkdir()
    tp.parent.mkdir(parents=True)
    p.node.NodeStageVolume(stage_req("pv-h", str(stp), ctx, s3), timeout=120)
    p.node.NodePublishVolume(publish_req("pv-h", str(stp), str(tp), ctx), timeout=120)
    stray = workdir / "pods" / "p2" / "data"
    stray.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(tp), str(stray)], check=True)
    [pid] = daemon_pids(workdir / "state")
    os.kill(pid, signal.SIGSTOP)  # every stat of the mount hangs from now on
    try:
        for vid, path in (("pv-other", tp), ("pv-lost", stray), ("pv-h", workdir / "pods" / "p3" / "data")):
            began = time.monotonic()
            p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=str(path)), timeout=60)
            assert time.monotonic() - began < FAST, f"unpublish of {vid} at {path} waited for the hung mount"
        assert layers(str(tp)) == 1, "the known volume's target is left alone"
        assert layers(str(stray)) == 0
    finally:
        os.kill(pid, signal.SIGCONT)


@needs_fuse
@pytest.mark.parametrize(
    "mode, second",
    [(Mode.MULTI_NODE_READER_ONLY, None), (Mode.SINGLE_NODE_READER_ONLY, grpc.StatusCode.FAILED_PRECONDITION)],
    ids=["multi-node", "single-node"],
)
def test_second_target_by_access_mode(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin], mode: int, second: grpc.StatusCode | None
) -> None:
    p = start_plugin()
    ctx = params(s3)
    stp = workdir / "staging"
    stp.mkdir()
    stage = stage_req("pv-m", str(stp), ctx, s3)
    stage.volume_capability.CopyFrom(cap(mode))
    p.node.NodeStageVolume(stage, timeout=120)
    targets = [workdir / "pods" / f"p{i}" / "data" for i in (1, 2)]
    reqs = []
    for t in targets:
        t.parent.mkdir(parents=True)
        req = publish_req("pv-m", str(stp), str(t), ctx)
        req.volume_capability.CopyFrom(cap(mode))
        reqs.append(req)
    p.node.NodePublishVolume(reqs[0], timeout=120)
    p.node.NodePublishVolume(reqs[0], timeout=120)  # the same target again: idempotent
    if second is None:
        p.node.NodePublishVolume(reqs[1], timeout=120)
        assert read_tree(str(targets[1])) == DATASET
    else:
        e = expect_code(second, p.node.NodePublishVolume, reqs[1])
        assert str(targets[0]) in (e.details() or "")
        assert not targets[1].exists()
