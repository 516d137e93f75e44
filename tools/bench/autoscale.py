"""End-to-end autoscaling workload: emulated training jobs against the controller, its local actuator and real workers.

One run (``python -m tools.bench.autoscale``) starts, on this machine:

- the emulated remote store: SeaweedFS behind the latency proxy with a bandwidth cap
  (``tools.bench.store``), holding a dataset of small files (``tools.bench.datasets``, the
  ``small`` set);
- ``fluidfs-controller``'s loop (:class:`fluidfs.control.controller.Controller`) in a thread,
  against :class:`fluidfs.control.local.LocalCluster`: each Dataset resource's StatefulSet runs
  ``fluidfs worker`` processes (peers file, metrics endpoint, SIGTERM handoff);

and then, one after another, *jobs*.  A job applies a Dataset resource (its own name, so its
cache starts cold), mounts the controller's Dataset document with ``fluidfs mount`` as a
*client* of the workers' cluster (memory tier only; it reads through the workers), registers
the mount's metrics endpoint as a client pod (what the controller scrapes on Kubernetes: the
node plugin's), runs an emulated trainer (``tools.bench.trainer``) on the mount, and records
every second: desired and ready workers, the trainer's input rate, the controller's decision.
After the trainer ends, an autoscaled job waits for the scale-in to ``minWorkers`` and compares
the blocks cached before with what the remaining members hold after (``blocks_kept``).

Jobs of a run: the compute-bound reference (the trainer on the local mirror of the dataset: the
input rate when data costs nothing), a sweep of fixed worker counts (policy ``manual``), the
I/O-bound job under ``training-speed``, the same job under ``capacity`` (Fluid's rule), and a
compute-bound job under ``training-speed``.  :mod:`tools.bench.autoscale_report` evaluates the
targets and writes the table, the JSON and the plot.

The pieces: :mod:`tools.bench.autoscale_scenario` (the sizes and the jobs),
:mod:`tools.bench.autoscale_rig` (:class:`~tools.bench.autoscale_rig.Rig`, which runs any policy
and trainer shape); this module runs them in order and is the command line.

Caveats: the mount is a client, not a member, so the workers are the whole cluster cache (a
node mount's SSD would also hold blocks under Kubernetes).  Everything shares this machine's
CPUs (2 here, shared): rates are noisy; compare rows of one run.  Scale-in is measured with the
mount still mounted and idle (the job ended, the node stays).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tools.bench import autoscale_report as report
from tools.bench.autoscale_rig import Rig
from tools.bench.autoscale_scenario import Scenario, jobs_of, tiny
from tools.bench.trainer import summarize


def run(sc: Scenario, workdir: Path, only: set[str] | None = None,
        progress: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """One whole run; returns everything :mod:`tools.bench.autoscale_report` needs."""
    t0 = time.time()
    out: dict[str, Any] = {"scenario": asdict(sc), "jobs": {}, "started": t0}
    with Rig(sc, workdir, progress) as rig:
        assert rig.store is not None
        out["shaping"] = rig.store.shaping
        out["dataset_bytes"] = rig.dataset_bytes
        progress(f"store up ({rig.store.shaping}); dataset {len(rig.files)} files, {rig.dataset_bytes >> 20} MiB")
        out["reference"] = {"io": rig.compute_bound_reference(sc.compute_s)}
        for job in jobs_of(sc):
            if only and job.name not in only and job.policy not in only:
                continue
            t = time.time()
            res = rig.run_job(job)
            s = summarize(res.reports)
            rates = ", ".join(f"{r / (1 << 20):.1f}" for r in s.epoch_rates())
            err = f" ERROR {res.error}" if res.error else ""
            progress(f"{job.name}: {time.time() - t:.0f}s, epochs MiB/s [{rates}]{err}")
            out["jobs"][job.name] = res.to_json()
    out["seconds"] = time.time() - t0
    return out


@contextlib.contextmanager
def workdir_of(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="fluidfs-autoscale-") as d:
        yield Path(d)


def scenario_with(sc: Scenario, overrides: dict[str, Any]) -> Scenario:
    return replace(sc, **overrides) if overrides else copy.copy(sc)


def dump(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=1, default=str))


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    fields = Scenario.__dataclass_fields__
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with FIELD one of {', '.join(fields)}; got {text!r}")
    default = getattr(Scenario(), key)
    try:
        if isinstance(default, tuple):
            return key, tuple(int(v) for v in value.split(",") if v)
        return key, type(default)(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: bad value {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.autoscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    p.add_argument("--json", default="docs/autoscaling/autoscale.json", help="write the results here ('' : don't)")
    p.add_argument("--plot", default="docs/autoscaling/autoscale.png", help="write the plot here ('' : don't)")
    p.add_argument("--tiny", action="store_true", help="a smoke-test scenario (seconds, not minutes)")
    p.add_argument("--only", action="append", default=[], help="run only these jobs or policies (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="FIELD=VALUE",
                   help="change a Scenario field (repeatable)")  # fmt: skip
    p.add_argument("--from-json", metavar="FILE", help="do not run: evaluate and plot a saved run (its --json)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s: %(message)s")

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through Rig.close(): workers, mounts, store stopped

    signal.signal(signal.SIGTERM, on_term)
    sc = scenario_with(tiny() if args.tiny else Scenario(), dict(args.overrides))
    if args.from_json:  # evaluate and draw a saved run again
        result = json.loads(Path(args.from_json).read_text())
    else:
        with workdir_of(args.workdir) as wd:
            result = run(sc, wd, set(args.only) or None, progress=lambda m: print(m, file=sys.stderr, flush=True))
    ev = report.evaluate(result)
    result["evaluation"] = ev
    print(report.table(result, ev))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        dump(result, Path(args.json))
    if args.plot:
        report.plot(result, ev, Path(args.plot))
    failed = [j for j in ev["jobs"].values() if j["error"]]
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
