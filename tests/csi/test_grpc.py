"""The CSI plugin over its unix socket: Identity, capabilities and the spec's error codes.

These calls never mount anything (every request here is rejected before a mount or concerns
no volume), so they need neither /dev/fuse nor an S3 server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import fluidfs
from csi import DRIVER_NAME, TOPOLOGY_KEY
from csi._gen import csi_pb2 as pb
from csi.daemons import fluidfs_command
from csi.mountops import fuse_usable
from tests.support.csi import Mode, Plugin, cap, cleanup, expect_code

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PARAMS = {"url": "s3://bucket/train", "endpoint": "http://127.0.0.1:1"}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    work = tmp_path_factory.mktemp("csi-grpc")
    p = Plugin(work).start()
    yield p
    p.stop()
    cleanup(str(work))


# -- Identity -----------------------------------------------------------------------------------
def test_plugin_info(plugin: Plugin) -> None:
    info = plugin.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == DRIVER_NAME and info.vendor_version == fluidfs.__version__


def test_plugin_capabilities(plugin: Plugin) -> None:
    caps = plugin.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    types = {c.service.type for c in caps}
    S = pb.PluginCapability.Service
    assert types == {S.CONTROLLER_SERVICE, S.VOLUME_ACCESSIBILITY_CONSTRAINTS}


def test_probe_reflects_fuse_and_cli(plugin: Plugin) -> None:
    if fuse_usable() and fluidfs_command() is not None:
        plugin.wait_ready()
    else:
        assert plugin.identity.Probe(pb.ProbeRequest()).ready.value is False


def test_node_info_and_capabilities(plugin: Plugin) -> None:
    info = plugin.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == "node-1"
    assert dict(info.accessible_topology.segments) == {TOPOLOGY_KEY: "node-1"}
    R = pb.NodeServiceCapability.RPC
    got = {c.rpc.type for c in plugin.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities}
    assert got == {R.STAGE_UNSTAGE_VOLUME, R.GET_VOLUME_STATS}


def test_controller_capabilities_and_unimplemented(plugin: Plugin) -> None:
    R = pb.ControllerServiceCapability.RPC
    caps = plugin.controller.ControllerGetCapabilities(pb.ControllerGetCapabilitiesRequest()).capabilities
    assert {c.rpc.type for c in caps} == {R.CREATE_DELETE_VOLUME}
    expect_code(
        grpc.StatusCode.UNIMPLEMENTED,
        plugin.controller.ControllerPublishVolume,
        pb.ControllerPublishVolumeRequest(volume_id="v", node_id="n", volume_capability=cap()),
    )
    expect_code(
        grpc.StatusCode.UNIMPLEMENTED,
        plugin.node.NodeExpandVolume,
        pb.NodeExpandVolumeRequest(volume_id="v", volume_path="/x"),
    )


# -- CreateVolume / DeleteVolume ----------------------------------------------------------------
def test_create_volume_idempotent_and_deterministic(plugin: Plugin) -> None:
    req = pb.CreateVolumeRequest(
        name="pvc-idem",
        volume_capabilities=[cap()],
        parameters=PARAMS,
        capacity_range=pb.CapacityRange(required_bytes=1 << 30),
    )
    a = plugin.controller.CreateVolume(req).volume
    b = plugin.controller.CreateVolume(req).volume
    assert a == b
    assert a.volume_id.startswith("fluidfs-") and dict(a.volume_context) == PARAMS
    assert a.capacity_bytes == 1 << 30
    assert not a.accessible_topology
    other = plugin.controller.CreateVolume(
        pb.CreateVolumeRequest(name="pvc-other", volume_capabilities=[cap()], parameters=PARAMS)
    ).volume
    assert other.volume_id != a.volume_id
    for _ in range(2):
        plugin.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=a.volume_id))
        plugin.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=other.volume_id))


def test_create_same_name_different_parameters_already_exists(plugin: Plugin) -> None:
    plugin.controller.CreateVolume(pb.CreateVolumeRequest(name="pvc-x", volume_capabilities=[cap()], parameters=PARAMS))
    expect_code(
        grpc.StatusCode.ALREADY_EXISTS,
        plugin.controller.CreateVolume,
        pb.CreateVolumeRequest(
            name="pvc-x", volume_capabilities=[cap()], parameters={**PARAMS, "url": "s3://bucket/val"}
        ),
    )


def test_create_pin_to_node_uses_preferred_topology(plugin: Plugin) -> None:
    topo = pb.Topology(segments={TOPOLOGY_KEY: "node-7"})
    v = plugin.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name="pvc-pin",
            volume_capabilities=[cap()],
            parameters={**PARAMS, "pinToNode": "true"},
            accessibility_requirements=pb.TopologyRequirement(requisite=[topo], preferred=[topo]),
        )
    ).volume
    assert [dict(t.segments) for t in v.accessible_topology] == [{TOPOLOGY_KEY: "node-7"}]


@pytest.mark.parametrize(
    "req",
    [
        pb.CreateVolumeRequest(volume_capabilities=[cap()], parameters=PARAMS),
        pb.CreateVolumeRequest(name="n", parameters=PARAMS),
        pb.CreateVolumeRequest(name="n", volume_capabilities=[cap(block=True)], parameters=PARAMS),
        pb.CreateVolumeRequest(name="n", volume_capabilities=[cap(Mode.SINGLE_NODE_WRITER)], parameters=PARAMS),
        pb.CreateVolumeRequest(
            name="n", volume_capabilities=[cap(), cap(Mode.MULTI_NODE_MULTI_WRITER)], parameters=PARAMS
        ),
        pb.CreateVolumeRequest(name="n", volume_capabilities=[cap()]),
        pb.CreateVolumeRequest(name="n", volume_capabilities=[cap()], parameters={"url": "gopher://x"}),
        pb.CreateVolumeRequest(name="n", volume_capabilities=[cap()], parameters={**PARAMS, "bogus": "1"}),
        pb.CreateVolumeRequest(
            name="n",
            volume_capabilities=[cap()],
            parameters=PARAMS,
            volume_content_source=pb.VolumeContentSource(
                snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id="s")
            ),
        ),
    ],
    ids=[
        "no-name",
        "no-caps",
        "block",
        "writer",
        "one-writer",
        "no-dataset",
        "bad-url",
        "unknown-key",
        "content-source",
    ],
)
def test_create_volume_invalid_argument(plugin: Plugin, req: pb.CreateVolumeRequest) -> None:
    expect_code(INVALID, plugin.controller.CreateVolume, req)


def test_create_volume_bad_capacity_out_of_range(plugin: Plugin) -> None:
    expect_code(
        grpc.StatusCode.OUT_OF_RANGE,
        plugin.controller.CreateVolume,
        pb.CreateVolumeRequest(
            name="n",
            volume_capabilities=[cap()],
            parameters=PARAMS,
            capacity_range=pb.CapacityRange(required_bytes=10, limit_bytes=5),
        ),
    )


def test_delete_volume(plugin: Plugin) -> None:
    expect_code(INVALID, plugin.controller.DeleteVolume, pb.DeleteVolumeRequest())
    plugin.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id="never-existed"))


# -- ValidateVolumeCapabilities -----------------------------------------------------------------
def test_validate_volume_capabilities(plugin: Plugin) -> None:
    v = plugin.controller.CreateVolume(
        pb.CreateVolumeRequest(name="pvc-val", volume_capabilities=[cap()], parameters=PARAMS)
    ).volume
    ok = plugin.controller.ValidateVolumeCapabilities(
        pb.ValidateVolumeCapabilitiesRequest(
            volume_id=v.volume_id, volume_context=v.volume_context, volume_capabilities=[cap()]
        )
    )
    assert list(ok.confirmed.volume_capabilities) == [cap()]
    for bad in (cap(Mode.SINGLE_NODE_WRITER), cap(block=True)):
        r = plugin.controller.ValidateVolumeCapabilities(
            pb.ValidateVolumeCapabilitiesRequest(
                volume_id=v.volume_id, volume_context=v.volume_context, volume_capabilities=[cap(), bad]
            )
        )
        assert not r.HasField("confirmed") and r.message
    expect_code(
        INVALID,
        plugin.controller.ValidateVolumeCapabilities,
        pb.ValidateVolumeCapabilitiesRequest(volume_capabilities=[cap()]),
    )
    expect_code(
        INVALID,
        plugin.controller.ValidateVolumeCapabilities,
        pb.ValidateVolumeCapabilitiesRequest(volume_id=v.volume_id),
    )
    expect_code(
        NOT_FOUND,
        plugin.controller.ValidateVolumeCapabilities,
        pb.ValidateVolumeCapabilitiesRequest(volume_id="no-such-volume", volume_capabilities=[cap()]),
    )


# -- Node errors ----------------------------------------------------------------------------------
def test_node_stage_errors(plugin: Plugin, tmp_path: Path) -> None:
    stp = str(tmp_path)
    S = pb.NodeStageVolumeRequest
    expect_code(
        INVALID, plugin.node.NodeStageVolume, S(staging_target_path=stp, volume_capability=cap(), volume_context=PARAMS)
    )
    expect_code(INVALID, plugin.node.NodeStageVolume, S(volume_id="v", volume_capability=cap(), volume_context=PARAMS))
    expect_code(INVALID, plugin.node.NodeStageVolume, S(volume_id="v", staging_target_path=stp, volume_context=PARAMS))
    expect_code(
        INVALID,
        plugin.node.NodeStageVolume,
        S(volume_id="v", staging_target_path=stp, volume_capability=cap(block=True), volume_context=PARAMS),
    )
    expect_code(
        INVALID,
        plugin.node.NodeStageVolume,
        S(
            volume_id="v",
            staging_target_path=stp,
            volume_capability=cap(Mode.MULTI_NODE_MULTI_WRITER),
            volume_context=PARAMS,
        ),
    )
    expect_code(
        INVALID,
        plugin.node.NodeStageVolume,
        S(
            volume_id="v",
            staging_target_path=stp,
            volume_capability=cap(),
            volume_context={**PARAMS, "eviction": "fifo"},
        ),
    )
    expect_code(
        NOT_FOUND, plugin.node.NodeStageVolume, S(volume_id="v", staging_target_path=stp, volume_capability=cap())
    )
    assert os.listdir(stp) == []


def test_node_publish_errors(plugin: Plugin, tmp_path: Path) -> None:
    P = pb.NodePublishVolumeRequest
    tp, stp = str(tmp_path / "target"), str(tmp_path)
    expect_code(
        INVALID, plugin.node.NodePublishVolume, P(target_path=tp, staging_target_path=stp, volume_capability=cap())
    )
    expect_code(
        INVALID, plugin.node.NodePublishVolume, P(volume_id="v", staging_target_path=stp, volume_capability=cap())
    )
    expect_code(INVALID, plugin.node.NodePublishVolume, P(volume_id="v", target_path=tp, staging_target_path=stp))
    expect_code(
        INVALID,
        plugin.node.NodePublishVolume,
        P(volume_id="v", target_path=tp, staging_target_path=stp, volume_capability=cap(Mode.SINGLE_NODE_WRITER)),
    )
    expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        plugin.node.NodePublishVolume,
        P(volume_id="v", target_path=tp, volume_capability=cap()),
    )
    expect_code(
        NOT_FOUND,
        plugin.node.NodePublishVolume,
        P(volume_id="never-staged", target_path=tp, staging_target_path=stp, volume_capability=cap()),
    )
    eph = {**PARAMS, "csi.storage.k8s.io/ephemeral": "true"}
    expect_code(
        INVALID,
        plugin.node.NodePublishVolume,
        P(volume_id="e", target_path=tp, volume_capability=cap(block=True), volume_context=eph),
    )
    expect_code(
        INVALID,
        plugin.node.NodePublishVolume,
        P(
            volume_id="e",
            target_path=tp,
            volume_capability=cap(),
            volume_context={"csi.storage.k8s.io/ephemeral": "true"},
        ),
    )
    assert not os.path.exists(tp)


def test_node_unpublish_unstage_stats_errors(plugin: Plugin, tmp_path: Path) -> None:
    expect_code(INVALID, plugin.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(target_path=str(tmp_path)))
    expect_code(INVALID, plugin.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id="v"))
    expect_code(
        NOT_FOUND,
        plugin.node.NodeUnpublishVolume,
        pb.NodeUnpublishVolumeRequest(volume_id="unknown", target_path=str(tmp_path)),
    )
    # nothing there at all: already unpublished, so a (repeated) unpublish succeeds
    plugin.node.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id="unknown", target_path=str(tmp_path / "gone"))
    )
    expect_code(INVALID, plugin.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(staging_target_path=str(tmp_path)))
    expect_code(INVALID, plugin.node.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id="v"))
    expect_code(
        NOT_FOUND,
        plugin.node.NodeUnstageVolume,
        pb.NodeUnstageVolumeRequest(volume_id="unknown", staging_target_path=str(tmp_path)),
    )
    expect_code(INVALID, plugin.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(volume_path=str(tmp_path)))
    expect_code(INVALID, plugin.node.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(volume_id="v"))
    expect_code(
        NOT_FOUND,
        plugin.node.NodeGetVolumeStats,
        pb.NodeGetVolumeStatsRequest(volume_id="unknown", volume_path=str(tmp_path)),
    )


# -- modes --------------------------------------------------------------------------------------
def test_node_mode_serves_no_controller(tmp_path: Path) -> None:
    p = Plugin(tmp_path, mode="node").start()
    try:
        caps = p.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
        assert pb.PluginCapability.Service.CONTROLLER_SERVICE not in {c.service.type for c in caps}
        expect_code(
            grpc.StatusCode.UNIMPLEMENTED, p.controller.ControllerGetCapabilities, pb.ControllerGetCapabilitiesRequest()
        )
    finally:
        p.stop()


def test_controller_mode_is_ready_without_fuse_and_serves_no_node(tmp_path: Path) -> None:
    p = Plugin(tmp_path, mode="controller").start()
    try:
        assert p.identity.Probe(pb.ProbeRequest()).ready.value is True
        expect_code(grpc.StatusCode.UNIMPLEMENTED, p.node.NodeGetInfo, pb.NodeGetInfoRequest())
    finally:
        p.stop()


def test_second_plugin_on_same_state_dir_refused(plugin: Plugin) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "csi",
            "--endpoint",
            f"unix://{plugin.workdir}/other.sock",
            "--node-id",
            "x",
            "--state-dir",
            plugin.state_dir,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert r.returncode == 1 and "another plugin" in r.stderr


def test_bad_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "csi", "--endpoint", "tcp://0.0.0.0:1", "--node-id", "x", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert r.returncode == 2 and "unix://" in r.stderr and "Traceback" not in r.stderr
