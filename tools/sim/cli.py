"""Command line of the simulator: ``python -m tools.sim {run,scenario,trace,report}`` or ``--calibrate FILE``.

- ``run``: simulate one trace (generated from the flags, or ``--trace FILE``) under the chosen
  policies; prints a Markdown table; ``--json`` and ``--plot`` write the metrics and a PNG.
- ``scenario FILE``: simulate a scenario file (JSON or YAML: cluster, datasets, jobs, policies;
  ``tools/sim/scenario.py``) under each of its policies; prints each job's start, end and JCT per
  policy and the metrics table; ``--json`` writes them.
- ``trace``: write a generated trace as JSON (to edit, or to feed ``run --trace``).
- ``report``: every experiment of docs/scheduling.md into a folder (``report.md``,
  ``report.json``, PNG plots).
- ``--calibrate FILE``: predicted vs measured completion time of each job of a real run (a
  scenario file whose jobs carry the measured ``ended``; ``tools/sim/calibrate.py``).

Bad input exits with a one-line message and code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from fluidfs.control.sched.ordering import BasePolicy, SourceModel
from tools.sim import calibrate as cal
from tools.sim import experiments
from tools.sim import scenario as sc
from tools.sim.engine import Policy, simulate
from tools.sim.report import bar_plot, metrics, table
from tools.sim.trace import GIB, TraceConfig, generate, load, save


def _trace_flags(p: argparse.ArgumentParser) -> None:
    d = experiments.TRACE
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--jobs", type=int, default=d.jobs)
    p.add_argument("--datasets", type=int, default=d.datasets, help="number of datasets (sharing trace)")
    p.add_argument("--zipf", type=float, default=d.zipf_s, help="Zipf exponent of dataset popularity")
    p.add_argument("--load", type=float, default=d.load, help="offered GPU load (1.0 = all GPUs busy)")
    p.add_argument("--median-size-gib", type=float, default=d.median_size / GIB)
    p.add_argument("--median-seconds", type=float, default=d.median_seconds)
    p.add_argument(
        "--gpu-rate-mbps",
        type=float,
        default=(d.gpu_rate or 0) / 1e6,
        help="MB/s a GPU reads when its data is local (a job's passes follow); 0: 1-4 passes per job",
    )
    p.add_argument("--burst", type=float, default=d.burst, help="mean number of jobs per submission (one dataset)")
    p.add_argument("--no-sharing", action="store_true", help="every job its own dataset")


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    c = experiments.CLUSTER
    p.add_argument("--nodes", type=int, default=c.nodes)
    p.add_argument("--gpus-per-node", type=int, default=c.gpus_per_node)
    p.add_argument("--cache-gib", type=float, default=c.cache_bytes / GIB, help="cache per node")
    p.add_argument("--source-gbps", type=float, default=c.source_bandwidth / 1e9, help="source bandwidth, GB/s")
    p.add_argument("--nic-gbps", type=float, default=c.nic_bandwidth / 1e9, help="per-node NIC bandwidth, GB/s")
    p.add_argument("--grace", type=float, default=c.grace, help="seconds a node stays a member after its last job")
    p.add_argument(
        "--peer-copy",
        action="store_true",
        help="a reader's node keeps a copy of each chunk it got from a peer (fluidfs peerCopy: ssd)",
    )
    p.add_argument(
        "--prefer-local",
        action="store_true",
        help="cache-aware policies first start jobs that fit on a node holding their dataset",
    )
    p.add_argument(
        "--per-node-caches",
        action="store_true",
        help="no cluster cache: a node's cache serves only its own readers (no peer reads)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.sim", description="Simulate cache-aware job scheduling.")
    p.add_argument("--calibrate", metavar="FILE", type=Path, help="compare with a measured run (JSON)")
    p.add_argument("--no-replay", action="store_true", help="with --calibrate: let the simulator place jobs")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="simulate one trace under some policies")
    _trace_flags(run)
    _cluster_flags(run)
    run.add_argument("--trace", type=Path, help="a trace JSON (instead of generating one)")
    run.add_argument("--policy", choices=["fifo", "sjf", "all"], default="all")
    run.add_argument(
        "--ordering",
        choices=["oblivious", "cache", "source", "both", "all"],
        default="both",
        help="cache: warm first; source: source-aware (effective duration, evictions, staggering); "
        "both: oblivious and cache; all: the three",
    )
    run.add_argument("--placement", choices=["random", "affinity", "both"], default="both")
    run.add_argument("--window", type=int, default=experiments.WINDOW)
    run.add_argument("--max-pass-over", type=int, default=experiments.BOUND, help="-1: unbounded")
    run.add_argument("--plot", type=Path, help="write a PNG of JCT and bytes per policy")
    run.add_argument("--json", dest="run_json", metavar="FILE", type=Path, help="also write the metrics as JSON")
    scn = sub.add_parser("scenario", help="simulate a scenario file (JSON or YAML) under its policies")
    scn.add_argument("file", type=Path)
    scn.add_argument("--seed", type=int, default=1, help="seed of random placement")
    scn.add_argument("--json", dest="run_json", metavar="FILE", type=Path, help="also write the results as JSON")
    tr = sub.add_parser("trace", help="write a generated trace as JSON")
    _trace_flags(tr)
    tr.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("report", help="run every experiment of docs/scheduling.md")
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument("--quick", action="store_true", help="small trace, no sweeps (a smoke test)")
    return p


def _trace_config(a: argparse.Namespace) -> TraceConfig:
    """The report's high-sharing trace with the flags' changes."""
    if a.gpu_rate_mbps < 0 or a.burst < 1:
        _fail("--gpu-rate-mbps must be >= 0 and --burst >= 1")
    return dataclasses.replace(
        experiments.TRACE,
        seed=a.seed,
        jobs=a.jobs,
        datasets=a.datasets,
        zipf_s=a.zipf,
        load=a.load,
        median_size=a.median_size_gib * GIB,
        median_seconds=a.median_seconds,
        gpu_rate=a.gpu_rate_mbps * 1e6 or None,
        burst=a.burst,
    )


def _fail(message: str) -> None:
    print(f"tools.sim: {message}", file=sys.stderr)
    raise SystemExit(2)


def _scenario(a: argparse.Namespace) -> None:
    s = sc.load(a.file)
    runs = [simulate(s.trace, s.cluster, p, seed=a.seed) for p in s.policies]
    names = [r.policy for r in runs]
    print("| job | dataset | GPUs | arrival (s) | " + " | ".join(f"{n} start / end / JCT (s)" for n in names) + " |")
    print("| --- | --- | ---: | ---: |" + " ---: |" * len(runs))
    by_run = [{j.name: j for j in r.jobs} for r in runs]
    for job in sorted(s.trace.jobs, key=lambda j: (j.submit, j.name)):
        cells = [f"{b[job.name].start:.1f} / {b[job.name].end:.1f} / {b[job.name].jct:.1f}" for b in by_run]
        print(f"| {job.name} | {job.dataset} | {job.gpus} | {job.submit:.1f} | " + " | ".join(cells) + " |")
    rows = [metrics(r) for r in runs]
    print()
    print(table(rows, {m.policy: _base_name(m.policy) for m in rows}))
    json_out = a.run_json or a.json
    if json_out:
        doc = {
            "policies": [
                {
                    "policy": r.policy,
                    "metrics": m.as_dict(),
                    "jobs": [
                        {"name": j.name, "node": j.node, "start": j.start, "end": j.end, "jct": j.jct} for j in r.jobs
                    ],
                }
                for r, m in zip(runs, rows, strict=True)
            ]
        }
        json_out.write_text(json.dumps(doc, indent=1) + "\n")


def _base_name(policy: str) -> str:
    """The policy a cache-aware one is compared with: the same base and placement, oblivious."""
    return policy.replace("+cache", "").replace("+src", "").replace("+local", "")


def main(argv: list[str] | None = None) -> None:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(message)s")
    try:
        if a.calibrate is not None:
            measured = cal.calibrate(a.calibrate, replay=not a.no_replay)
            print(cal.table(measured))
            if a.json:
                doc = [
                    {"job": m.name, "measured": m.measured, "predicted": m.predicted, "error": m.error}
                    for m in measured
                ]
                a.json.write_text(json.dumps(doc, indent=1) + "\n")
            return
        if a.command == "scenario":
            _scenario(a)
            return
        if a.command == "trace":
            cfg = _trace_config(a)
            save(generate(cfg, sharing=not a.no_sharing), a.out)
            return
        if a.command == "report":
            experiments.run_all(a.out, quick=a.quick)
            print((a.out / "report.md").read_text(), end="")
            return
        if a.command != "run":
            _fail("give a command (run, trace, report) or --calibrate FILE")
        for name in ("nodes", "gpus_per_node", "jobs", "window"):
            if getattr(a, name) < 1:
                _fail(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("cache_gib", "source_gbps", "nic_gbps", "load"):
            if getattr(a, name) <= 0:
                _fail(f"--{name.replace('_', '-')} must be positive")
        trace_cfg = _trace_config(a)
        trace = load(a.trace) if a.trace else generate(trace_cfg, sharing=not a.no_sharing)
        cluster = dataclasses.replace(
            experiments.CLUSTER,
            nodes=a.nodes,
            gpus_per_node=a.gpus_per_node,
            cache_bytes=int(a.cache_gib * GIB),
            source_bandwidth=a.source_gbps * 1e9,
            nic_bandwidth=a.nic_gbps * 1e9,
            grace=a.grace,
            shared=not a.per_node_caches,
            peer_copy=a.peer_copy,
        )
        bases = [BasePolicy.FIFO, BasePolicy.SJF] if a.policy == "all" else [BasePolicy(a.policy)]
        modes = {
            "oblivious": ["oblivious"],
            "cache": ["cache"],
            "source": ["source"],
            "both": ["oblivious", "cache"],
            "all": ["oblivious", "cache", "source"],
        }[a.ordering]
        places = ["random", "affinity"] if a.placement == "both" else [a.placement]
        bound = None if a.max_pass_over < 0 else a.max_pass_over
        rate = trace_cfg.gpu_rate if a.trace is None else sc.mean_gpu_rate(trace)
        source = SourceModel(cluster.source_bandwidth, rate or sc.mean_gpu_rate(trace))
        near = "+local" if a.prefer_local else ""

        def policy(b: BasePolicy, mode: str, pl: str) -> Policy:
            if mode == "oblivious":
                return Policy(b, False, pl, a.window, bound)
            if mode == "cache":
                return Policy(b, True, pl, a.window, bound, local=a.prefer_local, label=near)
            return Policy(b, True, pl, a.window, bound, source=source, stagger=True, local=a.prefer_local,
                          label="+src" + near)  # fmt: skip

        pols = [policy(b, m, pl) for pl in places for b in bases for m in modes]
        rows = [metrics(simulate(trace, cluster, pol, seed=a.seed)) for pol in pols]
        print(f"trace: {len(trace.jobs)} jobs, {len(trace.datasets)} datasets, repeat share {trace.repeat_share():.2f}")
        print(table(rows, {m.policy: _base_name(m.policy) for m in rows}))
        json_out = a.run_json or a.json
        if json_out:
            json_out.write_text(json.dumps([m.as_dict() for m in rows], indent=1) + "\n")
        if a.plot:
            bar_plot(rows, a.plot, f"{len(trace.jobs)} jobs")
    except (sc.ScenarioError, ValueError, KeyError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}")
