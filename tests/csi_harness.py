"""Test harness for the CSI plugin: run ``fluidfs-csi`` as a subprocess, talk to it over its
unix socket with the generated stubs, and clean up every mount and daemon it left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from csi import csi_pb2 as pb
from csi import csi_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
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
    ) -> None:
        self.workdir = workdir
        self.sock = str(workdir / "csi.sock")
        self.state_dir = str(workdir / "state")
        self.mode = mode
        self.node_id = node_id
        self.extra = extra or []
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.log_path = workdir / "plugin.log"

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
    from csi.mounts import mount_points

    path = os.path.normpath(path)
    return [(mp, t) for mp, t in mount_points() if mp == path or mp.startswith(path + "/")]


def cleanup(workdir: str) -> None:
    """Kill fluidfs daemons whose pid files live under ``workdir`` and lazily unmount all mounts."""
    for pid_file in Path(workdir).rglob("daemon.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    for mp, _ in sorted(mounts_under(workdir), key=lambda m: -len(m[0])):
        subprocess.run(["umount", "-l", mp], capture_output=True)
