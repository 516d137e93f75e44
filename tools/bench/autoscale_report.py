"""The autoscaling workload's verdicts: targets evaluated from one run, a table, the JSON and the plot.

:func:`evaluate` reads the dict :func:`tools.bench.autoscale.run` returns and computes, per job,
the epoch input rates, epochs to target (first epoch at >= 90 % of the compute-bound input
rate), workers at the end, worker-seconds while the trainer ran, scaling events and direction
changes; and the targets of the issue (``targets``: measured value, limit, met or not).
:func:`table` prints them; :func:`plot` draws workers and input rate over time (matplotlib,
imported only there: it is a ``bench``/``dev`` extra, not a runtime dependency).

Definitions (stated in docs/autoscaling.md, "Measured"):

- *compute-bound input rate*: the trainer's last-epoch rate reading the local mirror of the
  dataset (the same sample order, batch size and compute time; no fluidfs, no network);
- *best fixed worker count*: the fewest workers of the sweep whose steady (last-epoch) rate is
  within 10 % of the best steady rate of the sweep;
- *worker-seconds*: worker processes alive (draining ones included), integrated over the
  trainer's run, from the once-a-second timeline;
- *direction changes*: changes between consecutive scaling Events (up/down) of the job,
  the idle scale-in included.

Caveats: rates are per epoch, so "within 3 epochs" has a resolution of one epoch; a job that
failed (``error``) is reported with what it measured and fails its targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TARGET_SHARE = 0.9
MiB = float(1 << 20)


def _epochs(reports: Sequence[Mapping[str, Any]]) -> list[float]:
    return [float(r["bytes_per_s"]) for r in reports if r.get("kind") == "epoch"]


def _worker_seconds(job: Mapping[str, Any]) -> float:
    tl = [p for p in job.get("timeline", []) if job["start"] <= p["t"] <= job["end"]]
    return sum(float(b["processes"]) * (float(b["t"]) - float(a["t"])) for a, b in zip(tl, tl[1:], strict=False))


def _directions(events: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for e in events:
        if e.get("reason") == "ScaledUp":
            out.append("up")
        elif e.get("reason") == "ScaledDown":
            out.append("down")
    return out


def _desired_at(job: Mapping[str, Any], t: float) -> int | None:
    before = [p for p in job.get("timeline", []) if p["t"] <= t]
    return int(before[-1]["desired"]) if before else None


def job_summary(job: Mapping[str, Any], cb_rate: float) -> dict[str, Any]:
    rates = _epochs(job.get("reports", []))
    to_target = next((i + 1 for i, r in enumerate(rates) if r >= TARGET_SHARE * cb_rate), None)
    dirs = _directions(job.get("events", []))
    changes = sum(1 for a, b in zip(dirs, dirs[1:], strict=False) if a != b)
    during = [p for p in job.get("timeline", []) if job["start"] <= p["t"] <= job["end"]]
    return {
        "policy": job["spec"]["policy"],
        "epoch_MiBps": [round(r / MiB, 2) for r in rates],
        "epoch_share": [round(r / cb_rate, 3) if cb_rate else None for r in rates],
        "epochs_to_target": to_target,
        "workers_end": _desired_at(job, job["end"]) if job.get("end") else None,
        "workers_max": max((int(p["desired"]) for p in during), default=None),
        "worker_seconds": round(_worker_seconds(job), 1),
        "seconds": round(job["end"] - job["start"], 1) if job.get("end") else None,
        "scaling": dirs,
        "direction_changes": changes,
        "scale_in_s": round(job["scale_in_done"] - job["end"], 1) if job.get("scale_in_done") else None,
        "blocks": job.get("blocks", {}),
        "error": job.get("error", ""),
    }


def _target(name: str, value: Any, limit: str, met: bool | None) -> dict[str, Any]:
    """``met`` None: the run did not exercise what the target is about."""
    return {"target": name, "measured": value, "limit": limit, "met": None if met is None else bool(met)}


def evaluate(result: Mapping[str, Any]) -> dict[str, Any]:
    """Summaries of every job and the targets of the run."""
    sc = result["scenario"]
    ref = result.get("reference", {})
    cb_io = (_epochs(ref.get("io", [])) or [0.0])[-1]
    # the compute-bound job's own ceiling: its nominal rate (batch bytes / compute time)
    mean = result.get("dataset_bytes", sc["samples"] * sc["sample_size"]) / sc["samples"]
    cb_cb = (_epochs(ref.get("cb", [])) or [sc["batch_size"] * mean / sc["cb_compute_s"]])[-1]
    jobs = result.get("jobs", {})
    out: dict[str, Any] = {"compute_bound_MiBps": round(cb_io / MiB, 2), "cb_job_compute_bound_MiBps": round(
        cb_cb / MiB, 2), "jobs": {}}  # fmt: skip
    for name, job in jobs.items():
        out["jobs"][name] = job_summary(job, cb_cb if name == "compute-bound" else cb_io)
    s = out["jobs"]
    sweep = {int(n.removeprefix("fixed-")): v for n, v in s.items() if n.startswith("fixed-") and v["epoch_MiBps"]}
    best = None
    if sweep:
        top = max(v["epoch_MiBps"][-1] for v in sweep.values())
        best = min(n for n, v in sweep.items() if v["epoch_MiBps"][-1] >= TARGET_SHARE * top)
    out["best_fixed"] = best
    out["sweep_steady_MiBps"] = {n: v["epoch_MiBps"][-1] for n, v in sorted(sweep.items())}
    targets: list[dict[str, Any]] = []
    ts, cap, cb = s.get("training-speed"), s.get("capacity"), s.get("compute-bound")
    if ts is not None:
        e = ts["epochs_to_target"]
        targets.append(_target("I/O-bound job reaches >= 90% of its compute-bound rate within 3 epochs",
                               f"epoch {e}" if e else f"never in {len(ts['epoch_MiBps'])} epochs (best "
                               f"{max(ts['epoch_share'] or [0]):.0%})", "<= 3", e is not None and e <= 3))  # fmt: skip
        if best is not None and ts["workers_end"] is not None:
            targets.append(_target("ends with at most one worker more than the best fixed count",
                                   f"{ts['workers_end']} (best fixed {best})", f"<= {best + 1}",
                                   ts["workers_end"] <= best + 1))  # fmt: skip
        targets.append(_target("at most one change of scaling direction (I/O-bound job)", ts["direction_changes"],
                               "<= 1", ts["direction_changes"] <= 1))  # fmt: skip
        limit = sc["idle_after"] + 30
        si = ts["scale_in_s"]
        idle_in = ts["workers_end"] is not None and ts["workers_end"] > sc["min_workers"]
        targets.append(_target("back to minWorkers after the job ends",
                               (f"{si}s" if si is not None else "never") if idle_in else
                               "not exercised: at minWorkers when the job ended", f"<= idleAfter + 30 = {limit:g}s",
                               (si is not None and si <= limit) if idle_in else None))  # fmt: skip
        b = ts["blocks"]
        if b and not idle_in:
            targets.append(_target("no cached block a remaining member owns is lost at scale-in",
                                   "not exercised (no idle scale-in)", "0", None))  # fmt: skip
        elif b:
            full = b["remaining_used_bytes"] >= b["remaining_quota_bytes"] - sc["block_size"]
            targets.append(_target("no cached block a remaining member owns is lost at scale-in",
                                   f"{b['lost']} of {b['owned_by_remaining']} lost"
                                   f"{' (remaining member at quota)' if full and b['lost'] else ''}",
                                   "0, or the remaining members full", b["lost"] == 0 or full))  # fmt: skip
    if cb is not None:
        extra = (cb["workers_max"] or 0) - sc["min_workers"]
        targets.append(_target("compute-bound job gets no more than one extra worker", extra, "<= 1", extra <= 1))
        targets.append(_target("at most one change of scaling direction (compute-bound job)",
                               cb["direction_changes"], "<= 1", cb["direction_changes"] <= 1))  # fmt: skip
    if ts is not None and cap is not None:
        big = 10**9
        e_ts, e_cap = ts["epochs_to_target"] or big, cap["epochs_to_target"] or big
        targets.append(_target("better than capacity-only: epochs to target",
                               f"{_never(e_ts, big)} vs {_never(e_cap, big)}",
                               "training-speed <= capacity", e_ts <= e_cap and e_ts != big))  # fmt: skip
        targets.append(_target("better than capacity-only: worker-seconds",
                               f"{ts['worker_seconds']:.0f} vs {cap['worker_seconds']:.0f}",
                               "training-speed < capacity", ts["worker_seconds"] < cap["worker_seconds"]))  # fmt: skip
    out["targets"] = targets
    return out


def _never(e: int, big: int) -> str:
    return "never" if e == big else str(e)


def table(result: Mapping[str, Any], ev: Mapping[str, Any]) -> str:
    sc = result["scenario"]
    lines = [
        f"dataset {result.get('dataset_bytes', 0) / MiB:.0f} MiB ({sc['samples']} files), source "
        f"{sc['bandwidth_mbit']:g} Mbit/s + {sc['latency_ms']:g} ms ({result.get('shaping', '?')}), worker quota "
        f"{sc['worker_quota'] / MiB:.0f} MiB, minWorkers {sc['min_workers']}, maxWorkers {sc['max_workers']}",
        f"compute-bound input rate {ev['compute_bound_MiBps']} MiB/s (compute-bound job: "
        f"{ev['cb_job_compute_bound_MiBps']} MiB/s); best fixed worker count {ev['best_fixed']}; run "
        f"{result.get('seconds', 0):.0f}s",
        "",
        f"{'job':16} {'policy':15} {'epoch MiB/s':32} {'to 90%':>6} {'end':>4} {'max':>4} {'worker-s':>9} "
        f"{'changes':>7} {'scale-in':>8}",
    ]
    for name, j in ev["jobs"].items():
        rates = " ".join(f"{r:.1f}" for r in j["epoch_MiBps"])
        si = f"{j['scale_in_s']:.0f}s" if j["scale_in_s"] is not None else "-"
        lines.append(
            f"{name:16} {j['policy']:15} {rates:32} {j['epochs_to_target'] or '-':>6} {j['workers_end'] or '-':>4} "
            f"{j['workers_max'] or '-':>4} {j['worker_seconds']:9.0f} {j['direction_changes']:7d} {si:>8}"
            + (f"  ERROR {j['error']}" if j["error"] else "")
        )
    lines += ["", f"{'target':64} {'measured':34} {'limit':28} met"]
    for t in ev["targets"]:
        met = "n/a" if t["met"] is None else "yes" if t["met"] else "NO"
        lines.append(f"{t['target']:64} {t['measured']!s:34} {t['limit']:28} {met}")
    return "\n".join(lines)


SMOOTH = 5.0  # seconds of trainer intervals averaged per plotted point


def smoothed(reports: Sequence[Mapping[str, Any]], t0: float) -> list[tuple[float, float]]:
    """The trainer's input rate (MiB/s) over a sliding window of ``SMOOTH`` seconds of its intervals."""
    iv = [r for r in reports if r.get("kind") == "interval"]
    out = []
    for i, r in enumerate(iv):
        win = [x for x in iv[: i + 1] if x["t"] > r["t"] - SMOOTH]
        secs = sum(float(x["seconds"]) for x in win)
        out.append((float(r["t"]) - t0, sum(float(x["bytes"]) for x in win) / secs / MiB if secs else 0.0))
    return out


