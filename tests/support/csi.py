"""Test harness for the CSI plugin: run ``fluidfs-csi`` as a subprocess, talk to it over its
unix socket with the generated stubs, build the requests kubelet would send, and clean up every
mount and daemon it left behind.  The S3 test dataset (``TREE``) lives here too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from csi._gen import csi_pb2 as pb
from csi._gen import csi_pb2_grpc as pb_grpc
from fluidfs.util.mounts import mount_table

ROOT = Path(__file__).resolve().parents[2]
Mode = pb.VolumeCapability.AccessMode.Mode


def cap(mode: int = Mode.MULTI_NODE_READER_ONLY, block: bool = False) -> pb.VolumeCapability:
    c = pb.VolumeCapability(access_mode=pb.VolumeCapability.AccessMode(mode=mode))
    (c.block if block else c.mount).SetInParent()
    return c


class Plugin:
    """One ``python -m csi`` process; ``identity``/``controller``/``node`` are gRPC stubs."""

    def __init__(
        self,
        workdir: Path,
        *,
        mode: str = "all",
        node_id: str = "node-1",
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        name: str = "",
    ) -> None:
        """``name`` tells two plugins in one ``workdir`` apart (socket, state dir and log)."""
        self.workdir = workdir
        suffix = f"-{name}" if name else ""
        self.sock = str(workdir / f"csi{suffix}.sock")
        self.state_dir = str(workdir / f"state{suffix}")
        self.mode = mode
        self.node_id = node_id
        self.extra = extra or []
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.log_path = workdir / f"plugin{suffix}.log"

    def start(self) -> Plugin:
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        cmd = [
            sys.executable,
            "-m",
            "csi",
            "--endpoint",
            f"unix://{self.sock}",
            "--node-id",
            self.node_id,
            "--state-dir",
            self.state_dir,
            "--mode",
            self.mode,
            "--check-interval",
            "0.5",
            *self.extra,
        ]
        env = dict(self.env if self.env is not None else os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None:
                raise RuntimeError(f"plugin exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"plugin did not create its socket: {self.log_tail()}")
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.identity = pb_grpc.IdentityStub(self.channel)
        self.controller = pb_grpc.ControllerStub(self.channel)
        self.node = pb_grpc.NodeStub(self.channel)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.identity.Probe(pb.ProbeRequest()).ready.value:
            if time.monotonic() > deadline:
                raise AssertionError(f"plugin never became ready: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


def expect_code(code: grpc.StatusCode, fn: Any, request: Any) -> grpc.RpcError:
    try:
        fn(request, timeout=60)
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code.name}, got {e.code().name}: {e.details()}"
        assert e.details(), "error responses must carry a human-readable message"
        return e
    raise AssertionError(f"expected {code.name}, the call succeeded")


def mounts_under(path: str) -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount at or below ``path``."""
    path = os.path.normpath(path)
    return [
        (m.mountpoint, m.fstype) for m in mount_table() if m.mountpoint == path or m.mountpoint.startswith(path + "/")
    ]


def layers(path: str) -> int:
    """How many mounts are stacked on ``path`` in this mount namespace."""
    return sum(1 for m in mount_table() if m.mountpoint == os.path.normpath(path))


def cleanup(workdir: str) -> None:
    """Kill fluidfs daemons whose pid files live under ``workdir`` and lazily unmount all mounts.

    The search for pid files never enters a mount point (it may be dead or hung).  A pid is only
    killed if its command line names ``workdir``: a pid file written inside a PID namespace (a
    simulated container) holds a pid that means another process on the host."""
    mounted = {mp for mp, _t in mounts_under(workdir)}
    for dirpath, dirs, files in os.walk(workdir):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in mounted]
        if "daemon.pid" not in files:
            continue
        try:
            pid = int(Path(dirpath, "daemon.pid").read_text().strip())
            if workdir in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    for _ in range(3):  # stacked layers: one pass per layer
        for mp, _t in sorted(mounts_under(workdir), key=lambda m: -len(m[0])):
            subprocess.run(["umount", "-l", mp], capture_output=True)


# -- the S3 dataset and the requests kubelet sends ---------------------------------------------------
BUCKET = "csi-data"
TREE: dict[str, bytes] = {
    "train/a.bin": os.urandom(300_000),
    "train/b.txt": b"bee\n",
    "train/sub/c.txt": b"sea\n" * 100,
    "train/sub/deep/d.bin": os.urandom(5000),
    "other/x": b"not in the dataset",
}
DATASET = {k[len("train/") :]: v for k, v in TREE.items() if k.startswith("train/")}
SUB = {k[len("sub/") :]: v for k, v in DATASET.items() if k.startswith("sub/")}
DEADLINE = 30.0  # bounded wait for a repair; never asserted as a duration


def params(srv: Any, **extra: str) -> dict[str, str]:
    return {
        "url": f"s3://{BUCKET}/train",
        "endpoint": srv.endpoint,
        "region": "us-east-1",
        "metadataTTL": "60",
        **extra,
    }


def secrets(srv: Any) -> dict[str, str]:
    return {"accessKeyId": srv.access_key, "secretAccessKey": srv.secret_key}


def stage_req(vid: str, stp: str, ctx: dict[str, str], srv: Any) -> pb.NodeStageVolumeRequest:
    return pb.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=stp, volume_capability=cap(), volume_context=ctx, secrets=secrets(srv)
    )


def publish_req(vid: str, stp: str, tp: str, ctx: dict[str, str]) -> pb.NodePublishVolumeRequest:
    return pb.NodePublishVolumeRequest(
        volume_id=vid,
        staging_target_path=stp,
        target_path=tp,
        volume_capability=cap(),
        readonly=True,
        volume_context={**ctx, "csi.storage.k8s.io/pod.name": "p"},
    )


def read_tree(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def wait_for_tree(root: str, want: dict[str, bytes]) -> None:
    """Poll (bounded) until ``root`` serves exactly ``want``."""
    deadline = time.monotonic() + DEADLINE
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = read_tree(root)
            if got == want:
                return
            last = sorted(got)
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{root} did not serve the dataset again: {last!r}")


def fluidfs_fuse_mounts(state_dir: Path) -> list[str]:
    """FUSE mounts under ``state_dir/mounts`` in this mount namespace."""
    return [mp for mp, t in mounts_under(str(state_dir / "mounts")) if t.startswith("fuse")]


def daemon_pids(state_dir: Path) -> list[int]:
    """The pids in the dataset daemons' pid files (in the PID namespace of whoever mounted them)."""
    pids = []
    for f in (state_dir / "datasets").glob("*/daemon.pid"):
        try:
            pids.append(int(f.read_text().strip()))
        except (OSError, ValueError):
            pass
    return pids


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
