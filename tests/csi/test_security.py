"""A tenant must not read the node's files, its secrets or its cloud identity through a volume.

The attack of the issue, reproduced: tenant A stages an S3 volume with its credentials; tenant B,
with nothing but an inline (ephemeral) volume, asks for ``url: file://<the plugin's state
dir>`` and reads A's staged credentials through its target path as uid 65534 (``nobody``, as a
pod would).  Then every other way to the node: local paths in ``dataset`` documents, local paths
an admin allow-listed that contain the plugin's own directories, ``{file: ...}`` and ``{env:
...}`` credential references, S3 without credentials (which would sign with the node's own
identity), the instance metadata endpoint, inline volumes switched off.  Each refusal is a gRPC
error naming what was refused; what the admin allows still works.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from csi._gen import csi_pb2 as pb
from tests.csi.conftest import plugin_env
from tests.support.csi import (
    DATASET,
    Mode,
    Plugin,
    cap,
    cleanup,
    daemon_pids,
    expect_code,
    mounts_under,
    params,
    read_tree,
    secrets,
    stage_req,
)
from tests.support.fuse import needs_fuse

pytestmark = needs_fuse

DENIED = grpc.StatusCode.PERMISSION_DENIED
NOBODY = 65534


@pytest.fixture
def pods() -> Iterator[Path]:
    """A directory for pod target paths that uid 65534 may traverse (pytest's tmp_path may not)."""
    root = Path(tempfile.mkdtemp(prefix="fluidfs-csi-pods-"))
    root.chmod(0o755)
    yield root
    cleanup(str(root))
    shutil.rmtree(root, ignore_errors=True)


def as_nobody(path: str) -> subprocess.CompletedProcess[str]:
    """``cat path`` as uid/gid 65534 with no supplementary groups (a pod's unprivileged user)."""
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat", path]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def inline(
    vid: str, target: str, ctx: dict[str, str], creds: dict[str, str] | None = None
) -> pb.NodePublishVolumeRequest:
    return pb.NodePublishVolumeRequest(
        volume_id=vid,
        target_path=target,
        readonly=True,
        volume_capability=cap(Mode.SINGLE_NODE_WRITER),
        volume_context={**ctx, "csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": "tenant-b"},
        secrets=creds or {},
    )


def stage_tenant_a(p: Plugin, workdir: Path, s3: object) -> Path:
    """Tenant A's S3 volume, staged with its credentials; returns the secret file on the node."""
    stp = workdir / "staging-a"
    stp.mkdir()
    p.node.NodeStageVolume(stage_req("pv-a", str(stp), params(s3), s3), timeout=120)
    assert read_tree(str(stp)) == DATASET
    [secret] = (workdir / "state" / "datasets").glob("*/secrets/secretAccessKey")
    return secret