def plot(result: Mapping[str, Any], ev: Mapping[str, Any], path: Path) -> None:
    """Workers and input rate over time of the autoscaled jobs, and the sweep's steady rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("training-speed", "capacity", "compute-bound") if n in result["jobs"]]
    fig, axes = plt.subplots(len(names) + 1, 1, figsize=(9, 2.8 * (len(names) + 1)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=False):
        job = result["jobs"][name]
        t0 = job["start"]
        tl = job["timeline"]
        ax.step([p["t"] - t0 for p in tl], [p["desired"] for p in tl], where="post", color="tab:blue",
                label="workers (desired)")  # fmt: skip
        ax.step([p["t"] - t0 for p in tl], [p["processes"] for p in tl], where="post", color="tab:blue",
                linestyle=":", label="worker processes")  # fmt: skip
        ax.set_ylabel("workers")
        ax.set_ylim(0, result["scenario"]["max_workers"] + 0.5)
        r = ax.twinx()
        pts = smoothed(job["reports"], t0)
        r.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:orange", linewidth=1.0,
               label=f"trainer input MiB/s ({SMOOTH:g} s mean)")  # fmt: skip
        seen = [(p["t"] - t0, p["input_bps"] / MiB) for p in tl if p.get("input_bps") is not None]
        if seen:
            r.plot([p[0] for p in seen], [p[1] for p in seen], color="tab:red", linewidth=0.6, alpha=0.6,
                   label="input the autoscaler sees (per interval)")  # fmt: skip
        cb = ev["cb_job_compute_bound_MiBps"] if name == "compute-bound" else ev["compute_bound_MiBps"]
        r.axhline(TARGET_SHARE * cb, color="tab:green", linestyle="--", linewidth=0.8, label="90% of compute-bound")
        for x in job["reports"]:
            if x.get("kind") == "epoch":
                ax.axvline(x["t"] - t0, color="grey", linewidth=0.5)
        r.set_ylabel("input MiB/s")
        ax.axvline(job["end"] - t0, color="black", linewidth=0.8)
        ax.set_title(f"{name}: workers and input rate (grey: epoch ends; black: job ends)", fontsize=9)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = r.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    ax = axes[-1, 0]
    sweep = ev["sweep_steady_MiBps"]
    ax.bar([str(n) for n in sweep], list(sweep.values()), color="tab:grey")
    ax.axhline(ev["compute_bound_MiBps"], color="tab:green", linestyle="--", linewidth=0.8, label="compute-bound")
    ax.set_xlabel("fixed workers")
    ax.set_ylabel("steady MiB/s")
    ax.set_title("sweep of fixed worker counts: last-epoch input rate", fontsize=9)
    ax.legend(fontsize=7)
    axes[-2, 0].set_xlabel("seconds since the job started")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
