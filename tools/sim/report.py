"""Metrics of simulator runs, and their Markdown tables, JSON and PNG plots.

Per run: average and p95 job completion time (submit to end), average wait (submit to start),
makespan (first submit to last end), bytes from the source and between peers (and read locally),
GPU utilisation (GPU-seconds held by jobs / (GPUs x makespan)), and the most times any job was
passed over. Ratios compare a policy's average JCT with a baseline's (> 1: the policy is faster).

Caveats: plots need matplotlib (the ``bench`` extra); tables and JSON do not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tools.sim.engine import RunResult

TIB = 1024**4


@dataclass(frozen=True)
class Metrics:
    policy: str
    jobs: int
    avg_jct: float
    p95_jct: float
    avg_wait: float
    makespan: float
    source_bytes: float
    peer_bytes: float
    local_bytes: float
    gpu_utilisation: float
    max_passed_over: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def metrics(run: RunResult) -> Metrics:
    jobs = run.jobs
    if not jobs:
        return Metrics(run.policy, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    jcts = [j.jct for j in jobs]
    first, last = min(j.submit for j in jobs), max(j.end for j in jobs)
    makespan = last - first
    busy = sum(j.gpus * (j.end - j.start) for j in jobs)
    return Metrics(
        policy=run.policy,
        jobs=len(jobs),
        avg_jct=sum(jcts) / len(jcts),
        p95_jct=percentile(jcts, 95),
        avg_wait=sum(j.start - j.submit for j in jobs) / len(jobs),
        makespan=makespan,
        source_bytes=sum(j.bytes_source for j in jobs) + run.warm.source,
        peer_bytes=sum(j.bytes_peer for j in jobs) + run.warm.peer,
        local_bytes=sum(j.bytes_local for j in jobs),
        gpu_utilisation=busy / (run.total_gpus * makespan) if makespan > 0 else 0.0,
        max_passed_over=max(j.passed_over for j in jobs),
    )


def table(rows: Sequence[Metrics], baseline: Mapping[str, str] | None = None) -> str:
    """A Markdown table of ``rows``; ``baseline`` maps a policy to the policy its JCT ratio is
    taken against (a column ``vs`` shows ``baseline avg JCT / policy avg JCT``)."""
    by_name = {m.policy: m for m in rows}
    head = (
        "| policy | avg JCT (s) | p95 JCT (s) | avg wait (s) | makespan (s) | source TiB | peer TiB | GPU util "
        "| max passed over |"
    )
    sep = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if baseline:
        head += " JCT speed-up |"
        sep += " --- |"
    lines = [head, sep]
    for m in rows:
        line = (
            f"| {m.policy} | {m.avg_jct:.0f} | {m.p95_jct:.0f} | {m.avg_wait:.0f} | {m.makespan:.0f} | "
            f"{m.source_bytes / TIB:.2f} | {m.peer_bytes / TIB:.2f} | {m.gpu_utilisation:.2f} | {m.max_passed_over} |"
        )
        if baseline:
            ref = by_name.get(baseline.get(m.policy, ""))
            line += f" {ref.avg_jct / m.avg_jct:.2f}x vs {ref.policy} |" if ref and m.avg_jct > 0 else " |"
        lines.append(line)
    return "\n".join(lines)


def bar_plot(rows: Sequence[Metrics], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [m.policy for m in rows]
    axes[0].bar(names, [m.avg_jct / 60 for m in rows], label="average")
    axes[0].plot(names, [m.p95_jct / 60 for m in rows], "o", color="black", label="p95")
    axes[0].set_ylabel("job completion time (min)")
    axes[0].legend()
    axes[1].bar(names, [m.source_bytes / TIB for m in rows], label="from source")
    axes[1].bar(
        names, [m.peer_bytes / TIB for m in rows], bottom=[m.source_bytes / TIB for m in rows], label="from peers"
    )
    axes[1].set_ylabel("TiB moved")
    axes[1].legend()
    for ax in axes:
        ax.tick_params(axis="x", rotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def line_plot(
    xs: Sequence[float], series: Mapping[str, Sequence[float]], path: Path, title: str, xlabel: str, ylabel: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def heatmap(
    xs: Sequence[float],
    ys: Sequence[float],
    grids: Mapping[str, Sequence[Sequence[float]]],
    path: Path,
    xlabel: str,
    ylabel: str,
) -> None:
    """One heatmap per entry of ``grids`` (rows over ``ys``, columns over ``xs``), side by side,
    each cell labelled with its value; colour centred on 1.0 (red: worse, blue: better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    fig, axes = plt.subplots(1, len(grids), figsize=(5.0 * len(grids), 3.8), squeeze=False)
    fig.subplots_adjust(wspace=0.35)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=0.7, vmax=2.2)
    for ax, (title, grid) in zip(axes[0], grids.items(), strict=True):
        image = ax.imshow(grid, cmap="RdBu", norm=norm, origin="lower", aspect="auto")
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        for i, row in enumerate(grid):
            for k, v in enumerate(row):
                ax.text(k, i, f"{v:.2f}", ha="center", va="center", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="avg JCT speed-up")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
