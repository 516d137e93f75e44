"""One unreachable endpoint does not stall the node.

A black-hole endpoint accepts TCP connections and never answers.  While a NodeStageVolume of
a dataset behind it hangs, and while the monitor tries to remount another dataset whose
endpoint turned into a black hole, the node keeps working: Probe answers, a pod of another
dataset is published, another dataset's dead daemon is repaired, and a flood of
NodeGetVolumeStats on a hung mount neither blocks nor starves anything.  The hanging stage
fails on its own with DEADLINE_EXCEEDED within the documented bound (``--mount-timeout`` + 10 s)
and leaves nothing behind; the broken dataset comes back once its endpoint does.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from csi._gen import csi_pb2 as pb
from tests.csi.conftest import plugin_env
from tests.support.blackhole import BlackHole, SwitchableProxy
from tests.support.csi import (
    DATASET,
    SUB,
    Plugin,
    layers,
    mounts_under,
    params,
    publish_req,
    read_tree,
    stage_req,
    wait_for_tree,
)
from tests.support.fuse import needs_fuse

pytestmark = needs_fuse

MOUNT_TIMEOUT = 20  # --mount-timeout of these tests (a mount of a loaded 2-core machine can take > 8 s)
BOUND = MOUNT_TIMEOUT + 10 + 10  # documented bound of a call, plus slack for a busy machine
FAST = 5.0  # "did not wait for the hanging mount" (that one takes MOUNT_TIMEOUT or more)


@pytest.fixture
def proxy(s3: object) -> Iterator[SwitchableProxy]:
    host, port = s3.endpoint.split("//", 1)[1].rsplit(":", 1)  # type: ignore[attr-defined]
    with SwitchableProxy((host, int(port))) as p:
        yield p


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    with BlackHole() as bh:
        yield bh


def timed(fn: Callable[[], object]) -> float:
    began = time.monotonic()
    fn()
    return time.monotonic() - began


class Volumes:
    """Stage and publish volumes of one plugin under ``workdir``."""

    def __init__(self, p: Plugin, workdir: Path, s3: object) -> None:
        self.p, self.workdir, self.s3 = p, workdir, s3

    def stage(self, vid: str, ctx: dict[str, str]) -> str:
        stp = self.workdir / "staging" / vid
        stp.mkdir(parents=True)
        self.p.node.NodeStageVolume(stage_req(vid, str(stp), ctx, self.s3), timeout=120)
        return str(stp)

    def publish(self, vid: str, stp: str, ctx: dict[str, str], pod: str) -> str:
        tp = self.workdir / "pods" / pod / vid
        tp.parent.mkdir(parents=True, exist_ok=True)
        self.p.node.NodePublishVolume(publish_req(vid, stp, str(tp), ctx), timeout=120)
        return str(tp)


def stage_in_background(p: Plugin, req: pb.NodeStageVolumeRequest) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def run() -> None:
        began = time.monotonic()
        try:
            p.node.NodeStageVolume(req, timeout=120)
            out["code"] = grpc.StatusCode.OK
        except grpc.RpcError as e:
            out["code"], out["details"] = e.code(), e.details()
        out["elapsed"] = time.monotonic() - began

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_black_hole_endpoint_stalls_nothing_else(
    s3: object, workdir: Path, proxy: SwitchableProxy, black_hole: BlackHole, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin("--mount-timeout", str(MOUNT_TIMEOUT))
    v = Volumes(p, workdir, s3)
    ctx_a, ctx_c, ctx_d = params(s3), params(s3, endpoint=proxy.url), params(s3, url="s3://csi-data/train/sub")
    stp_a, stp_c, stp_d = v.stage("pv-a", ctx_a), v.stage("pv-c", ctx_c), v.stage("pv-d", ctx_d)
    tp_a = v.publish("pv-a", stp_a, ctx_a, "pod-1")
    tp_c = v.publish("pv-c", stp_c, ctx_c, "pod-1")
    tp_d = v.publish("pv-d", stp_d, ctx_d, "pod-1")
    assert read_tree(tp_c) == DATASET and read_tree(tp_d) == SUB
    datasets = workdir / "state" / "datasets"
    docs = {k: (datasets / k / "dataset.yaml").read_text() for k in os.listdir(datasets)}
    pids = {k: int((datasets / k / "daemon.pid").read_text()) for k in docs}
    key_c = next(k for k, doc in docs.items() if f":{proxy.port}" in doc)
    key_d = next(k for k, doc in docs.items() if "train/sub" in doc)
    [key_a] = set(docs) - {key_c, key_d}

    # dataset C's endpoint becomes a black hole and its daemon dies: the monitor's remounts hang
    proxy.black_hole.set()
    os.kill(pids[key_c], signal.SIGKILL)
    # a new volume behind a black hole: its stage hangs until its own deadline
    stp_b = workdir / "staging" / "pv-b"
    stp_b.mkdir(parents=True)
    ctx_b = params(s3, endpoint=black_hole.url)
    hanging, outcome = stage_in_background(p, stage_req("pv-b", str(stp_b), ctx_b, s3))
    time.sleep(1.0)
    assert hanging.is_alive(), "the black-hole stage is in progress"

    # meanwhile: Probe, a publish of another dataset, and another dataset's repair are fast
    for _ in range(3):
        assert timed(lambda: p.identity.Probe(pb.ProbeRequest(), timeout=FAST)) < FAST
    assert timed(lambda: v.publish("pv-a", stp_a, ctx_a, "pod-2")) < FAST
    assert read_tree(str(workdir / "pods" / "pod-2" / "pv-a")) == DATASET
    os.kill(pids[key_a], signal.SIGKILL)
    wait_for_tree(tp_a, DATASET)
    assert hanging.is_alive() or outcome.get("code") != grpc.StatusCode.OK
    with pytest.raises(OSError):
        os.statvfs(tp_c)  # still broken: its endpoint is still a black hole

    # a hung (stopped) daemon: a flood of stats calls answers within bounds, Probe still answers
    os.kill(pids[key_d], signal.SIGSTOP)
    try:
        stats = pb.NodeGetVolumeStatsRequest(volume_id="pv-d", volume_path=tp_d)

        def one_stats() -> str:
            try:
                r = p.node.NodeGetVolumeStats(stats, timeout=FAST * 2)
                return "abnormal" if r.volume_condition.abnormal else "ok"
            except grpc.RpcError as e:
                return e.code().name

        with ThreadPoolExecutor(16) as pool:
            flood = [pool.submit(one_stats) for _ in range(16)]
            time.sleep(0.2)
            assert timed(lambda: p.identity.Probe(pb.ProbeRequest(), timeout=FAST)) < FAST
            results = [f.result(timeout=FAST * 3) for f in flood]
        assert set(results) <= {"abnormal", "UNAVAILABLE"} and "abnormal" in results, results
        assert (
            p.node.NodeGetVolumeStats(
                pb.NodeGetVolumeStatsRequest(volume_id="pv-a", volume_path=tp_a), timeout=FAST
            ).volume_condition.abnormal
            is False
        )
    finally:
        os.kill(pids[key_d], signal.SIGCONT)

    # the hanging stage fails on its own, within the bound, and leaves nothing behind
    hanging.join(timeout=BOUND + 30)
    assert not hanging.is_alive()
    assert outcome["code"] == grpc.StatusCode.DEADLINE_EXCEEDED, outcome
    assert float(outcome["elapsed"]) < BOUND, outcome  # type: ignore[arg-type]
    assert layers(str(stp_b)) == 0
    assert sorted(os.listdir(datasets)) == sorted(docs), "nothing left of the failed dataset"

    # once C's endpoint answers again, the monitor brings it back (after its back-off)
    proxy.black_hole.clear()
    deadline = time.monotonic() + 3 * BOUND
    while time.monotonic() < deadline:
        try:
            if read_tree(tp_c) == DATASET:
                break
        except OSError:
            pass
        time.sleep(0.5)
    assert read_tree(tp_c) == DATASET
    assert read_tree(tp_d) == SUB and read_tree(tp_a) == DATASET


def test_black_hole_through_the_forwarding_plugin(workdir: Path, s3: object, black_hole: BlackHole) -> None:
    """Plugin -> supervisor: the hanging stage fails with the supervisor's DEADLINE_EXCEEDED, the
    plugin's Probe and NodeGetInfo answer meanwhile."""
    env = plugin_env()
    sup = Plugin(workdir, mode="mounter", name="mounter", env=env, extra=["--mount-timeout", str(MOUNT_TIMEOUT)])
    plugin = Plugin(workdir, mode="node", env=env, extra=["--mounter", f"unix://{sup.sock}"])
    try:
        sup.start().wait_ready()
        plugin.start().wait_ready()
        stp = workdir / "staging"
        stp.mkdir()
        hanging, outcome = stage_in_background(
            plugin, stage_req("pv-b", str(stp), params(s3, endpoint=black_hole.url), s3)
        )
        time.sleep(1.0)
        for _ in range(3):
            assert timed(lambda: plugin.identity.Probe(pb.ProbeRequest(), timeout=FAST)) < FAST
            assert timed(lambda: plugin.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=FAST)) < FAST
        assert hanging.is_alive()
        hanging.join(timeout=BOUND + 30)
        assert outcome["code"] == grpc.StatusCode.DEADLINE_EXCEEDED, outcome
        assert "did not answer within" in str(outcome["details"])
        assert float(outcome["elapsed"]) < BOUND  # type: ignore[arg-type]
        assert mounts_under(str(workdir)) == []
        # the supervisor gone: the plugin answers UNAVAILABLE at once and says so in Probe
        sup.stop()
        with pytest.raises(grpc.RpcError) as ei:
            plugin.node.NodeStageVolume(stage_req("pv-x", str(stp), params(s3), s3), timeout=30)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE and "supervisor" in (ei.value.details() or "")
        assert plugin.identity.Probe(pb.ProbeRequest(), timeout=FAST).ready.value is False
    finally:
        plugin.stop()
        sup.stop()
