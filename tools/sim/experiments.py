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

from fluidfs.control.sched.ordering import BasePolicy, SourceModel
from tools.sim.engine import ClusterConfig, Policy, simulate
from tools.sim.report import TIB, Metrics, bar_plot, heatmap, line_plot, metrics, table
from tools.sim.trace import GIB, Trace, TraceConfig, generate, no_sharing

log = logging.getLogger(__name__)

#: the high-sharing trace: every parameter from the middle of the ranges public GPU-cluster traces
#: and the paper give (see docs/scheduling.md), not tuned: 60 datasets of 10 GiB-1 TiB (median
#: 400 GiB), Zipf 1.2 popularity, jobs of median 15 min (log-normal, sigma 1) reading 250 MB/s per
#: GPU when their data is local, a busy period (offered load 1.3)
TRACE = TraceConfig(
    seed=7,
    jobs=200,
    datasets=60,
    zipf_s=1.2,
    load=1.3,
    median_seconds=900.0,
    median_size=400 * GIB,
    min_size=10 * GIB,
    max_size=1024 * GIB,
    gpu_rate=250e6,
)
#: 16 nodes x 8 GPUs, 1 TiB of NVMe cache each (16 TiB: less than the ~26 TiB of datasets), an
#: object store giving 4 GB/s in all, 3 GB/s NICs
CLUSTER = ClusterConfig(
    nodes=16, gpus_per_node=8, cache_bytes=1024 * GIB, source_bandwidth=4.0e9, nic_bandwidth=3.0e9, chunks=16
)
WINDOW = 32
BOUND = 32


def source_model(trace_cfg: TraceConfig, cluster: ClusterConfig) -> SourceModel:
    """What a source-aware policy is told: the sources' bandwidth and one read rate per GPU for
    every job (as the controller's configuration would give it)."""
    return SourceModel(cluster.source_bandwidth, trace_cfg.gpu_rate or 250e6)


def policies(
    placement: str = "affinity",
    bound: int | None = BOUND,
    source: SourceModel | None = None,
    warm_first: bool = True,
) -> list[Policy]:
    """FIFO and SJF, cache-oblivious; with ``warm_first`` their warm-first cache-aware variants;
    with ``source`` their source-aware variants (``+cache+src``)."""
    out = []
    for base in (BasePolicy.FIFO, BasePolicy.SJF):
        out.append(Policy(base, False, placement, window=WINDOW, max_pass_over=bound))
        if warm_first:
            out.append(Policy(base, True, placement, window=WINDOW, max_pass_over=bound))
        if source is not None:
            out.append(
                Policy(
                    base, True, placement, window=WINDOW, max_pass_over=bound, source=source, stagger=True, label="+src"
                )
            )
    return out


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


SERIES = ("FIFO+cache+src vs FIFO", "SJF+cache+src vs SJF", "SJF+cache+src vs FIFO")


def _ratios(rows: Sequence[Metrics]) -> tuple[float, float, float]:
    by = {m.policy.split("/")[0]: m for m in rows}
    return (
        by["fifo"].avg_jct / by["fifo+cache+src"].avg_jct,
        by["sjf"].avg_jct / by["sjf+cache+src"].avg_jct,
        by["fifo"].avg_jct / by["sjf+cache+src"].avg_jct,
    )


def _point(trace_cfg: TraceConfig, cluster: ClusterConfig) -> tuple[Trace, list[Metrics]]:
    trace = generate(trace_cfg)
    pols = policies(source=source_model(trace_cfg, cluster), warm_first=False)
    return trace, run_policies(trace, cluster, pols)


