"""Repairs as a running pod sees them: the pod reads through its own mount namespace.

A node is simulated with its kubelet and state directories ``rshared``; a pod is a process in
its own mount namespace that sees its target path as a container with ``mountPropagation:
HostToContainer`` does (an rslave copy, ``tests/support/namespaces.py``).  When a dataset's
daemon is killed, the plugin's repair must reach that copy: the pod reads correct bytes again
within seconds, without any RPC and without restarting.  Repairs stack binds on the dead ones;
they must not spill onto other pods' targets, and unpublish/unstage remove every layer.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csi._gen import csi_pb2 as pb
from tests.support.csi import (
    DATASET,
    DEADLINE,
    SUB,
    Plugin,
    daemon_pids,
    layers,
    mounts_under,
    params,
    publish_req,
    stage_req,
)
from tests.support.fuse import needs_fuse
from tests.support.namespaces import PodReader, needs_namespaces, shared_dir

pytestmark = [needs_fuse, needs_namespaces]


@pytest.fixture
def kubelet(workdir: Path) -> Path:
    """The node's kubelet dir and the plugin's state dir, rshared as on a node."""
    shared_dir(workdir / "state")
    return shared_dir(workdir / "kubelet")


@pytest.fixture
def pods(workdir: Path) -> Iterator[Callable[[str, dict[str, bytes]], PodReader]]:
    started: list[PodReader] = []

    def start(target: str, want: dict[str, bytes]) -> PodReader:
        pod = PodReader(target, want, workdir, f"pod{len(started)}")
        started.append(pod)
        return pod.start()

    yield start
    for pod in started:
        pod.stop()


def wait_for_error(pod: PodReader, since: float) -> float:
    """Wait (bounded) until the pod sees a failed read after ``since``; returns its time."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        errors = pod.errors(since)
        if errors:
            return float(errors[0]["t"])  # type: ignore[arg-type]
        time.sleep(0.05)
    raise AssertionError(f"the pod never noticed the dead daemon: {pod.rounds()[-3:]}")


def target(kubelet: Path, pod: str, pv: str) -> str:
    """kubelet's target path of ``pv`` in ``pod`` (its parent exists, the target does not)."""
    parent = kubelet / "pods" / pod / "volumes" / "kubernetes.io~csi" / pv
    parent.mkdir(parents=True)
    return str(parent / "mount")


def staging(kubelet: Path, pv: str) -> str:
    path = kubelet / "plugins" / "kubernetes.io" / "csi" / "csi.fluidfs.io" / pv / "globalmount"
    path.mkdir(parents=True)
    return str(path)


def test_daemon_kill_is_repaired_inside_running_pods(
    s3: object,
    workdir: Path,
    kubelet: Path,
    start_plugin: Callable[..., Plugin],
    pods: Callable[[str, dict[str, bytes]], PodReader],
) -> None:
    p = start_plugin()
    ctx_a, ctx_b = params(s3), params(s3, subPath="sub")
    stp_a, stp_b = staging(kubelet, "pv-a"), staging(kubelet, "pv-b")
    p.node.NodeStageVolume(stage_req("pv-a", stp_a, ctx_a, s3))
    p.node.NodeStageVolume(stage_req("pv-b", stp_b, ctx_b, s3))
    targets = {
        target(kubelet, "pod-1", "pv-a"): ("pv-a", stp_a, ctx_a, DATASET),
        target(kubelet, "pod-2", "pv-a"): ("pv-a", stp_a, ctx_a, DATASET),
        target(kubelet, "pod-3", "pv-b"): ("pv-b", stp_b, ctx_b, SUB),
    }
    for tp, (vid, stp, ctx, _want) in targets.items():
        p.node.NodePublishVolume(publish_req(vid, stp, tp, ctx))
    readers = {tp: pods(tp, want) for tp, (_v, _s, _c, want) in targets.items()}
    shared = workdir / "state" / "mounts"
    [mp] = [str(shared / k) for k in os.listdir(shared)]

    for kill in (1, 2):  # the second repair stacks on the first one
        [pid] = daemon_pids(workdir / "state")
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        for pod in readers.values():
            broken = wait_for_error(pod, killed)
            pod.wait_ok_after(broken, timeout=DEADLINE)  # no RPC: the plugin repaired it alone
        for tp in targets:
            assert layers(tp) == 1 + kill, f"{tp}: one bind per repair, none spilled from other targets"
        for stp in (stp_a, stp_b):
            assert layers(stp) == 1 + kill
        assert layers(mp) == 1, "the dataset mount is replaced, not stacked"
        [new_pid] = daemon_pids(workdir / "state")
        assert new_pid != pid

    for pod in readers.values():
        pod.stop()
    for tp, (vid, _stp, _ctx, _want) in targets.items():
        p.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=tp))
        assert layers(tp) == 0 and not os.path.exists(tp), "unpublish removes every layer"
    for vid, stp in (("pv-a", stp_a), ("pv-b", stp_b)):
        p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stp))
        assert layers(stp) == 0, "unstage removes every layer"
    left = [m for m, _t in mounts_under(str(workdir)) if m not in (str(kubelet), str(workdir / "state"))]
    assert left == []


