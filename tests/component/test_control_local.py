"""The local actuator: fluidfs-controller running cache workers as processes on loopback.

A dummy worker (tests/support/control_dummy_worker.py) serves a metrics endpoint and drains on
SIGTERM; the controller's real path (reconcile, scale subresource, status from scraped
metrics) drives it: start, scale up and down (SIGTERM, graceful exit within the deadline,
SIGKILL after it), status, deletion; and ``fluidfs-controller --local`` as a command.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fluidfs.control.controller import Controller, ControllerConfig
from fluidfs.control.local import CLIENT_NAMESPACE, LocalCluster

DUMMY = Path(__file__).resolve().parents[1] / "support" / "control_dummy_worker.py"
NS, NAME, STS = "default", "mnist", "mnist-cache"


def command(*extra: str) -> list[str]:
    return [sys.executable, str(DUMMY), "--metrics-addr", "{metrics_addr}", "--listen", "{listen}",
            "--dataset", "{dataset}", *extra]  # fmt: skip


def dataset(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "fluidfs.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "mounts": [{"mountPoint": "/srv/mnist", "path": "/"}],
            "cache": {"replicas": replicas, "maxWorkers": 4, "autoscaling": {"policy": "manual", "interval": "1s"},
                      "worker": {"drainTimeout": "5s"}},
        },
    }  # fmt: skip


def wait(cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "cluster", command("--drain", "0.3"))
    try:
        yield cluster
    finally:
        cluster.close()
        for procs in cluster._procs.values():
            assert all(p.proc.poll() is not None for p in procs)


def ready(local: LocalCluster) -> int:
    return sum(p.ready for p in local.list_pods(NS, {"fluidfs.io/dataset": NAME}))


def test_start_scale_status_and_delete(local: LocalCluster, tmp_path: Path) -> None:
    local.apply_dataset(dataset(2))
    c = Controller(local, ControllerConfig(client_namespace=CLIENT_NAMESPACE))
    try:
        c.run_once()
        wait(lambda: ready(local) == 2, what="2 workers")
        peers = (tmp_path / "cluster" / NS / STS / "peers").read_text().splitlines()
        assert [line.split()[0] for line in peers] == [f"{STS}-0", f"{STS}-1"]
        for _ in range(3):  # first scrape, then a complete sample
            time.sleep(1.1)
            c.run_once()
        status = local.list_datasets(NS)[0]["status"]
        assert status["workers"] == "2/2" and status["phase"] == "Ready"
        assert status["capacityBytes"] == 2 << 30 and status["input"]["complete"] is True

        local.apply_dataset(dataset(3))
        time.sleep(1.1)
        c.run_once()
        wait(lambda: ready(local) == 3, what="3 workers")
        assert local.events[-1]["reason"] == "ScaledUp"

        local.apply_dataset(dataset(1))
        time.sleep(1.1)
        c.run_once()
        stopping = local.processes(NS, STS)[1:]
        wait(lambda: all(p.poll() is not None for p in stopping), timeout=10, what="graceful exits")
        assert [p.returncode for p in stopping] == [0, 0]  # drained and left, no SIGKILL
        for ordinal in (1, 2):
            assert (tmp_path / "cluster" / NS / STS / f"{STS}-{ordinal}" / "drained").exists()
        assert len((tmp_path / "cluster" / NS / STS / "peers").read_text().splitlines()) == 1
        assert local.events[-1]["reason"] == "ScaledDown"

        local.delete_dataset(NS, NAME)
        c.run_once()
        assert local.list_datasets(NS) == []
        wait(lambda: all(p.poll() is not None for p in local.processes(NS, STS)), timeout=10, what="exit")
    finally:
        c.close()


def test_a_worker_ignoring_sigterm_is_killed_at_the_deadline(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "cluster", command("--ignore-term"), stop_timeout=1.0)
    try:
        local.apply_dataset(dataset(1))
        c = Controller(local, ControllerConfig())
        c.run_once()
        wait(lambda: ready(local) == 1, what="the worker")
        (proc,) = local.processes(NS, STS)
        t0 = time.monotonic()
        local.scale(NS, STS, 0)
        wait(lambda: proc.poll() is not None, timeout=10, what="SIGKILL")
        assert proc.returncode == -signal.SIGKILL
        assert time.monotonic() - t0 >= 0.9
        c.close()
    finally:
        local.close()


def test_fluidfs_controller_local_command(tmp_path: Path) -> None:
    ds = tmp_path / "mnist.yaml"
    ds.write_text(yaml.safe_dump(dataset(2)))
    worker = " ".join(command("--drain", "0.1"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluidfs.control.main", "--local", str(tmp_path / "run"), "--worker-command", worker,
         "--metrics-addr", "127.0.0.1:0", str(ds)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        workdir = tmp_path / "run" / NS / STS
        wait(lambda: all((workdir / f"{STS}-{i}" / "ready").exists() for i in (0, 1)), what="2 workers started")
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "ScaledUp" not in out  # created at 2, not scaled
    for i in (0, 1):
        assert (workdir / f"{STS}-{i}" / "drained").exists(), out


def test_bad_dataset_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\n")
    res = subprocess.run(
        [sys.executable, "-m", "fluidfs.control.main", "--local", str(tmp_path / "run"), "--worker-command", "true",
         "--metrics-addr", "none", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().startswith("fluidfs-controller: ") and "not a fluidfs.io/v1alpha1 Dataset" in res.stderr
