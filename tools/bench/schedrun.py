"""A real scheduling run of a scenario file, measured and compared with the simulator (the calibration).

``python -m tools.bench.schedrun SCENARIO.yaml [--out RUN.yaml] [--policy N] [--workdir DIR]``
takes a scenario (:mod:`tools.sim.scenario`: cluster of members, datasets, jobs, policies, plus
an optional ``rig`` section the simulator ignores), and for each chosen policy (all by default;
``--policy N`` the N-th, from 0) builds a fresh cluster (:class:`tools.bench.schedrig.SchedRig`),
then replays the jobs in real time: at each job's ``arrival`` it joins the queue; whenever a job
arrives or ends, the controller's own ``ordering.plan`` decides which queued jobs start (free GPUs
per member; each dataset's cached fraction, size and readers, from the members' SSD directories)
and ``tools.sim.scoring.choose_node`` places each one (cache-affinity labels from
``locations.desired_labels`` over the same census), exactly as the simulator does. A started job
is an emulated trainer (:mod:`tools.bench.trainer`) reading its dataset through its member's
mount, ``samples / dataset samples`` shuffled passes, ``computePerSample`` seconds of sleep each.

It writes the scenario with that policy first and each job's measured ``started``, ``ended``
(seconds since the run's start, the clock of ``arrival``) and ``node`` as RUN.yaml (with
``-pN`` before the suffix when several policies run), plus a ``run`` section (date, machine,
load, rig, per-job trainer summaries, source bytes), then prints the calibration table
(``tools.sim.calibrate``; also written as RUN.md).

Exit codes: 0 done, 2 bad scenario or arguments, 1 a job failed or the run broke.

Caveats: jobs take whole passes (``samples`` a multiple of the dataset's); warm-ups
(``warmAhead``) are not run; a job is one trainer process on one member (``gpus`` <= a member's).
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from fluidfs.control.sched import locations, ordering
from fluidfs.util.sizes import parse_size
from tools.bench.measure import machine
from tools.bench.schedrig import DataSet, RigParams, SchedRig, describe
from tools.bench.trainer import TrainerProcess, summarize
from tools.sim import calibrate
from tools.sim import scenario as sc
from tools.sim.engine import Policy, dataset_key
from tools.sim.scoring import choose_node
from tools.sim.trace import Job

log = logging.getLogger(__name__)

POLL_S = 0.1


@dataclass
class Record:
    """What was measured of one job (seconds since the run's start)."""

    arrival: float
    started: float | None = None
    ended: float | None = None
    node: str = ""
    passed_over: int = 0
    error: str = ""
    trainer: dict[str, Any] = field(default_factory=dict)


def _bytes(value: Any, where: str) -> int:
    """A size from the scenario: a number of bytes or a string with a unit (``8Mi``)."""
    try:
        return int(value) if isinstance(value, (int, float)) else parse_size(str(value))
    except ValueError as e:
        raise sc.ScenarioError(f"{where}: {e}") from None


def rig_params(doc: Mapping[str, Any], nice: int = 0) -> RigParams:
    r = doc.get("rig") or {}
    if not isinstance(r, Mapping):
        raise sc.ScenarioError("rig: must be a mapping")
    d = RigParams()
    try:
        return RigParams(
            latency_ms=float(r.get("latencyMs", d.latency_ms)),
            memory_bytes=int(_bytes(r.get("memoryBytes", d.memory_bytes), "rig.memoryBytes")),
            readers=int(r.get("readers", d.readers)),
            batch_size=int(r.get("batchSize", d.batch_size)),
            prefetch_batches=int(r.get("prefetchBatches", d.prefetch_batches)),
            nice=nice,
        )
    except (TypeError, ValueError) as e:
        raise sc.ScenarioError(f"rig: {e}") from None


def data_sets(doc: Mapping[str, Any]) -> list[DataSet]:
    """The datasets as sample files (each needs ``samples``; ``bytes / samples`` per file)."""
    out = []
    for i, d in enumerate(doc["datasets"]):
        if "samples" not in d:
            raise sc.ScenarioError(f"datasets[{i}].samples: a real run needs it")
        n = int(d["samples"])
        out.append(DataSet(d["name"], n, _bytes(d["bytes"], f"datasets[{i}].bytes") // n))
    return out


def passes(job: Job) -> int:
    """Whole passes the job reads (the trainer reads whole epochs)."""
    n = round(job.epochs)
    if n < 1 or abs(job.epochs - n) > 1e-9:
        raise sc.ScenarioError(f"job {job.name}: reads {job.epochs:g} passes; a real run needs whole passes")
    return n


def check(scen: sc.Scenario, policy: Policy) -> None:
    if policy.warm_ahead:
        raise sc.ScenarioError("policies: warmAhead is not run by the real run (set it to 0)")
    for j in scen.trace.jobs:
        passes(j)


def dataset_state(
    census: Mapping[str, Mapping[str, int]],
    used: Mapping[str, int],
    sizes: Mapping[str, int],
    reading: Mapping[str, int],
    cache_bytes: int,
) -> ordering.DatasetState:
    """The queue's view of the datasets: cached fractions (cluster-wide), readers (GPUs), free cache bytes."""
    held: dict[str, int] = {}
    for per in census.values():
        for ds, n in per.items():
            held[ds] = held.get(ds, 0) + n
    keys = {ds: dataset_key(ds) for ds in sizes}
    fractions = {keys[ds]: min(1.0, n / sizes[ds]) for ds, n in held.items() if sizes.get(ds)}
    readers = {keys[ds]: g for ds, g in reading.items() if g > 0}
    free = float(sum(max(0, cache_bytes - u) for u in used.values()))
    key_sizes = {keys[ds]: s for ds, s in sizes.items()}
    return ordering.DatasetState(fractions, frozenset(readers), frozenset(), key_sizes, readers, free)


def decide(
    pending: Mapping[str, Job],
    passed: Mapping[str, int],
    free: Mapping[str, int],
    total: Mapping[str, int],
    state: ordering.DatasetState,
    census: Mapping[str, Mapping[str, int]],
    policy: Policy,
    rng: random.Random,
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(jobs to start with their member, in order; updated pass-over counts): plan, then place."""
    infos = [
        ordering.JobInfo(j.name, j.submit, j.gpus, 1, j.compute_seconds, (dataset_key(j.dataset),), passed[j.name])
        for j in pending.values()
    ]
    decision = ordering.plan(infos, state, ordering.Capacity(dict(free), None, dict(total)), policy.ordering_config())
    labels = None
    if policy.placement == "affinity":
        labels = {
            n: locations.desired_labels({dataset_key(ds): b for ds, b in per.items()}) for n, per in census.items()
        }
    left = dict(free)
    admitted = [pending[n] for n in decision.admit]
    out = []
    for i, job in enumerate(admitted):
        rest = [ordering.JobInfo(o.name, o.submit, o.gpus) for o in admitted[i + 1 :]]
        node = choose_node(job.name, job.gpus, dataset_key(job.dataset), left, total, labels, rest, rng)
        left[node] -= job.gpus
        out.append((job.name, node))
    return out, dict(decision.passed_over)


def run_document(
    doc: Mapping[str, Any], policy_index: int, records: Mapping[str, Record], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The scenario with the run's policy first and the measurements filled in (the calibration input)."""
    out = copy.deepcopy(dict(doc))
    raw = out.get("policies") or ([out["policy"]] if "policy" in out else None)
    if raw is not None:
        out["policies"] = [raw[policy_index]]
        out.pop("policy", None)
    for j in out["jobs"]:
        r = records.get(j["name"])
        if r is None:
            continue
        if r.started is not None:
            j["started"] = round(r.started, 2)
        if r.ended is not None and not r.error:
            j["ended"] = round(r.ended, 2)
        if r.node:
            j["node"] = r.node
    run = dict(meta)
    run["jobs"] = {
        n: {"arrival": r.arrival, "passedOver": r.passed_over, "error": r.error, "trainer": r.trainer}
        for n, r in sorted(records.items())
    }
    out["run"] = run
    return out


def _trainer_summary(tp: TrainerProcess, t0: float) -> dict[str, Any]:
    s = summarize(tp.reports())
    return {
        "firstRead": round(s.start - t0, 2) if s.start else None,
        "end": round(s.end - t0, 2) if s.end else None,
        "epochSeconds": [round(float(e["seconds"]), 2) for e in s.epochs],
        "epochMBps": [round(r / 1e6, 2) for r in s.epoch_rates()],
        "waitSeconds": [round(float(e.get("wait_s", 0.0)), 2) for e in s.epochs],
        "errors": s.errors,
        "finished": s.finished,
    }


def replay(
    rig: SchedRig, scen: sc.Scenario, policy: Policy, progress: Callable[[str], None], timeout: float = 900.0
) -> dict[str, Record]:
    """Run the scenario's jobs on ``rig`` under ``policy``; per job what was measured."""
    members = list(rig.members)
    total = {m: scen.cluster.gpus_per_node for m in members}
    free = dict(total)
    sizes = {d.name: d.size for d in scen.trace.datasets}
    samples = {d.name: d.samples for d in rig.sets}
    jobs = {j.name: j for j in scen.trace.jobs}
    arrivals = sorted(scen.trace.jobs, key=lambda j: (j.submit, j.name))
    records = {j.name: Record(j.submit) for j in arrivals}
    pending: dict[str, Job] = {}
    passed: dict[str, int] = {}
    running: dict[str, TrainerProcess] = {}
    rng = random.Random(0)
    t0 = time.time()
    while arrivals or pending or running:
        now = time.time() - t0
        if now > timeout:
            raise TimeoutError(f"the run did not finish within {timeout:.0f}s")
        changed = False
        while arrivals and arrivals[0].submit <= now:
            j = arrivals.pop(0)
            pending[j.name], passed[j.name], changed = j, 0, True
        for name, tp in list(running.items()):
            if tp.running():
                continue
            rec, code = records[name], tp.wait()
            rec.ended = time.time() - t0
            rec.trainer = _trainer_summary(tp, t0)
            if rec.trainer.get("end") is not None:
                rec.ended = float(rec.trainer["end"])
            if code != 0 or rec.trainer["errors"] or not rec.trainer["finished"]:
                rec.error = f"trainer exit {code}, {rec.trainer.get('errors')} read errors"
            free[rec.node] += jobs[name].gpus
            del running[name]
            changed = True
            progress(f"{now:6.1f}s {name} ended on {rec.node} (JCT {rec.ended - rec.arrival:.1f}s) {rec.error}")
        if changed and pending:
            reading: dict[str, int] = {}
            for name in running:
                reading[jobs[name].dataset] = reading.get(jobs[name].dataset, 0) + jobs[name].gpus
            census = rig.census()
            state = dataset_state(census, rig.used(), sizes, reading, scen.cluster.cache_bytes)
            starts, counts = decide(pending, passed, free, total, state, census, policy, rng)
            passed.update(counts)
            for name, node in starts:
                job = pending.pop(name)
                rec = records[name]
                rec.node, rec.passed_over, rec.started = node, passed.pop(name), time.time() - t0
                free[node] -= job.gpus
                per_sample = job.compute_seconds * job.gpus / job.epochs / samples[job.dataset]
                running[name] = rig.trainer(name, node, job.dataset, passes(job), per_sample)
                progress(f"{rec.started:6.1f}s {name} ({job.dataset}) started on {node}")
        time.sleep(POLL_S)
    return records


def with_source(doc: Mapping[str, Any], bandwidth: float) -> dict[str, Any]:
    """``doc`` with ``cluster.sourceBandwidth`` replaced (e.g. by the measured one)."""
    out = copy.deepcopy(dict(doc))
    out["cluster"]["sourceBandwidth"] = round(bandwidth)
    return out


def out_path(out: Path, index: int, several: bool) -> Path:
    return out.with_name(f"{out.stem}-p{index}{out.suffix}") if several else out


def run_policy(doc: Mapping[str, Any], scen: sc.Scenario, index: int, args: argparse.Namespace, out: Path) -> list[str]:
    """Run one policy; write RUN.yaml and RUN.md; the names of the jobs that failed."""
    policy = scen.policies[index]
    check(scen, policy)
    params = rig_params(doc, args.nice)
    sets = data_sets(doc)
    progress: Callable[[str], None] = lambda s: print(f"[{policy.name}] {s}", flush=True)  # noqa: E731
    started = datetime.now(timezone.utc)
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    workdir = Path(args.workdir) / f"p{index}"
    with SchedRig(
        workdir, scen.cluster.node_names(), scen.cluster.cache_bytes, scen.cluster.source_bandwidth, sets, params,
        progress,
    ) as rig:  # fmt: skip
        probe = rig.probe_source()
        progress(f"source probe: {probe / 1e6:.2f} MB/s through the capped proxy")
        t0 = time.time()
        records = replay(rig, scen, policy, progress)
        wall = time.time() - t0
        meta = {
            "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "policy": policy.name, "policyIndex": index,
            "command": " ".join(["python -m tools.bench.schedrun", *sys.argv[1:]]),
            "machine": machine(), "loadavgAtStart": load_start, "rig": describe(rig),
            "sourceProbeBytesPerS": round(probe), "sourceBytes": rig.source_bytes(), "wallSeconds": round(wall, 1),
            "census": rig.census(),
        }  # fmt: skip
    result = run_document(doc, index, records, meta)
    out.write_text(yaml.safe_dump(result, sort_keys=False, width=120))
    text = f"# Calibration: {policy.name}\n\n{calibration_text(result, probe)}"
    failed = {n: r.error for n, r in records.items() if r.error}
    if failed:
        text += "\nNot compared (failed): " + "; ".join(f"{n}: {e}" for n, e in sorted(failed.items())) + "\n"
    out.with_suffix(".md").write_text(text)
    print(text, flush=True)
    return sorted(failed)


def calibration_text(result: Mapping[str, Any], probe: float) -> str:
    """The calibration tables of a run document: as written, and with the probed source bandwidth."""
    text = calibrate.table(calibrate.compare(sc.parse(result))) + "\n"
    text += f"\nWith the measured source bandwidth ({probe / 1e6:.2f} MB/s, the probe) as sourceBandwidth:\n\n"
    return text + calibrate.table(calibrate.compare(sc.parse(with_source(result, probe)))) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench.schedrun", description=__doc__.splitlines()[0])
    p.add_argument("scenario", type=Path, help="scenario file (YAML or JSON)")
    p.add_argument("--out", type=Path, default=Path("run.yaml"), help="run document (-pN added for several policies)")
    p.add_argument("--policy", type=int, default=None, help="run only the N-th policy (from 0)")
    p.add_argument("--workdir", default="/tmp/fluidfs-schedrun", help="scratch directory (removed and re-made)")
    p.add_argument("--nice", type=int, default=0, help="nice level of the trainers")
    p.add_argument("--readers", type=int, default=None, help="override rig.readers (the trainers' reader threads)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        doc = yaml.safe_load(args.scenario.read_text())
        if args.readers is not None and isinstance(doc, dict):
            doc["rig"] = {**(doc.get("rig") or {}), "readers": args.readers}
        scen = sc.parse(doc)
        indices = list(range(len(scen.policies))) if args.policy is None else [args.policy]
        if any(not 0 <= i < len(scen.policies) for i in indices):
            raise sc.ScenarioError(f"--policy: the scenario has {len(scen.policies)} policies")
        for i in indices:
            check(scen, scen.policies[i])
            data_sets(doc)
            rig_params(doc)
    except (OSError, yaml.YAMLError) as e:
        print(f"schedrun: {args.scenario}: {e}", file=sys.stderr)
        return 2
    except sc.ScenarioError as e:
        print(f"schedrun: {e}", file=sys.stderr)
        return 2
    code = 0
    for i in indices:  # a broken policy run does not stop the next one
        try:
            failed = run_policy(doc, scen, i, args, out_path(args.out, i, len(indices) > 1))
        except Exception as e:
            log.exception("run of policy %d failed", i)
            print(f"schedrun: policy {i}: {type(e).__name__}: {e}", file=sys.stderr)
            code = 1
            continue
        if failed:
            print(f"schedrun: policy {i}: jobs failed: {', '.join(failed)}", file=sys.stderr)
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