def test_inline_file_volume_cannot_read_another_tenants_secrets(
    s3: object, workdir: Path, pods: Path, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin()
    secret = stage_tenant_a(p, workdir, s3)
    rel = secret.relative_to(workdir / "state")
    assert secret.read_text() == s3.secret_key  # type: ignore[attr-defined]

    # on the node itself, mode bits keep uid 65534 out of the state dir and the secret file
    assert stat.S_IMODE((workdir / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert as_nobody(str(secret)).returncode != 0

    # the attack: an inline volume of the state dir, read by uid 65534 through the pod's target
    target = pods / "tenant-b" / "data"
    target.parent.mkdir()
    for url in (f"file://{workdir / 'state'}", f"file://{workdir}", "file:///"):
        e = expect_code(DENIED, p.node.NodePublishVolume, inline("csi-b", str(target), {"url": url}))
        assert "local" in (e.details() or "")
        assert not mounts_under(str(pods)), "nothing was mounted for the refused volume"
        leaked = as_nobody(str(target / rel))
        assert leaked.returncode != 0 and s3.secret_key not in leaked.stdout  # type: ignore[attr-defined]
    assert not target.exists()


DOC = """apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata: {{name: d}}
spec:
  mounts:
  - mountPoint: {mount}
    {extra}
"""


def test_allowed_host_paths_serve_data_and_never_the_plugins_own_directories(
    workdir: Path, pods: Path, start_plugin: Callable[..., Plugin]
) -> None:
    data = pods / "host-data"  # a host path the admin allows (traversable, as a node's would be)
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "f.txt").write_text("host data\n")
    (data / "to-state").symlink_to(workdir / "state")
    for allowed in (workdir, workdir / "state" / "inner", Path("/")):
        r = subprocess.run(
            [*Plugin(workdir).command(), "--allow-host-path", str(allowed)], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2 and "overlaps the plugin's own directory" in r.stderr, r.stderr
    p = start_plugin("--allow-host-path", str(data))
    target = pods / "pod" / "data"
    target.parent.mkdir()
    p.node.NodePublishVolume(inline("csi-ok", str(target), {"url": f"file://{data}"}), timeout=120)
    ok = as_nobody(str(target / "sub" / "f.txt"))
    assert ok.returncode == 0 and ok.stdout == "host data\n", ok.stderr
    p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id="csi-ok", target_path=str(target)))
    refused = {
        f"file://{data}/to-state": "leads to",  # a symlink out of the allowed path
        f"file://{pods}": "not an allowed host path",  # the allowed path's parent
        "file:///etc": "not an allowed host path",
    }
    for url, needle in refused.items():
        e = expect_code(DENIED, p.node.NodePublishVolume, inline("csi-x", str(target), {"url": url}))
        assert needle in (e.details() or ""), e.details()
    for mount in ("local:///etc", "/var/lib/kubelet", f"{workdir}/state"):
        ctx = {"dataset": DOC.format(mount=mount, extra="")}
        e = expect_code(DENIED, p.node.NodePublishVolume, inline("csi-d", str(target), ctx))
        assert "spec.mounts[0]" in (e.details() or "")
        e = expect_code(
            DENIED,
            p.controller.CreateVolume,
            pb.CreateVolumeRequest(name="pvc-local", volume_capabilities=[cap()], parameters=ctx),
        )
        assert "local source" in (e.details() or "")
    assert not mounts_under(str(pods)) and not target.exists()


@pytest.mark.parametrize(
    "ref",
    [
        "{file: /var/run/secrets/kubernetes.io/serviceaccount/token}",
        "{env: AWS_SECRET_ACCESS_KEY}",
    ],
)
def test_credential_references_to_the_node_are_refused(
    s3: object, workdir: Path, pods: Path, start_plugin: Callable[..., Plugin], ref: str
) -> None:
    p = start_plugin()
    extra = f"credentials: {{accessKeyId: {ref}, secretAccessKey: {ref}}}"
    ctx = {"dataset": DOC.format(mount="s3://csi-data/train", extra=extra)}
    create = pb.CreateVolumeRequest(name="pvc-ref", volume_capabilities=[cap()], parameters=ctx)
    e = expect_code(DENIED, p.controller.CreateVolume, create)
    assert "CSI secret" in (e.details() or "")
    stp = workdir / "staging"
    stp.mkdir()
    expect_code(DENIED, p.node.NodeStageVolume, stage_req("pv-ref", str(stp), ctx, s3))
    target = pods / "pod" / "data"
    target.parent.mkdir()
    expect_code(DENIED, p.node.NodePublishVolume, inline("csi-ref", str(target), ctx, secrets(s3)))
    assert not (workdir / "state" / "datasets").exists() or not list((workdir / "state" / "datasets").iterdir())


def test_s3_without_credentials_acts_as_the_node_only_where_allowed(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    """The plugin's environment holds valid AWS credentials (standing in for the node's instance
    role): a volume without CSI secrets may use them only with ``--node-identity``."""
    node_identity = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}  # type: ignore[attr-defined]
    stp = workdir / "staging"
    stp.mkdir()
    no_secrets = pb.NodeStageVolumeRequest(
        volume_id="pv-anon", staging_target_path=str(stp), volume_capability=cap(), volume_context=params(s3)
    )
    p = Plugin(workdir, env={**plugin_env(), **node_identity}).start()
    try:
        p.wait_ready()
        e = expect_code(DENIED, p.node.NodeStageVolume, no_secrets)
        assert "node's own identity" in (e.details() or "") and "nodeIdentity" in (e.details() or "")
        # anonymous access passes the policy: the server refuses the unsigned requests itself
        anon = pb.NodeStageVolumeRequest()
        anon.CopyFrom(no_secrets)
        anon.volume_context["options.anonymous"] = "true"
        with pytest.raises(grpc.RpcError) as ei:
            p.node.NodeStageVolume(anon, timeout=120)
        assert ei.value.code() not in (DENIED, grpc.StatusCode.OK)
        # with the volume's own credentials: mounted, and the daemon never saw the node's
        p.node.NodeStageVolume(stage_req("pv-own", str(stp), params(s3), s3), timeout=120)
        [pid] = daemon_pids(workdir / "state")
        environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        assert "AWS_ACCESS_KEY_ID" not in environ and "AWS_SECRET_ACCESS_KEY" not in environ
        assert environ.get("AWS_EC2_METADATA_DISABLED") == "true"
        p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id="pv-own", staging_target_path=str(stp)))
    finally:
        p.stop()
    p = Plugin(workdir, env={**plugin_env(), **node_identity}, extra=["--node-identity"]).start()
    try:
        p.wait_ready()
        p.node.NodeStageVolume(no_secrets, timeout=120)
        assert read_tree(str(stp)) == DATASET
        p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id="pv-anon", staging_target_path=str(stp)))
    finally:
        p.stop()


@pytest.mark.parametrize(
    "ctx",
    [
        {"url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"},
        {"url": "http://2852039166/latest/meta-data/"},
        {"url": "http://metadata.google.internal/computeMetadata/v1/"},
        {"url": "s3://bucket/p", "endpoint": "http://[fd00:ec2::254]"},
        {"url": "s3://bucket/p", "endpoint": "http://169.254.170.2", "options.anonymous": "true"},
    ],
    ids=["imds", "imds-decimal", "gce", "imds-v6-endpoint", "ecs-endpoint"],
)
def test_instance_metadata_endpoints_are_refused(
    workdir: Path, pods: Path, start_plugin: Callable[..., Plugin], ctx: dict[str, str]
) -> None:
    p = start_plugin()
    target = pods / "pod" / "data"
    target.parent.mkdir()
    e = expect_code(DENIED, p.node.NodePublishVolume, inline("csi-md", str(target), ctx))
    assert "instance metadata" in (e.details() or "")
    e = expect_code(
        DENIED,
        p.controller.CreateVolume,
        pb.CreateVolumeRequest(name="pvc-md", volume_capabilities=[cap()], parameters=ctx),
    )
    assert "instance metadata" in (e.details() or "")


def test_inline_volumes_can_be_switched_off(
    s3: object, workdir: Path, pods: Path, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin("--disable-ephemeral")
    target = pods / "pod" / "data"
    target.parent.mkdir()
    e = expect_code(DENIED, p.node.NodePublishVolume, inline("csi-off", str(target), params(s3), secrets(s3)))
    assert "ephemeral" in (e.details() or "")
    assert not mounts_under(str(pods)) and not (workdir / "state" / "mounts").exists()
