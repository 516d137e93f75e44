"""The cluster benchmark's report: the targets, the ratios they are judged on, a markdown table, JSON.

Every target of the cluster cache is a ratio (or a count) computed from medians over the runs
(:func:`tools.bench.cluster.medians`); :func:`targets` says for each one the measured value, the
bound and whether it is met.  Nothing here measures anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tools.bench.cluster import medians


def _get(rows: list[dict[str, Any]], phase: str, metric: str) -> float | None:
    for r in rows:
        if r["phase"] == phase and r["metric"] == metric:
            v = r["median"]
            return float(v) if v is not None else None
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """[{target, value, bound, op, met}] for the targets whose phases ran."""
    rows = medians(result["records"])

    def g(phase: str, metric: str) -> float | None:
        return _get(rows, phase, metric)

    src = "source bytes / set bytes"
    out = [
        ("3 members, same set concurrently: source bytes / set bytes", g("shared", src), "<=", 1.05),
        ("3 independent nodes: source bytes / set bytes (reference: 3)", g("independent", src), "~", 3.0),
        ("cluster epoch-2 hit ratio (set = 2.5x one quota)", g("epochs", "epoch-2 hit ratio"), ">=", 0.95),
        ("single node, none eviction: epoch-2 hit ratio", g("single", "epoch-2 hit ratio"), "<=", 0.40),
        ("source-bound epoch: cluster / independent aggregate throughput",
         _ratio(g("shared", "aggregate throughput"), g("independent", "aggregate throughput")), ">=", 2.0),
        ("kill -9 of a member mid-epoch: read errors", g("kill", "read errors"), "==", 0.0),
        ("kill -9: seconds until throughput >= 80% of before", g("kill", "seconds to >= 80% after kill"), "<=", 5.0),
        ("4th member joins: set bytes whose owner changed / set bytes (ref. 0.25)",
         g("join", "set bytes whose owner changed / set bytes"), "~", 0.25),
        ("4th member joins: source bytes / moved bytes", g("join", "source bytes / moved bytes"), "<=", 0.10),
    ]  # fmt: skip
    res = []
    for name, value, op, bound in out:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            met: bool | None = None
        elif op == "<=":
            met = value <= bound
        elif op == ">=":
            met = value >= bound
        elif op == "==":
            met = value == bound
        else:
            met = None
        res.append({"target": name, "value": value, "op": op, "bound": bound, "met": met})
    return res


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    o = meta["options"]
    lines = [
        "## Cluster cache benchmark",
        "",
        f"Source link {o['source_mbit']:g} Mbit/s ({meta['shaping']}), +{o['latency_ms']:g} ms per response; "
        f"each member {o['member_mbit']:g} Mbit/s each way. Large set {meta['large_set_bytes'] / 1e6:.0f} MB "
        f"({o['large_files']} files); small set {meta['small_set_bytes'] / 1e6:.0f} MB "
        f"({meta['spec']['small_files']} files) = {o['dataset_ratio']:g} x SSD quota {o['quota'] / 2**20:.0f} MiB; "
        f"{o['runs']} run(s), medians; {meta['seconds']:.0f} s.",
        "",
        "| target | measured | bound | met |",
        "|---|---:|---:|:---:|",
    ]
    for t in targets(result):
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {t['op']} {_fmt(t['bound'])} | {met} |")
    lines += ["", "| phase | metric | median | runs |", "|---|---|---:|---|"]
    for r in medians(result["records"]):
        unit = f" {r['unit']}" if r["unit"] and r["unit"] != "x" else ""
        runs = ", ".join(_fmt(v) for v in r["values"])
        lines.append(f"| {r['phase']} | {r['metric']}{unit} | {_fmt(r['median'])} | {runs} |")
    for s in result["series"]:
        k, mbps, tick = s["kill_index"], s["mbps"], s["tick"]
        per_s = [sum(mbps[i : i + int(1 / tick)]) * tick for i in range(0, len(mbps), int(1 / tick))]
        lines += ["", f"Run {s['run']}: aggregate MB/s per second (kill at {k * tick:.2f} s): "
                  + " ".join(f"{v:.0f}" for v in per_s)]  # fmt: skip
    if result["errors"]:
        lines += ["", "Errors:"] + [f"- {e}" for e in result["errors"]]
    if result["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in result["notes"]]
    m = meta["machine"]
    lines += ["", f"Machine: {m['cpus']} CPUs {m['cpu']}, kernel {m['kernel']}, Python {m['python']}, "
              f"load average at the end {' '.join(m['loadavg_at_end'])}."]  # fmt: skip
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: Path) -> None:
    doc = {**result, "targets": targets(result), "medians": medians(result["records"])}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
