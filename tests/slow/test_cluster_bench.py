"""Smoke test of the cluster benchmark harness (``python -m tools.bench cluster --quick``).

Runs the harness end to end with tiny sets and checks its bookkeeping, never its timings: the
readers read every byte they were given with no error, source bytes are counted (each of the
independent nodes fetches the whole set, the cluster at least once), the kill phase produced a
time series, the report and the JSON carry every target, and afterwards no namespace, link,
mount or process of the run is left.  Skipped where network namespaces cannot be made.
Ten fluidfs daemons start and stop in it, so it takes about two minutes on two busy cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fluidfs.util.proc import pid_alive
from tools.bench.netlab import leftovers
from tools.bench.store import netns_available
from tools.bench.systems import mounted_under

REPO = Path(__file__).resolve().parents[2]
WHY = netns_available() or ("/dev/fuse missing" if not os.path.exists("/dev/fuse") else None)

pytestmark = pytest.mark.skipif(WHY is not None, reason=f"cluster benchmark needs netns, tc and FUSE: {WHY}")


def _values(doc: dict[str, object], phase: str, metric: str) -> list[float]:
    return [r["value"] for r in doc["records"] if r["phase"] == phase and r["metric"] == metric]  # type: ignore[attr-defined]


def test_cluster_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    work = tmp_path / "work"
    p = subprocess.run(
        [sys.executable, "-m", "tools.bench", "cluster", "--quick", "--phases", "independent,shared,kill",
         "--json", str(out), "--workdir", str(work)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["errors"] == [], doc["errors"]
    # Every reader read everything it was given, and every byte compared equal.
    errors = [r for r in doc["records"] if "read errors" in r["metric"]]
    assert errors and all(r["value"] == 0 for r in errors), errors
    # Source bookkeeping: three independent nodes each fetch the whole set; a cluster at least once.
    (indep,) = _values(doc, "independent", "source bytes / set bytes")
    (shared,) = _values(doc, "shared", "source bytes / set bytes")
    assert 2.99 <= indep <= 3.3, indep
    assert shared >= 0.99, shared
    # The bridge counts frames: never fewer bytes than the payload the members counted.
    (wire,) = _values(doc, "independent", "wire bytes / set bytes")
    assert wire >= indep * 0.99, (wire, indep)
    # Cold epoch 1 of the cluster reads from the source; the worker that joins takes over blocks.
    (e1,) = _values(doc, "epochs", "epoch-1 hit ratio")
    assert e1 < 0.5, e1
    (share,) = _values(doc, "join", "new member's ownership share")
    assert 0.0 < share < 1.0, share
    (moved,) = _values(doc, "join", "bytes the new member took over / set bytes")
    assert moved > 0.0, moved
    # Rendezvous hashing: a joining member takes keys only for itself, no other key changes owner.
    (changed,) = _values(doc, "join", "set bytes whose owner changed / set bytes")
    (to_new,) = _values(doc, "join", "... of which to the new member")
    assert 0.0 < changed < 1.0 and to_new == 1.0, (changed, to_new)
    # The kill phase recorded a time series and the throughput before the kill.
    (series,) = doc["series"]
    assert series["kill_index"] > 0 and len(series["mbps"]) > series["kill_index"], series
    assert {t["target"] for t in doc["targets"]} and "| target |" in p.stdout
    # Nothing left behind.
    tag = doc["meta"]["net_tag"]
    assert leftovers(tag) == []
    assert mounted_under(work) == []
    state = json.loads((work / "state.json").read_text())
    assert state["pids"] and not [pid for pid in state["pids"] if pid_alive(pid)]
