"""Turn raw measurement records into medians, ratios, a Markdown report, JSON and a PNG chart.

A *record* is one measured number: ``{"system", "workload", "phase", "metric", "value", "unit",
"better": "higher"|"lower", "run", "partial"?, "timeout"?}``.  Records of the same
(workload, phase, metric, system) over N runs are summarised as median with min-max.

Ratios are always "times better than" (> 1 means the subject, fluidfs, is better): value ratio
for higher-is-better metrics (MB/s, samples/s), inverse ratio for lower-is-better (seconds).
They are taken against the best *peer* (the other FUSE systems: s3fs, rclone) and against the
two *limits* measured in the same run: direct boto3 (network) and local disk (storage).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUBJECT = "fluidfs"
BASELINE = "fluidfs-baseline"  # another fluidfs version in the same run (``--baseline``)
PEERS = ("s3fs", "rclone")
LIMITS = ("boto3", "local")
SYSTEM_ORDER = ("fluidfs", BASELINE, "s3fs", "rclone", "boto3", "local", "fluidfs-lru", "fluidfs-none")

WORKLOAD_TITLES = {
    "seq": "Sequential read, large files (1 MiB reads)",
    "loader": "PyTorch DataLoader over the small-file set (shuffle=True, 3 epochs)",
    "rand": "Random reads 4 KiB-1 MiB over the large files",
    "meta": "Metadata walk over the metadata set",
    "pressure": "Dataset = 2 x cache, 3 shuffled epochs: fluidfs eviction lru vs none",
    "ssd": "Large files from each system's disk cache, page cache dropped (1 MiB reads)",
}
WORKLOAD_ORDER = ("seq", "ssd", "loader", "rand", "meta", "pressure")


@dataclass(frozen=True)
class Summary:
    median: float
    lo: float
    hi: float
    n: int
    partial: bool = False
    timeouts: int = 0


def summarize(values: Iterable[float], partial: bool = False, timeouts: int = 0) -> Summary | None:
    vals = sorted(float(v) for v in values)
    if not vals:
        return None
    return Summary(statistics.median(vals), vals[0], vals[-1], len(vals), partial, timeouts)


def ratio(subject: float | None, other: float | None, better: str) -> float | None:
    """How many times better ``subject`` is than ``other`` (> 1: subject better)."""
    if subject is None or other is None:
        return None
    if better == "higher":
        return subject / other if other > 0 else None
    return other / subject if subject > 0 else None


def best(values: dict[str, float], better: str) -> tuple[str, float] | None:
    """The best (name, value) of ``values`` by direction ``better``; None when empty."""
    if not values:
        return None
    pick = max if better == "higher" else min
    name = pick(values, key=lambda k: values[k])
    return name, values[name]


Key = tuple[str, str, str]  # workload, phase, metric


def aggregate(records: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Group records → {(workload, phase, metric): {"unit", "better", "systems": {sys: Summary}}}."""
    groups: dict[Key, dict[str, Any]] = {}
    raw: dict[Key, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        k = (r["workload"], r["phase"], r["metric"])
        g = groups.setdefault(k, {"unit": r.get("unit", ""), "better": r.get("better", "higher"), "systems": {}})
        g["unit"] = r.get("unit", g["unit"])
        raw.setdefault(k, {}).setdefault(r["system"], []).append(r)
    for k, by_sys in raw.items():
        for system, rs in by_sys.items():
            vals = [r["value"] for r in rs if r.get("value") is not None]
            tmo = sum(1 for r in rs if r.get("timeout"))
            s = summarize(vals, any(r.get("partial") for r in rs), tmo)
            if s is None and tmo:
                s = Summary(float("nan"), float("nan"), float("nan"), 0, False, tmo)
            if s is not None:
                groups[k]["systems"][system] = s
    return groups


def _fmt(v: float | None) -> str:
    if v is None or v != v:
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(s: Summary | None, integer: bool = False) -> str:
    if s is None:
        return "n/a"
    if s.n == 0:
        return f"timeout ({s.timeouts}x)"
    f = (lambda v: f"{v:,.0f}") if integer else _fmt
    txt = f(s.median) if s.n == 1 else f"{f(s.median)} ({f(s.lo)}–{f(s.hi)})"
    if s.partial:
        txt += "*"
    if s.timeouts:
        txt += f" +{s.timeouts} timeout"
    return txt


def _ratio_cell(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def ratios_for(group: dict[str, Any]) -> dict[str, float | None]:
    """fluidfs vs best peer / boto3 / local for one aggregated group."""
    systems: dict[str, Summary] = group["systems"]
    better = group["better"]
    subj = systems.get(SUBJECT)
    sv = subj.median if subj and subj.n else None
    peer_vals = {p: systems[p].median for p in PEERS if p in systems and systems[p].n}
    bp = best(peer_vals, better)
    out: dict[str, float | None] = {"best_peer": ratio(sv, bp[1], better) if bp else None}
    out["best_peer_name"] = bp[0] if bp else None  # type: ignore[assignment]
    for lim in (*LIMITS, BASELINE):
        ls = systems.get(lim)
        out[lim] = ratio(sv, ls.median if ls and ls.n else None, better)
    return out


def _order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [s for s in SYSTEM_ORDER if s in names] + sorted(names - set(SYSTEM_ORDER))


def markdown(result: dict[str, Any]) -> str:
    """The full Markdown report: one table per workload, RSS table, skip reasons."""
    records = result["records"]
    skipped: dict[str, str] = result.get("skipped", {})
    groups = aggregate(records)
    lines: list[str] = []
    m = result.get("meta", {})
    if m:
        lines.append(
            f"Runs: {m.get('runs')} · latency {m.get('latency_ms')} ms/response chunk"
            + (f" · bandwidth {m.get('shaping')}" if m.get("bandwidth_mbit") else "")
            + f" · DataLoader workers {m.get('loader_workers')} · budget {m.get('budget_s')} s per measurement"
            + f" · datasets: {m.get('datasets_desc', '')}"
        )
        lines.append("")
    lines.append(
        "Cells: median (min–max) over runs; `*` = at least one run hit the time budget "
        "(throughput over the part done). Ratios: times better than (> 1 = fluidfs better)."
    )
    lines.append("")
    wanted = list(m.get("workloads") or [])
    present = {k[0] for k in groups}
    workloads = [w for w in WORKLOAD_ORDER if w in present or w in wanted]
    workloads += sorted(present - set(workloads))
    for w in workloads:
        keys = [k for k in groups if k[0] == w and not k[2].startswith("source ")]
        in_wl = _order({s for k in keys for s in groups[k]["systems"]})
        wskip = {
            **{s: r for s, r in skipped.items() if s in SYSTEM_ORDER[:6]},
            **result.get("workload_skipped", {}).get(w, {}),
        }
        if w == "pressure":
            wskip = {s: r for s, r in skipped.items() if s.startswith("fluidfs-")}
        cols = _order(set(in_wl) | set(wskip))
        if not keys and not wskip:
            continue
        if not keys:
            lines.append(f"### {WORKLOAD_TITLES.get(w, w)}")
            lines.append("")
            if wskip:
                lines.append("| " + " | ".join(cols) + " |")
                lines.append("|" + "---|" * len(cols))
                lines.append("| " + " | ".join(f"skipped: {wskip[s]}" for s in cols) + " |")
            else:
                lines.append("No results (see errors below).")
            lines.append("")
            continue
        show_ratios = SUBJECT in cols and w != "pressure"
        lines.append(f"### {WORKLOAD_TITLES.get(w, w)}")
        lines.append("")
        head = ["phase", "metric", *cols]
        with_base = show_ratios and BASELINE in cols
        if show_ratios:
            head += ["fluidfs vs best peer", "vs boto3 (network)", "vs local (storage)"]
        if with_base:
            head.append("vs baseline")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for k in keys:
            g = groups[k]
            row = [k[1], f"{k[2]} ({g['unit']})" if g["unit"] and g["unit"] != k[2] else k[2]]
            for s in cols:
                if s in g["systems"]:
                    row.append(cell(g["systems"][s]))
                elif s in wskip:
                    row.append(f"skipped: {wskip[s]}")
                else:
                    row.append("n/a")
            if show_ratios:
                r = ratios_for(g)
                bp = _ratio_cell(r["best_peer"])
                if r["best_peer"] is not None:
                    bp += f" ({r['best_peer_name']})"
                row += [bp, _ratio_cell(r["boto3"]), _ratio_cell(r["local"])]
                if with_base:
                    row.append(_ratio_cell(r[BASELINE]))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    src = [k for k in groups if k[2].startswith("source ")]
    if src:
        lines.append("### fluidfs source traffic (requests and MB fetched from the store)")
        lines.append("")
        subjects = _order({s for k in src for s in groups[k]["systems"]})
        lines.append("| workload | phase | " + " | ".join(f"{s} requests | {s} MB" for s in subjects) + " |")
        lines.append("|" + "---|" * (2 + 2 * len(subjects)))
        seen: list[tuple[str, str]] = []
        for k in src:
            if (k[0], k[1]) not in seen:
                seen.append((k[0], k[1]))
        for w, p in seen:
            row = [w, p]
            for s in subjects:
                for metric in ("source requests", "source MB"):
                    sg = groups.get((w, p, metric))
                    row.append(cell(sg["systems"].get(s), integer=metric == "source requests") if sg else "n/a")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if SUBJECT in {r["system"] for r in records}:
        lines.extend(goals_markdown(result))
    rss = result.get("rss", {})
    if rss:
        lines.append("### Peak RSS (MiB, max over runs)")
        lines.append("")
        wls = sorted({w for v in rss.values() for w in v}, key=lambda w: (WORKLOAD_ORDER + (w,)).index(w))
        lines.append("| system | " + " | ".join(wls) + " |")
        lines.append("|" + "---|" * (len(wls) + 1))
        for s in _order(rss):
            lines.append(f"| {s} | " + " | ".join(_fmt(rss[s].get(w)) for w in wls) + " |")
        lines.append("")
    if skipped:
        lines.append("Skipped: " + "; ".join(f"{s}: {why}" for s, why in sorted(skipped.items())))
        lines.append("")
    for note in m.get("notes", []):
        lines.append(f"Note: {note}")
        lines.append("")
    errors = result.get("errors", [])
    if errors:
        lines.append(f"Errors ({len(errors)}):")
        lines.append("")
        lines.extend(f"- {e}" for e in errors)
        lines.append("")
    return "\n".join(lines)


def _median(groups: dict[Key, dict[str, Any]], key: Key, system: str) -> float | None:
    g = groups.get(key)
    v = g["systems"].get(system) if g else None
    return v.median if v is not None and v.n else None


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, evaluated on this run's medians: {goal, target, measured, met}."""
    groups = aggregate(result["records"])
    out: list[dict[str, Any]] = []

    def add(goal: str, target: float, measured: float | None, unit: str = "x", at_most: bool = False) -> None:
        met = None if measured is None else (measured <= target if at_most else measured >= target)
        out.append(
            {
                "goal": goal,
                "target": f"{'<=' if at_most else '>='} {target:g}{unit}",
                "measured": None if measured is None else round(measured, 3),
                "unit": unit,
                "met": met,
            }
        )

    def vs_peer(key: Key) -> float | None:
        g = groups.get(key)
        return ratios_for(g)["best_peer"] if g else None

    def vs(key: Key, other: str) -> float | None:
        g = groups.get(key)
        return ratio(_median(groups, key, SUBJECT), _median(groups, key, other), g["better"]) if g else None

    add("cold large-file read vs best FUSE peer", 2, vs_peer(("seq", "cold", "MB/s")))
    add("cold large-file read vs direct boto3", 0.85, vs(("seq", "cold", "MB/s"), "boto3"))
    add(
        "large-file read from the SSD tier, page cache dropped, vs best FUSE peer",
        1,
        vs_peer(("ssd", "page cache dropped", "MB/s")),
    )
    add(
        "warm small-file epoch, page cache dropped, vs best FUSE peer",
        3,
        vs_peer(("loader", "epoch3 warm_dropped", "samples/s")),
    )
    add("warm large-file read vs local disk", 0.6, vs(("seq", "warm", "MB/s"), "local"))
    add("cold small-file epoch vs best FUSE peer", 3, vs_peer(("loader", "epoch1 cold", "samples/s")))
    local_ratio = vs(("meta", "warm", "walk"), "local")  # local_time / fluidfs_time
    add("warm metadata walk time vs local disk", 2, None if not local_ratio else 1 / local_ratio, at_most=True)
    add("cold metadata walk, times faster than s3fs", 5, vs(("meta", "cold", "walk"), "s3fs"))
    for e in ("epoch2", "epoch3"):
        add(
            f"dataset = 2 x cache, eviction none, {e} hit ratio",
            0.4,
            _median(groups, ("pressure", e, "hit ratio"), "fluidfs-none"),
            unit="",
        )
        lru = _median(groups, ("pressure", e, "hit ratio"), "fluidfs-lru")
        out[-1]["beside"] = None if lru is None else f"lru {lru:.2f}"
    rss = result.get("rss", {}).get(SUBJECT, {})
    mem = result.get("meta", {}).get("fluidfs_memory_mib")
    if rss and mem:
        add("fluidfs peak RSS vs memory tier + 200 MiB", mem + 200, max(rss.values()), unit=" MiB", at_most=True)
    return out


def goals_markdown(result: dict[str, Any]) -> list[str]:
    rows = goals(result)
    if not any(r["measured"] is not None for r in rows):
        return []
    lines = [
        "### Goals from the issue (this run's medians)",
        "",
        "| goal | target | measured | met |",
        "|---|---|---|---|",
    ]
    for r in rows:
        meas = "n/a" if r["measured"] is None else f"{r['measured']:g}{r['unit']}"
        if r.get("beside"):
            meas += f" ({r['beside']})"
        met = {True: "yes", False: "**no**", None: "n/a"}[r["met"]]
        lines.append(f"| {r['goal']} | {r['target']} | {meas} | {met} |")
    lines.append("")
    return lines


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: meta, raw records, and the summaries with ratios."""
    groups = aggregate(result["records"])
    summaries = []
    for (w, p, metric), g in groups.items():
        summaries.append(
            {
                "workload": w,
                "phase": p,
                "metric": metric,
                "unit": g["unit"],
                "better": g["better"],
                "systems": {
                    s: {
                        "median": v.median if v.n else None,
                        "min": v.lo if v.n else None,
                        "max": v.hi if v.n else None,
                        "n": v.n,
                        "partial": v.partial,
                        "timeouts": v.timeouts,
                    }
                    for s, v in g["systems"].items()
                },
                "ratios": ratios_for(g),
            }
        )
    return {**result, "summaries": summaries, "goals": goals(result)}


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(to_json(result), indent=1, default=str))


# Charted: the headline metric of each workload and phase.
CHART_METRICS = {"seq": "MB/s", "loader": "samples/s", "rand": "MB/s", "meta": "walk", "pressure": "hit ratio"}


def chart(result: dict[str, Any], path: Path) -> bool:
    """A PNG of grouped bars (median, min-max error bars); False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = aggregate(result["records"])
    panels = [(w, [k for k in groups if k[0] == w and k[2] == CHART_METRICS.get(w)]) for w in WORKLOAD_ORDER]
    panels = [(w, ks) for w, ks in panels if ks]
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (w, keys) in zip(axes[:, 0], panels, strict=True):
        systems = _order({s for k in keys for s in groups[k]["systems"]})
        width = 0.8 / max(1, len(systems))
        for i, s in enumerate(systems):
            xs, ys, lo, hi = [], [], [], []
            for j, k in enumerate(keys):
                v = groups[k]["systems"].get(s)
                if v is None or not v.n:
                    continue
                xs.append(j + i * width)
                ys.append(v.median)
                lo.append(v.median - v.lo)
                hi.append(v.hi - v.median)
            ax.bar(xs, ys, width, yerr=[lo, hi], label=s, capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
        ax.set_xticklabels([k[1] for k in keys])
        unit = groups[keys[0]]["unit"]
        ax.set_ylabel(f"{CHART_METRICS[w]} ({unit})" if unit and unit != CHART_METRICS[w] else CHART_METRICS[w])
        if w != "pressure":
            ax.set_yscale("log")  # cold (network-bound) and warm (memory-bound) differ by 10-100x
        better = groups[keys[0]]["better"]
        ax.set_title(
            f"{WORKLOAD_TITLES.get(w, w)} — {'higher' if better == 'higher' else 'lower'} is better", fontsize=9
        )
        ax.legend(fontsize=7, ncol=len(systems))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