def _sweep(
    name: str,
    values: Sequence[Any],
    make: Callable[[Any], tuple[TraceConfig, ClusterConfig]],
    out: Path,
    xlabel: str,
    results: dict[str, Any],
) -> str:
    rows_md = [
        f"| {xlabel} | repeat share | FIFO avg JCT (s) | SJF avg JCT (s) | source TiB (FIFO / SJF+cache+src) | "
        + " | ".join(SERIES)
        + " |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    series: dict[str, list[float]] = {k: [] for k in SERIES}
    points = []
    for v in values:
        trace, rows = _point(*make(v))
        ratios = _ratios(rows)
        for k, r in zip(SERIES, ratios, strict=True):
            series[k].append(r)
        by = {m.policy.split("/")[0]: m for m in rows}
        rows_md.append(
            f"| {v} | {trace.repeat_share():.2f} | {by['fifo'].avg_jct:.0f} | {by['sjf'].avg_jct:.0f} | "
            f"{by['fifo'].source_bytes / TIB:.1f} / {by['sjf+cache+src'].source_bytes / TIB:.1f} | "
            + " | ".join(f"{r:.2f}x" for r in ratios)
            + " |"
        )
        points.append({"value": v, "repeat_share": trace.repeat_share(), "runs": [m.as_dict() for m in rows]})
    results[name] = points
    xs = [float(v) for v in values]
    line_plot(xs, series, out / f"sweep-{name}.png", f"cache-aware speed-up vs {xlabel}", xlabel, "avg JCT speed-up")
    return "\n".join(rows_md)


def _heatmap(
    name: str,
    xs: Sequence[float],
    ys: Sequence[float],
    make: Callable[[float, float], tuple[TraceConfig, ClusterConfig]],
    out: Path,
    labels: tuple[str, str],
    results: dict[str, Any],
) -> str:
    grid: dict[str, list[list[float]]] = {k: [[0.0] * len(xs) for _ in ys] for k in SERIES}
    points = []
    for i, y in enumerate(ys):
        for k, x in enumerate(xs):
            trace, rows = _point(*make(x, y))
            for key, r in zip(SERIES, _ratios(rows), strict=True):
                grid[key][i][k] = r
            points.append({"x": x, "y": y, "repeat_share": trace.repeat_share(), "runs": [m.as_dict() for m in rows]})
    results[name] = points
    heatmap(xs, ys, grid, out / f"heatmap-{name}.png", labels[0], labels[1])
    md = []
    for key in SERIES:
        md += [f"{key}:", "", f"| {labels[1]} \\ {labels[0]} | " + " | ".join(f"{x:g}" for x in xs) + " |"]
        md.append("| ---: |" + " ---: |" * len(xs))
        md += [f"| {y:g} | " + " | ".join(f"{v:.2f}x" for v in grid[key][i]) + " |" for i, y in enumerate(ys)]
        md.append("")
    return "\n".join(md)


def _placement(trace: Trace, cluster: ClusterConfig, src: SourceModel) -> tuple[list[dict[str, Any]], str]:
    """Per ordering: source + peer bytes and average JCT with random placement, affinity, and
    affinity with the queue preferring jobs that fit near their cache (``local``)."""
    out: list[dict[str, Any]] = []
    lines = [
        "| ordering | source + peer TiB: random | affinity | cut | affinity + local | cut | "
        "avg JCT (s): random | affinity | affinity + local |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for base in (BasePolicy.FIFO, BasePolicy.SJF):
        for mode in ("oblivious", "cache", "src"):
            kw: dict[str, Any] = {} if mode != "src" else {"source": src, "stagger": True, "label": "+src"}
            aware = mode != "oblivious"
            runs = [metrics(simulate(trace, cluster, Policy(base, aware, pl, WINDOW, BOUND, **kw)))
                    for pl in ("random", "affinity")]  # fmt: skip
            if aware:
                near = {**kw, "label": kw.get("label", "") + "+local"}
                runs.append(
                    metrics(simulate(trace, cluster, Policy(base, True, "affinity", WINDOW, BOUND, local=True, **near)))
                )
            moved = [(m.source_bytes + m.peer_bytes) / TIB for m in runs]
            name = runs[0].policy.split("/")[0]
            row = {"ordering": name, "runs": [m.as_dict() for m in runs]}
            out.append(row)
            cells = [f"{moved[0]:.1f}", f"{moved[1]:.1f}", f"{1 - moved[1] / moved[0]:.0%}"]
            cells += [f"{moved[2]:.1f}", f"{1 - moved[2] / moved[0]:.0%}"] if aware else ["", ""]
            cells += [f"{m.avg_jct:.0f}" for m in runs] + ([""] if not aware else [])
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return out, "\n".join(lines)


def run_all(out: Path, quick: bool = False) -> dict[str, Any]:
    """Every experiment; writes report.md, report.json and PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    trace_cfg = dataclasses.replace(TRACE, jobs=30) if quick else TRACE
    results: dict[str, Any] = {"trace": dataclasses.asdict(trace_cfg), "cluster": dataclasses.asdict(CLUSTER)}
    md: list[str] = []
    trace = generate(trace_cfg)
    src = source_model(trace_cfg, CLUSTER)

    # 1. the high-sharing trace, every policy
    rows = run_policies(trace, CLUSTER, policies("random", source=src) + policies("affinity", source=src))
    results["high_sharing"] = {"repeat_share": trace.repeat_share(), "runs": [m.as_dict() for m in rows]}
    results["high_sharing"]["speedups"] = speedups(rows)
    base = {m.policy: m.policy.replace("+cache", "").replace("+src", "") for m in rows}
    md += [f"## High-sharing trace (repeat share {trace.repeat_share():.2f})", "", table(rows, base), ""]
    bar_plot(rows, out / "high-sharing.png", "high-sharing trace")

    # 2. no sharing: every job its own dataset
    lone = no_sharing(trace_cfg)
    rows = run_policies(lone, CLUSTER, policies("affinity", source=src))
    results["no_sharing"] = {"runs": [m.as_dict() for m in rows]}
    base = {m.policy: m.policy.replace("+cache", "").replace("+src", "") for m in rows}
    md += ["## No-sharing trace", "", table(rows, base), ""]

    # 3. pass-over bound: SJF and SJF+cache+src under the same bound
    bound_rows = []
    for bound in (4, 8, 16, 32, None):
        plain = Policy(BasePolicy.SJF, False, "affinity", WINDOW, bound)
        aware = Policy(BasePolicy.SJF, True, "affinity", WINDOW, bound, source=src, stagger=True, label="+src")
        bound_rows.append((bound, metrics(simulate(trace, CLUSTER, plain)), metrics(simulate(trace, CLUSTER, aware))))
    results["bound"] = [{"bound": b, "sjf": p.as_dict(), **m.as_dict()} for b, p, m in bound_rows]
    md += ["## Pass-over bound (affinity placement)", ""]
    md += ["| bound | SJF avg JCT (s) | SJF+cache+src avg JCT (s) | p95 JCT (s) | max passed over | vs SJF |"]
    md += ["| ---: | ---: | ---: | ---: | ---: | ---: |"]
    md += [
        f"| {b if b is not None else 'none'} | {p.avg_jct:.0f} | {m.avg_jct:.0f} | {m.p95_jct:.0f} | "
        f"{m.max_passed_over} | {p.avg_jct / m.avg_jct:.2f}x |"
        for b, p, m in bound_rows
    ]
    md.append("")

    # 4. placement on a multi-epoch trace: compute-bound jobs reading their dataset 2-8 times
    multi = dataclasses.replace(trace_cfg, gpu_rate=None, epochs=(2, 8), load=1.2)
    rows = run_policies(generate(multi), CLUSTER, policies("random", warm_first=False))
    rows += run_policies(generate(multi), CLUSTER, policies("affinity", warm_first=False))
    results["placement_multi_epoch"] = {"trace": dataclasses.asdict(multi), "runs": [m.as_dict() for m in rows]}
    md += ["## Placement on a multi-epoch trace (compute-bound, 2-8 passes per job)", "", table(rows), ""]

    # 5. per-node caches (no cluster cache): what cache-aware scheduling gains when a node's cache
    # serves only its own jobs, against FIFO with random placement, and what the cluster cache adds
    alone = dataclasses.replace(CLUSTER, shared=False)
    rows = run_policies(trace, alone, policies("random", source=src) + policies("affinity", source=src))
    cluster_ref = run_policies(trace, CLUSTER, policies("random", warm_first=False))[0]
    results["per_node_caches"] = {
        "runs": [m.as_dict() for m in rows],
        "speedups_vs_fifo_random": {m.policy: rows[0].avg_jct / m.avg_jct for m in rows},
        "cluster_cache_fifo_random": cluster_ref.as_dict(),
    }
    md += ["## High-sharing trace with per-node caches (no cluster cache), speed-up vs FIFO/random", ""]
    md += [table(rows, {m.policy: rows[0].policy for m in rows}), ""]
    md += [
        f"With the cluster cache, FIFO/random: avg JCT {cluster_ref.avg_jct:.0f} s "
        f"({rows[0].avg_jct / cluster_ref.avg_jct:.2f}x faster than with per-node caches).",
        "",
    ]
    bar_plot(rows, out / "per-node-caches.png", "high-sharing trace, per-node caches")

    # 6. placement when nodes keep copies of what they read from peers (peerCopy: ssd), with and
    # without the queue preferring jobs that fit near their cache; under a backlog and without
    copies = dataclasses.replace(CLUSTER, peer_copy=True)
    results["placement_peer_copy"] = {}
    for load in (trace_cfg.load, 0.8):
        at = trace if load == trace_cfg.load else generate(dataclasses.replace(trace_cfg, load=load))
        rows_, text = _placement(at, copies, src)
        results["placement_peer_copy"][str(load)] = rows_
        md += [f"## Placement with peer copies (peerCopy: ssd), offered load {load}", "", text, ""]

    # 7. where it pays: load x I/O-boundness, then one axis at a time (affinity placement)
    if not quick:
        md += ["## Load x read rate per GPU (affinity placement)", ""]
        md.append(
            _heatmap(
                "load-io",
                [0.8, 1.3, 2.0, 3.0],
                [100, 250, 500],
                lambda x, y: (dataclasses.replace(trace_cfg, load=x, gpu_rate=y * 1e6), CLUSTER),
                out,
                ("offered load", "MB/s per GPU"),
                results,
            )
        )
        sweeps: list[tuple[str, str, Sequence[Any], Callable[[Any], tuple[TraceConfig, ClusterConfig]]]] = [
            (
                "datasets",
                "datasets",
                [10, 30, 60, 120],
                lambda v: (dataclasses.replace(trace_cfg, datasets=v), CLUSTER),
            ),
            (
                "cache",
                "cache per node (GiB)",
                [256, 512, 1024, 2048],
                lambda v: (trace_cfg, dataclasses.replace(CLUSTER, cache_bytes=v * GIB)),
            ),
            (
                "source",
                "source (GB/s)",
                [1, 2, 4, 10],
                lambda v: (trace_cfg, dataclasses.replace(CLUSTER, source_bandwidth=v * 1e9)),
            ),
        ]
        for name, xlabel, values, make in sweeps:
            md += ["", f"## Sweep: {xlabel} (affinity placement)", ""]
            md.append(_sweep(name, values, make, out, xlabel, results))
        md.append("")
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
