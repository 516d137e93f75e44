"""``python -m tools.sim`` as a user runs it: a small run with JSON and a plot, a trace file,
the quick report, calibration, and bad input (one line on stderr, exit code 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sim(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tools.sim", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_run_trace_and_plot(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    assert sim("trace", "--jobs", "20", "--seed", "2", "--out", str(trace)).returncode == 0
    out = tmp_path / "m.json"
    png = tmp_path / "m.png"
    res = sim("run", "--trace", str(trace), "--nodes", "4", "--policy", "sjf", "--json", str(out), "--plot", str(png))
    assert res.returncode == 0, res.stderr
    assert "| sjf+cache/affinity |" in res.stdout and "repeat share" in res.stdout
    rows = json.loads(out.read_text())
    assert {r["policy"] for r in rows} == {"sjf/random", "sjf+cache/random", "sjf/affinity", "sjf+cache/affinity"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = sim("run", "--trace", str(trace), "--nodes", "4", "--policy", "sjf")
    assert again.stdout == res.stdout  # same seed, same numbers


def test_quick_report(tmp_path: Path) -> None:
    res = sim("report", "--quick", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "report.md").exists() and (tmp_path / "high-sharing.png").exists()
    data = json.loads((tmp_path / "report.json").read_text())
    assert {"high_sharing", "no_sharing", "bound", "per_node_caches", "placement_peer_copy"} <= set(data)
    assert all(r["peer_bytes"] == 0 for r in data["per_node_caches"]["runs"])
    for row in data["bound"]:
        if row["bound"] is not None:
            assert row["max_passed_over"] <= row["bound"] and row["sjf"]["max_passed_over"] <= row["bound"]


def test_calibrate(tmp_path: Path) -> None:
    doc = {
        "cluster": {"nodes": ["m1", "m2"], "gpusPerNode": 1, "cacheBytes": 10**10, "sourceBandwidth": 1e9},
        "policy": {"base": "sjf", "cacheAware": True, "placement": "affinity"},
        "datasets": [{"name": "d", "bytes": 10**9}],
        "jobs": [
            {"name": "a", "dataset": "d", "computeSeconds": 3, "submitted": 0, "started": 0, "ended": 4, "node": "m2"}
        ],
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "cal.json"
    res = sim("--calibrate", str(path), "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "| a | 4.0 |" in res.stdout and "mean |error|" in res.stdout
    assert json.loads(out.read_text())[0]["job"] == "a"


def test_source_aware_run() -> None:
    res = sim("run", "--jobs", "12", "--nodes", "2", "--policy", "fifo", "--placement", "random", "--ordering", "all")
    assert res.returncode == 0, res.stderr
    for name in ("fifo/random", "fifo+cache/random", "fifo+cache+src/random"):
        assert f"| {name} |" in res.stdout


def test_per_node_caches_run(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    args = ("run", "--jobs", "12", "--nodes", "2", "--policy", "fifo", "--ordering", "oblivious", "--json")
    assert sim(*args, str(out)).returncode == 0
    shared = {r["policy"]: r for r in json.loads(out.read_text())}
    res = sim(*args, str(out), "--per-node-caches")
    assert res.returncode == 0, res.stderr
    alone = {r["policy"]: r for r in json.loads(out.read_text())}
    assert set(alone) == set(shared) == {"fifo/random", "fifo/affinity"}
    for name, row in alone.items():
        assert row["peer_bytes"] == 0 and shared[name]["peer_bytes"] > 0
        assert row["source_bytes"] >= shared[name]["source_bytes"]


def test_peer_copies_and_prefer_local() -> None:
    res = sim("run", "--jobs", "12", "--nodes", "2", "--policy", "sjf", "--ordering", "all", "--peer-copy",
              "--prefer-local")  # fmt: skip
    assert res.returncode == 0, res.stderr
    for name in ("sjf/affinity", "sjf+cache+local/affinity", "sjf+cache+src+local/affinity"):
        assert f"| {name} |" in res.stdout
    assert "vs sjf/affinity |" in res.stdout.split("| sjf+cache+local/affinity |")[1].splitlines()[0]


def test_scenario(tmp_path: Path) -> None:
    example = ROOT / "docs" / "scheduling" / "calibration-example.yaml"
    out = tmp_path / "s.json"
    res = sim("scenario", str(example), "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "| j6 | imgs-a | 1 | 25.0 |" in res.stdout and "| fifo+cache+src/affinity |" in res.stdout
    doc = json.loads(out.read_text())
    assert [p["policy"] for p in doc["policies"]] == ["fifo/affinity", "fifo+cache+src/affinity"]
    assert {j["name"] for j in doc["policies"][0]["jobs"]} == {f"j{i}" for i in range(1, 7)}
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: {members: 3, cacheBytes: 1Gi, sourceBandwidth: fast}\ndatasets: []\njobs: []\n")
    res = sim("scenario", str(bad))
    assert res.returncode == 2 and "cluster.sourceBandwidth: invalid size 'fast'" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibrate", "/nonexistent.json"], "No such file"),
        (["run", "--nodes", "0"], "--nodes must be at least 1"),
        (["run", "--source-gbps", "0"], "--source-gbps must be positive"),
        (["run", "--burst", "0.5"], "--burst >= 1"),
        ([], "give a command"),
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    res = sim(*args)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_malformed_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    res = sim("--calibrate", str(bad))
    assert res.returncode == 2 and "not JSON" in res.stderr
    bad.write_text(
        json.dumps(
            {
                "datasets": [{"name": "x", "size": 1}],
                "jobs": [{"name": "j", "submit": 0, "gpus": 1, "dataset": "y", "compute_seconds": 1}],
            }
        )
    )
    res = sim("run", "--trace", str(bad))
    assert res.returncode == 2 and "unknown dataset" in res.stderr
