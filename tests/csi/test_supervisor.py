"""Mounts outlive the plugin: the mount supervisor, its reaper and the forwarding node plugin,
each in its own simulated container, while a pod keeps reading.

The node is simulated as in the chart: the kubelet dir is shared with both containers
(``Bidirectional``), the state dir is private to the supervisor's container, the two talk over
a unix socket in a shared directory.  The supervisor's container runs ``python -m csi.reaper``
as PID 1; the plugin's runs the plugin itself as PID 1.  A pod reads through its own rslave
copy of the target the whole time.

- the plugin's container is stopped (SIGTERM) and killed (SIGKILL) and started again: the pod
  sees no error, the daemon is the same process, and the new plugin publishes and unpublishes;
- the supervisor process crashes (SIGKILL) or is stopped (SIGTERM): the reaper starts it again,
  it adopts the running daemon (same pid, one FUSE mount, no repair layer), the pod sees no error;
- the supervisor's container is replaced (what an upgrade does on a node): its daemons die with
  it and the pod gets errors until the new container has repaired the mounts, without an RPC.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from csi._gen import csi_pb2 as pb
from csi._gen import csi_pb2_grpc as pb_grpc
from tests.csi.conftest import plugin_env
from tests.support.csi import (
    DATASET,
    DEADLINE,
    alive,
    daemon_pids,
    layers,
    params,
    publish_req,
    stage_req,
)
from tests.support.fuse import needs_fuse
from tests.support.namespaces import ROOT, Container, PodReader, needs_namespaces, shared_dir

pytestmark = [needs_fuse, needs_namespaces]


class Node:
    """The simulated node: its directories, the two containers and a client of the plugin."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kubelet = shared_dir(workdir / "kubelet")
        self.state = shared_dir(workdir / "state")
        self.run = workdir / "run"
        self.run.mkdir()
        self.env = dict(plugin_env(), PYTHONPATH=str(ROOT))
        self.mounter: Container | None = None
        self.plugin: Container | None = None
        self.channel: grpc.Channel | None = None
        self.pods: list[PodReader] = []

    def start_mounter(self) -> Container:
        argv = [sys.executable, "-m", "csi.reaper", "--grace", "5", "--", sys.executable, "-m", "csi"]
        argv += ["--mode", "mounter", "--endpoint", f"unix://{self.run}/mounter.sock", "--state-dir", str(self.state)]
        argv += ["--check-interval", "0.5"]
        self.mounter = Container(argv, self.workdir / "mounter.log", private=[str(self.state)], env=self.env).start()
        return self.mounter

    def start_plugin(self) -> pb_grpc.NodeStub:
        sock = self.run / "csi.sock"
        if sock.exists():
            sock.unlink()
        argv = [sys.executable, "-m", "csi", "--mode", "node", "--endpoint", f"unix://{sock}", "--node-id", "node-1"]
        argv += ["--mounter", f"unix://{self.run}/mounter.sock"]
        self.plugin = Container(argv, self.workdir / "plugin.log", env=self.env).start()
        if self.channel is not None:
            self.channel.close()
        self.channel = grpc.insecure_channel(f"unix://{sock}")
        identity = pb_grpc.IdentityStub(self.channel)
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                if identity.Probe(pb.ProbeRequest(), timeout=5).ready.value:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"plugin never ready: {self.plugin.log_tail()}\n{self.mounter_log()}")
            time.sleep(0.1)
        return pb_grpc.NodeStub(self.channel)

    def mounter_log(self) -> str:
        return self.mounter.log_tail() if self.mounter is not None else ""

    def supervisor(self) -> int:
        """Host pid of the supervisor process (the reaper's child), once it answers its Probe."""
        assert self.mounter is not None
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            pids = [p for p in self.mounter.find("-m csi --mode mounter") if p != self.mounter.pid1]
            if len(pids) == 1 and self.supervisor_ready():
                return pids[0]
            time.sleep(0.1)
        raise AssertionError(f"no supervisor running: {self.mounter_log()}")

    def supervisor_ready(self) -> bool:
        with grpc.insecure_channel(f"unix://{self.run}/mounter.sock") as ch:
            try:
                return bool(pb_grpc.IdentityStub(ch).Probe(pb.ProbeRequest(), timeout=2).ready.value)
            except grpc.RpcError:
                return False

    def daemon(self) -> int:
        """Host pid of the one dataset daemon (its pid file holds the container's pid)."""
        assert self.mounter is not None
        [ns_pid] = daemon_pids(self.state)
        pid = self.mounter.host_pid(ns_pid)
        assert pid is not None and alive(pid), f"daemon {ns_pid} is not running: {self.mounter_log()}"
        return pid

    def fuse_mounts(self) -> list[str]:
        """The dataset FUSE mounts, as the supervisor's container sees them."""
        assert self.mounter is not None
        prefix = str(self.state / "mounts") + "/"
        return [m.mountpoint for m in self.mounter.mounts() if m.mountpoint.startswith(prefix)]

    def target(self, pod: str, pv: str) -> str:
        parent = self.kubelet / "pods" / pod / "volumes" / "kubernetes.io~csi" / pv
        parent.mkdir(parents=True)
        return str(parent / "mount")

    def close(self) -> None:
        for pod in self.pods:
            pod.stop()
        if self.channel is not None:
            self.channel.close()
        for c in (self.plugin, self.mounter):
            if c is not None:
                c.stop(signal.SIGKILL)


@pytest.fixture
def node(workdir: Path) -> Iterator[Node]:
    n = Node(workdir)
    yield n
    n.close()


