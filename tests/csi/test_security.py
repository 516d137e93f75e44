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
from tests.support.csi import (
    DATASET,
    Mode,
    Plugin,
    cap,
    cleanup,
    expect_code,
    mounts_under,
    params,
    read_tree,
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