def test_publish_after_repair_binds_the_live_mount(
    s3: object,
    workdir: Path,
    kubelet: Path,
    start_plugin: Callable[..., Plugin],
    pods: Callable[[str, dict[str, bytes]], PodReader],
) -> None:
    """A pod started after a repair gets the new mount (one layer), and a repeated publish of a
    repaired target is idempotent (no extra layer)."""
    p = start_plugin()
    ctx = params(s3)
    stp = staging(kubelet, "pv-c")
    p.node.NodeStageVolume(stage_req("pv-c", stp, ctx, s3))
    first = target(kubelet, "pod-1", "pv-c")
    p.node.NodePublishVolume(publish_req("pv-c", stp, first, ctx))
    pod = pods(first, DATASET)
    [pid] = daemon_pids(workdir / "state")
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    pod.wait_ok_after(wait_for_error(pod, killed), timeout=DEADLINE)
    p.node.NodePublishVolume(publish_req("pv-c", stp, first, ctx))
    assert layers(first) == 2
    later = target(kubelet, "pod-2", "pv-c")
    p.node.NodePublishVolume(publish_req("pv-c", stp, later, ctx))
    assert layers(later) == 1
    pods(later, DATASET).wait_ok_after(0.0, timeout=DEADLINE)


def test_without_host_to_container_a_running_pod_keeps_the_dead_mount(
    s3: object,
    workdir: Path,
    kubelet: Path,
    start_plugin: Callable[..., Plugin],
    pods: Callable[[str, dict[str, bytes]], PodReader],
) -> None:
    """What docs/kubernetes.md says of a volumeMount without ``mountPropagation:
    HostToContainer``: the node is repaired, that container is not (until it restarts)."""
    p = start_plugin()
    ctx = params(s3)
    stp = staging(kubelet, "pv-p")
    p.node.NodeStageVolume(stage_req("pv-p", stp, ctx, s3))
    tp = target(kubelet, "pod-1", "pv-p")
    p.node.NodePublishVolume(publish_req("pv-p", stp, tp, ctx))
    with_propagation = pods(tp, DATASET)
    without = PodReader(tp, DATASET, workdir, "private-pod", propagation="rprivate").start()
    try:
        [pid] = daemon_pids(workdir / "state")
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        with_propagation.wait_ok_after(wait_for_error(with_propagation, killed), timeout=DEADLINE)
        repaired = time.time()
        time.sleep(1.0)
        assert without.errors(repaired), "a private copy never sees the repair"
        assert not [r for r in without.rounds() if r["ok"] and float(r["t"]) > repaired]  # type: ignore[arg-type]
    finally:
        without.stop()
