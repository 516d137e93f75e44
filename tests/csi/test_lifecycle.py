"""The CSI plugin end to end: real fluidfs FUSE mounts of a real S3 server (moto, on loopback),
driven over the plugin's unix socket exactly as kubelet and csi-provisioner would.

create -> stage -> publish into two "pod" target paths -> read and compare -> unpublish ->
unstage -> delete, with every call repeated (idempotency); two PVs of one dataset share one
daemon; kill -9 of the daemon, and kill -9 of the plugin followed by a restart on the same state
dir, are repaired without touching the targets; ephemeral inline volumes; credentials stay off
argv, out of logs and out of world-readable files.  Every fixture unmounts and kills whatever
it left behind, also on failure.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from csi._gen import csi_pb2 as pb
from tests.support.csi import (
    BUCKET,
    DATASET,
    DEADLINE,
    SUB,
    TREE,
    Mode,
    Plugin,
    alive,
    cap,
    daemon_pids,
    expect_code,
    fluidfs_fuse_mounts,
    mounts_under,
    params,
    publish_req,
    read_tree,
    secrets,
    stage_req,
    wait_for_tree,
)
from tests.support.fuse import needs_fuse

pytestmark = needs_fuse


def test_full_lifecycle_every_call_repeated(s3: object, workdir: Path, start_plugin: Callable[..., Plugin]) -> None:
    p = start_plugin()
    create = pb.CreateVolumeRequest(name="pvc-1", volume_capabilities=[cap()], parameters=params(s3))
    vol = p.controller.CreateVolume(create).volume
    assert p.controller.CreateVolume(create).volume == vol
    ctx = dict(vol.volume_context)
    stp = str(workdir / "staging" / "pv1")
    os.makedirs(stp)
    for _ in range(2):
        p.node.NodeStageVolume(stage_req(vol.volume_id, stp, ctx, s3))
    assert read_tree(stp) == DATASET
    targets = [str(workdir / "pods" / f"pod{i}" / "volumes" / "data") for i in (1, 2)]
    for tp in targets:
        os.makedirs(os.path.dirname(tp))
        for _ in range(2):
            p.node.NodePublishVolume(publish_req(vol.volume_id, stp, tp, ctx))
    for tp in targets:
        assert read_tree(tp) == DATASET
        assert os.statvfs(tp).f_flag & os.ST_RDONLY
        with pytest.raises(OSError):
            open(os.path.join(tp, "new-file"), "wb")
    assert len(fluidfs_fuse_mounts(workdir / "state")) == 1

    stats = p.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=targets[0]))
    assert {u.unit for u in stats.usage} == {pb.VolumeUsage.BYTES, pb.VolumeUsage.INODES}
    assert not stats.volume_condition.abnormal
    expect_code(
        grpc.StatusCode.NOT_FOUND,
        p.node.NodeGetVolumeStats,
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(workdir)),
    )

    # same volume, same path, different parameters -> ALREADY_EXISTS
    expect_code(
        grpc.StatusCode.ALREADY_EXISTS,
        p.node.NodeStageVolume,
        stage_req(vol.volume_id, stp, {**ctx, "subPath": "sub"}, s3),
    )
    other = publish_req(vol.volume_id, stp, targets[0], ctx)
    other.readonly = False
    expect_code(grpc.StatusCode.ALREADY_EXISTS, p.node.NodePublishVolume, other)
    expect_code(
        grpc.StatusCode.FAILED_PRECONDITION,
        p.node.NodeUnstageVolume,
        pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=stp),
    )

    for tp in targets:
        for _ in range(2):
            p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=tp))
        assert not os.path.exists(tp)
    pids = daemon_pids(workdir / "state")
    for _ in range(2):
        p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=stp))
    for _ in range(2):
        p.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    assert mounts_under(str(workdir)) == []
    assert os.listdir(stp) == []
    assert not any(alive(pid) for pid in pids)
    assert not (workdir / "state" / "datasets").exists() or not any((workdir / "state" / "datasets").iterdir())


def test_two_pvs_share_one_daemon_and_survive_daemon_and_plugin_kill(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin("--metrics-addr", "127.0.0.1:0")
    va = p.controller.CreateVolume(
        pb.CreateVolumeRequest(name="pvc-a", volume_capabilities=[cap()], parameters=params(s3))
    ).volume
    vb = p.controller.CreateVolume(
        pb.CreateVolumeRequest(name="pvc-b", volume_capabilities=[cap()], parameters=params(s3, subPath="sub"))
    ).volume
    assert va.volume_id != vb.volume_id
    layout = []
    for v, want in ((va, DATASET), (vb, SUB)):
        stp = str(workdir / "staging" / v.volume_id)
        tp = str(workdir / "pods" / v.volume_id / "data")
        os.makedirs(stp)
        os.makedirs(os.path.dirname(tp))
        p.node.NodeStageVolume(stage_req(v.volume_id, stp, dict(v.volume_context), s3))
        p.node.NodePublishVolume(publish_req(v.volume_id, stp, tp, dict(v.volume_context)))
        layout.append((v, stp, tp, want))
    for _v, _stp, tp, want in layout:
        assert read_tree(tp) == want
    assert len(fluidfs_fuse_mounts(workdir / "state")) == 1, "two PVs of one dataset must share one mount"
    [pid] = daemon_pids(workdir / "state")
    assert alive(pid)

    # 1. the FUSE daemon dies: the plugin remounts and re-binds, targets work again
    os.kill(pid, signal.SIGKILL)
    for _v, _stp, tp, want in layout:
        wait_for_tree(tp, want)
    [pid2] = daemon_pids(workdir / "state")
    assert pid2 != pid and alive(pid2)
    assert len(fluidfs_fuse_mounts(workdir / "state")) == 1
    port = re.search(r"metrics on http://[\d.]+:(\d+)/", p.log_tail(200))
    assert port, p.log_tail()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=10).read().decode()
    assert re.search(r'fluidfs_csi_recoveries_total\{kind="mount"\} [1-9]', text), text
    assert f'fluidfs_csi_volume_mounted{{volume_id="{va.volume_id}"}} 1.0' in text

    # 2. the plugin dies (kill -9), then the daemon too; a restarted plugin repairs everything
    p.kill9()
    os.kill(pid2, signal.SIGKILL)
    p = start_plugin()
    for _v, _stp, tp, want in layout:
        wait_for_tree(tp, want)
    [pid3] = daemon_pids(workdir / "state")
    assert alive(pid3) and pid3 not in (pid, pid2)

    # the restarted plugin knows every volume: unpublish/unstage clean everything up
    for v, stp, tp, _want in layout:
        p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=v.volume_id, target_path=tp))
        p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=v.volume_id, staging_target_path=stp))
        if v is va:  # one PV gone: the other still holds the shared mount
            assert len(fluidfs_fuse_mounts(workdir / "state")) == 1
            assert read_tree(layout[1][2]) == SUB
    assert mounts_under(str(workdir)) == []
    assert not alive(pid3)


def test_ephemeral_inline_volume(s3: object, workdir: Path, start_plugin: Callable[..., Plugin]) -> None:
    p = start_plugin()
    ctx = {
        **params(s3, subPath="sub"),
        "csi.storage.k8s.io/ephemeral": "true",
        "csi.storage.k8s.io/pod.name": "trainer-0",
    }
    tp = str(workdir / "pods" / "eph" / "data")
    os.makedirs(os.path.dirname(tp))
    req = pb.NodePublishVolumeRequest(
        volume_id="csi-eph-1",
        target_path=tp,
        readonly=True,
        volume_capability=cap(Mode.SINGLE_NODE_WRITER),
        volume_context=ctx,
        secrets=secrets(s3),
    )
    for _ in range(2):
        p.node.NodePublishVolume(req)
    assert read_tree(tp) == SUB
    assert len(fluidfs_fuse_mounts(workdir / "state")) == 1
    for _ in range(2):
        p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id="csi-eph-1", target_path=tp))
    assert mounts_under(str(workdir)) == []
    assert not os.path.exists(tp)


def test_credentials_stay_private(s3: object, workdir: Path, start_plugin: Callable[..., Plugin]) -> None:
    p = start_plugin()
    secret = s3.secret_key  # type: ignore[attr-defined]
    stp = str(workdir / "staging")
    os.makedirs(stp)
    p.node.NodeStageVolume(stage_req("pv-cred", stp, params(s3), s3))
    [pid] = daemon_pids(workdir / "state")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert secret.encode() not in f.read()
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert secret.encode() not in f.read()
    state = workdir / "state"
    for path in state.rglob("*"):
        if path.is_file():
            mode = stat.S_IMODE(path.stat().st_mode)
            if secret.encode() in path.read_bytes():
                assert mode == 0o600 and path.parent.name == "secrets", path
                assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert secret not in (workdir / "plugin.log").read_text(errors="replace")
    assert secret not in (state / "state.json").read_text()
    p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id="pv-cred", staging_target_path=stp))
    assert not list(state.rglob("secrets")), "credentials are removed with the last user of the mount"


def test_wrong_credentials_fail_cleanly(s3: object, workdir: Path, start_plugin: Callable[..., Plugin]) -> None:
    p = start_plugin()
    stp = str(workdir / "staging")
    os.makedirs(stp)
    req = stage_req("pv-bad", stp, params(s3), s3)
    req.secrets["secretAccessKey"] = "wrong"
    with pytest.raises(grpc.RpcError) as ei:
        p.node.NodeStageVolume(req, timeout=120)
    assert ei.value.code() != grpc.StatusCode.OK and ei.value.details()
    assert "wrong" not in ei.value.details()
    assert mounts_under(str(workdir)) == []
    expect_code(
        grpc.StatusCode.NOT_FOUND,
        p.node.NodeUnstageVolume,
        pb.NodeUnstageVolumeRequest(volume_id="pv-bad", staging_target_path=stp),
    )


def test_unstage_grace_keeps_the_mount_for_a_restaging_job(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin("--unstage-grace", "3s")
    stp = str(workdir / "staging")
    os.makedirs(stp)
    unstage = pb.NodeUnstageVolumeRequest(volume_id="pv-g", staging_target_path=stp)
    p.node.NodeStageVolume(stage_req("pv-g", stp, params(s3), s3))
    [pid] = daemon_pids(workdir / "state")
    p.node.NodeUnstageVolume(unstage)
    assert len(fluidfs_fuse_mounts(workdir / "state")) == 1  # kept warm during the grace period
    p.node.NodeStageVolume(stage_req("pv-g", stp, params(s3), s3))
    assert daemon_pids(workdir / "state") == [pid], "a re-stage within the grace period reuses the daemon"
    assert read_tree(stp) == DATASET
    p.node.NodeUnstageVolume(unstage)
    deadline = time.monotonic() + DEADLINE
    while fluidfs_fuse_mounts(workdir / "state") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fluidfs_fuse_mounts(workdir / "state") == []


def test_dataset_document_with_secret_refs_and_two_sources(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    """``dataset`` volume attribute: a whole Dataset document whose credentials name keys of
    the node-stage secret; two mounts of one bucket unioned into one tree."""
    p = start_plugin()
    endpoint = s3.endpoint  # type: ignore[attr-defined]
    doc = f"""
apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata: {{name: union}}
spec:
  mounts:
  - mountPoint: s3://{BUCKET}/train
    name: train
    path: /train
    options: {{endpoint: "{endpoint}", region: us-east-1}}
    credentials:
      accessKeyId: {{secretKeyRef: {{name: s3-creds, key: ak}}}}
      secretAccessKey: {{secretKeyRef: {{name: s3-creds, key: sk}}}}
  - mountPoint: s3://{BUCKET}/other
    name: other
    path: /other
    options: {{endpoint: "{endpoint}", region: us-east-1}}
    credentials:
      accessKeyId: {{secretKeyRef: {{name: s3-creds, key: ak}}}}
      secretAccessKey: {{secretKeyRef: {{name: s3-creds, key: sk}}}}
"""
    create = pb.CreateVolumeRequest(
        name="pvc-doc", volume_capabilities=[cap()], parameters={"dataset": doc, "subPath": "train/sub"}
    )
    vol = p.controller.CreateVolume(create).volume
    stp, tp = str(workdir / "staging"), str(workdir / "pod" / "data")
    os.makedirs(stp)
    os.makedirs(os.path.dirname(tp))
    creds = {"ak": s3.access_key, "sk": s3.secret_key}  # type: ignore[attr-defined]
    ctx = dict(vol.volume_context)
    p.node.NodeStageVolume(
        pb.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=stp, volume_capability=cap(), volume_context=ctx, secrets=creds
        )
    )
    want = {f"train/{k}": v for k, v in DATASET.items()}
    want.update({f"other/{k[len('other/') :]}": v for k, v in TREE.items() if k.startswith("other/")})
    assert read_tree(stp) == want
    p.node.NodePublishVolume(publish_req(vol.volume_id, stp, tp, ctx))
    assert read_tree(tp) == SUB
    p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=tp))
    p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=vol.volume_id, staging_target_path=stp))
    assert mounts_under(str(workdir)) == []
