"""The simulator runs behind docs/scheduling.md: policies, sweeps, no sharing, bound, placement.

``run_all`` writes ``report.md`` (the tables), ``report.json`` (every metric of every run) and
PNG plots into an output folder. Every run is seeded; the same command gives the same numbers.

Caveats: one seed per point (the tables say so); ratios of a few percent are within the noise
of a single trace.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fluidfs.control.sched.ordering import BasePolicy
from tools.sim.engine import ClusterConfig, Policy, simulate
from tools.sim.report import Metrics, bar_plot, line_plot, metrics, table
from tools.sim.trace import GIB, Trace, TraceConfig, generate, no_sharing

log = logging.getLogger(__name__)

#: the high-sharing trace: 20 datasets, Zipf 1.2 (about 90 % of jobs repeat a dataset), load 1.2
TRACE = TraceConfig(seed=7, jobs=200, datasets=20, zipf_s=1.2, load=1.2, median_size=200 * GIB, epochs=(2, 8))
CLUSTER = ClusterConfig(nodes=16, gpus_per_node=8, cache_bytes=400 * GIB, source_bandwidth=1.0e9)
WINDOW = 32
BOUND = 32


def policies(placement: str = "affinity", bound: int | None = BOUND) -> list[Policy]:
    return [
        Policy(base, aware, placement, window=WINDOW, max_pass_over=bound)
        for base in (BasePolicy.FIFO, BasePolicy.SJF)
        for aware in (False, True)
    ]


def run_policies(trace: Trace, cluster: ClusterConfig, pols: Sequence[Policy]) -> list[Metrics]:
    out = []
    for p in pols:
        m = metrics(simulate(trace, cluster, p))
        log.info("%s: avg JCT %.0f s", m.policy, m.avg_jct)
        out.append(m)
    return out


def speedups(rows: Sequence[Metrics]) -> dict[str, float]:
    """Average-JCT speed-up of each cache-aware policy over FIFO and SJF (same placement)."""
    by = {m.policy: m for m in rows}
    out: dict[str, float] = {}
    for m in rows:
        if "+cache" not in m.policy:
            continue
        place = m.policy.split("/")[1]
        for base in ("fifo", "sjf"):
            ref = by.get(f"{base}/{place}")
            if ref:
                out[f"{m.policy} vs {ref.policy}"] = ref.avg_jct / m.avg_jct
    return out


def _sweep(
    name: str,
    values: Sequence[Any],
    make: Callable[[Any], tuple[Trace, ClusterConfig]],
    out: Path,
    xlabel: str,
    results: dict[str, Any],
) -> str:
    rows_md = [
        f"| {xlabel} | repeat share | FIFO avg JCT (s) | SJF avg JCT (s) "
        "| FIFO+cache vs FIFO | SJF+cache vs SJF | SJF+cache vs FIFO |"
    ]
    rows_md.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    series: dict[str, list[float]] = {"FIFO+cache vs FIFO": [], "SJF+cache vs SJF": [], "SJF+cache vs FIFO": []}
    points = []
    for v in values:
        trace, cluster = make(v)
        rows = run_policies(trace, cluster, policies())
        by = {m.policy.split("/")[0]: m for m in rows}
        r1 = by["fifo"].avg_jct / by["fifo+cache"].avg_jct
        r2 = by["sjf"].avg_jct / by["sjf+cache"].avg_jct
        r3 = by["fifo"].avg_jct / by["sjf+cache"].avg_jct
        for k, r in zip(series, (r1, r2, r3), strict=True):
            series[k].append(r)
        rows_md.append(
            f"| {v} | {trace.repeat_share():.2f} | {by['fifo'].avg_jct:.0f} | {by['sjf'].avg_jct:.0f} | "
            f"{r1:.2f}x | {r2:.2f}x | {r3:.2f}x |"
        )
        points.append({"value": v, "repeat_share": trace.repeat_share(), "runs": [m.as_dict() for m in rows]})
    results[name] = points
    xs = [float(v) for v in values]
    line_plot(xs, series, out / f"sweep-{name}.png", f"cache-aware speed-up vs {xlabel}", xlabel, "avg JCT speed-up")
    return "\n".join(rows_md)


def run_all(out: Path, quick: bool = False) -> dict[str, Any]:
    """Every experiment; writes report.md, report.json and PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    trace_cfg = dataclasses.replace(TRACE, jobs=30) if quick else TRACE
    results: dict[str, Any] = {"trace": dataclasses.asdict(trace_cfg), "cluster": dataclasses.asdict(CLUSTER)}
    md: list[str] = []
    trace = generate(trace_cfg)

    # 1. the high-sharing trace, every policy
    rows = run_policies(trace, CLUSTER, policies("random") + policies("affinity"))
    results["high_sharing"] = {"repeat_share": trace.repeat_share(), "runs": [m.as_dict() for m in rows]}
    results["high_sharing"]["speedups"] = speedups(rows)
    base = {m.policy: m.policy.replace("+cache", "") for m in rows}
    md += [f"## High-sharing trace (repeat share {trace.repeat_share():.2f})", "", table(rows, base), ""]
    bar_plot(rows, out / "high-sharing.png", "high-sharing trace")

    # 2. no sharing: every job its own dataset
    lone = no_sharing(trace_cfg)
    rows = run_policies(lone, CLUSTER, policies("affinity"))
    results["no_sharing"] = {"runs": [m.as_dict() for m in rows]}
    md += ["## No-sharing trace", "", table(rows, {m.policy: m.policy.replace("+cache", "") for m in rows}), ""]

    # 3. pass-over bound
    bound_rows = []
    for bound in (4, 8, 16, 32, None):
        p = Policy(BasePolicy.SJF, True, "affinity", window=WINDOW, max_pass_over=bound)
        m = metrics(simulate(trace, CLUSTER, p))
        bound_rows.append((bound, m))
    results["bound"] = [{"bound": b, **m.as_dict()} for b, m in bound_rows]
    md += ["## Pass-over bound (SJF+cache, affinity)", "", "| bound | avg JCT (s) | p95 JCT (s) | max passed over |"]
    md += ["| ---: | ---: | ---: | ---: |"]
    md += [
        f"| {b if b is not None else 'none'} | {m.avg_jct:.0f} | {m.p95_jct:.0f} | {m.max_passed_over} |"
        for b, m in bound_rows
    ]
    md.append("")

    # 4. sweeps
    if not quick:
        md += ["## Sweeps (affinity placement)", ""]
        md += ["### Sharing (Zipf exponent)", ""]
        md.append(
            _sweep(
                "sharing",
                [0.0, 0.6, 1.2, 1.8],
                lambda s: (generate(dataclasses.replace(trace_cfg, zipf_s=s)), CLUSTER),
                out,
                "zipf_s",
                results,
            )
        )
        md += ["", "### Load", ""]
        md.append(
            _sweep(
                "load",
                [0.6, 0.9, 1.2, 1.5],
                lambda v: (generate(dataclasses.replace(trace_cfg, load=v)), CLUSTER),
                out,
                "load",
                results,
            )
        )
        md += ["", "### Cache per node (GiB)", ""]
        md.append(
            _sweep(
                "cache",
                [100, 200, 400, 800, 1600],
                lambda v: (trace, dataclasses.replace(CLUSTER, cache_bytes=v * GIB)),
                out,
                "cache_gib",
                results,
            )
        )
        md += ["", "### Source bandwidth (GB/s)", ""]
        md.append(
            _sweep(
                "source",
                [0.5, 1.0, 2.0, 4.0],
                lambda v: (trace, dataclasses.replace(CLUSTER, source_bandwidth=v * 1e9)),
                out,
                "source_gbps",
                results,
            )
        )
        md.append("")
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