def setup_volume(node: Node, s3: object) -> tuple[pb_grpc.NodeStub, str, dict[str, str], PodReader]:
    """Both containers up, one volume staged and published, a pod reading it."""
    node.start_mounter()
    stub = node.start_plugin()
    ctx = params(s3)
    stp = node.kubelet / "plugins" / "kubernetes.io" / "csi" / "pv-a" / "globalmount"
    stp.mkdir(parents=True)
    stub.NodeStageVolume(stage_req("pv-a", str(stp), ctx, s3), timeout=90)
    tp = node.target("pod-1", "pv-a")
    stub.NodePublishVolume(publish_req("pv-a", str(stp), tp, ctx), timeout=90)
    pod = PodReader(tp, DATASET, node.workdir, "pod-1")
    node.pods.append(pod)
    return stub, str(stp), ctx, pod.start()


def publish_and_unpublish(node: Node, stub: pb_grpc.NodeStub, stp: str, ctx: dict[str, str], pod: str) -> None:
    """A new pod's volume through the (restarted) plugin, read, then removed again."""
    tp = node.target(pod, "pv-a")
    stub.NodePublishVolume(publish_req("pv-a", stp, tp, ctx), timeout=90)
    reader = PodReader(tp, DATASET, node.workdir, pod).start()
    reader.stop()
    stub.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id="pv-a", target_path=tp), timeout=90)
    assert layers(tp) == 0 and not os.path.exists(tp)


def assert_untouched(node: Node, daemon: int, pod: PodReader, tp_layers: str) -> None:
    assert alive(daemon) and node.daemon() == daemon, "the same daemon serves the dataset"
    assert len(node.fuse_mounts()) == 1, f"no duplicate mounts: {node.fuse_mounts()}"
    assert layers(tp_layers) == 1, "nothing was repaired: nothing broke"
    assert pod.errors() == [], f"the pod saw read errors: {pod.errors()[:3]}"


def test_plugin_container_restarts_are_invisible_to_pods(node: Node, s3: object) -> None:
    stub, stp, ctx, pod = setup_volume(node, s3)
    daemon = node.daemon()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        assert node.plugin is not None
        node.plugin.stop(sig)
        time.sleep(1.5)  # the pod keeps reading while no plugin runs
        assert_untouched(node, daemon, pod, pod.target)
        stub = node.start_plugin()
        publish_and_unpublish(node, stub, stp, ctx, f"pod-after-{sig}")
        assert_untouched(node, daemon, pod, pod.target)


def test_supervisor_crash_is_invisible_to_pods(node: Node, s3: object) -> None:
    stub, stp, ctx, pod = setup_volume(node, s3)
    daemon = node.daemon()
    for sig in (signal.SIGKILL, signal.SIGTERM):
        old = node.supervisor()
        os.kill(old, sig)
        deadline = time.monotonic() + DEADLINE
        while alive(old) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.supervisor() != old, "the reaper started a new supervisor"
        assert_untouched(node, daemon, pod, pod.target)
        publish_and_unpublish(node, stub, stp, ctx, f"pod-after-{sig}")  # through the new supervisor
        assert_untouched(node, daemon, pod, pod.target)
    assert "adopting its running daemon" in node.mounter_log()


def test_supervisor_container_replacement_is_repaired_without_rpc(node: Node, s3: object) -> None:
    """What a node sees when the supervisor's pod is deleted (upgrade): errors, then data again."""
    stub, stp, ctx, pod = setup_volume(node, s3)
    daemon = node.daemon()
    assert node.mounter is not None
    stopped = time.time()
    node.mounter.stop(signal.SIGTERM)
    assert not alive(daemon), "the daemons end with their container"
    deadline = time.monotonic() + DEADLINE
    while not pod.errors(stopped) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pod.errors(stopped), "the pod notices the dead mount"
    node.start_mounter()
    pod.wait_ok_after(time.time(), timeout=DEADLINE)  # repaired by the new container alone
    assert layers(pod.target) == 2, "the repair is stacked on the dead bind"
    assert len(node.fuse_mounts()) == 1
    publish_and_unpublish(node, stub, stp, ctx, "pod-after-upgrade")  # the plugin reconnects by itself


def test_reaper_restarts_its_child_and_reaps_orphans(workdir: Path) -> None:
    """PID 1 of a container: restarts the supervisor with a growing delay, leaves no zombies,
    and on SIGTERM stops the supervisor and ends."""
    starts = workdir / "starts"
    child = f"echo start >> {starts}; sleep 300 & sleep 0.2; exit 3"
    argv = [sys.executable, "-m", "csi.reaper", "--grace", "2", "--", "sh", "-c", child]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    c = Container(argv, workdir / "reaper.log", env=env).start()
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and (not starts.exists() or len(starts.read_text().split()) < 3):
            time.sleep(0.1)
        assert len(starts.read_text().split()) >= 3, c.log_tail()
        assert "exit code 3" in c.log_tail()

        def zombies() -> set[int]:
            out = set()
            for pid in c.processes():
                try:
                    if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                        out.add(pid)
                except OSError:
                    pass
            return out

        before = zombies()
        time.sleep(1.0)
        assert not before & zombies(), "exited children are reaped"
        orphans = c.find("sleep 300")
        assert orphans, "orphans are re-parented to the reaper"
        assert c.proc is not None
        os.kill(c.pid1, signal.SIGTERM)
        assert c.proc.wait(timeout=15) == 0
        assert not any(alive(p) for p in orphans), "PID 1 gone: the container's processes are gone"
    finally:
        c.stop(signal.SIGKILL)
