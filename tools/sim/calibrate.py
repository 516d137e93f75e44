"""Calibration: the simulator's predicted completion time of each job of a real run vs the measured one.

Input (JSON), written by whoever runs the real case (one machine, members on loopback, emulated
trainers reading through fluidfs mounts, the store behind a bandwidth-capped proxy)::

    {
      "cluster": {"nodes": ["m1", "m2", "m3"], "gpusPerNode": 1, "cacheBytes": 2147483648,
                  "sourceBandwidth": 50000000, "nicBandwidth": 1000000000,
                  "localBandwidth": 2000000000, "chunks": 16, "grace": 300},
      "policy": {"base": "fifo", "cacheAware": true, "placement": "affinity",
                 "window": 16, "maxPassOver": 8},
      "datasets": [{"name": "a", "bytes": 1073741824}],
      "jobs": [{"name": "j1", "dataset": "a", "gpus": 1, "epochs": 2, "computeSeconds": 20.0,
                "submitted": 0.0, "started": 0.4, "ended": 61.2, "node": "m1"}]
    }

Times are seconds from any common origin. ``computeSeconds`` is the job's compute-bound time
(its emulated compute per batch x batches); bandwidths are bytes/s as configured in the run
(the proxy's cap is ``sourceBandwidth``); ``cacheBytes`` is one member's cache quota. ``node``
(optional) is where the job ran: with ``replay`` (the default) the simulator places each job
there, so that the data model is what is compared, not the scheduler's choices.

Output: per job the measured and predicted JCT (``ended - submitted``) and the error
``(predicted - measured) / measured``, plus the mean and largest absolute error.

Caveats: the model has no per-request latency and no page cache; a run whose jobs are limited
by something else (CPU of the emulated trainers, FUSE overhead) will show it as error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluidfs.control.sched.ordering import BasePolicy
from tools.sim.engine import PLACEMENTS, ClusterConfig, Policy, simulate
from tools.sim.trace import Dataset, Job, Trace


class CalibrationError(ValueError):
    """The calibration file is malformed."""


@dataclass(frozen=True)
class Measured:
    name: str
    measured: float
    predicted: float

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured if self.measured > 0 else 0.0


def _get(obj: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise CalibrationError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CalibrationError(f"{where}.{key}: wrong type {type(value).__name__}")
    return value


def parse(data: Any) -> tuple[Trace, ClusterConfig, Policy, dict[str, str], dict[str, float]]:
    """(trace, cluster, policy, placements, measured JCT per job) from a calibration document."""
    if not isinstance(data, dict):
        raise CalibrationError("calibration file: must be a JSON object")
    num = (int, float)
    c = _get(data, "cluster", "calibration", dict)
    nodes = _get(c, "nodes", "cluster", list)
    if not nodes or not all(isinstance(n, str) and n for n in nodes) or len(set(nodes)) != len(nodes):
        raise CalibrationError("cluster.nodes: must be a non-empty list of distinct names")
    cluster = ClusterConfig(
        nodes=len(nodes),
        names=tuple(nodes),
        gpus_per_node=int(_get(c, "gpusPerNode", "cluster", int)),
        cache_bytes=int(_get(c, "cacheBytes", "cluster", num)),
        source_bandwidth=float(_get(c, "sourceBandwidth", "cluster", num)),
        nic_bandwidth=float(c.get("nicBandwidth", 1e9)),
        local_bandwidth=float(c.get("localBandwidth", 2e9)),
        chunks=int(c.get("chunks", 16)),
        grace=float(c.get("grace", 300.0)),
    )
    p = _get(data, "policy", "calibration", dict)
    try:
        base = BasePolicy(p.get("base", "fifo"))
    except ValueError:
        raise CalibrationError(f"policy.base: {p.get('base')!r} is not fifo or sjf") from None
    placement = str(p.get("placement", "affinity"))
    if placement not in PLACEMENTS:
        raise CalibrationError(f"policy.placement: {placement!r} is not random or affinity")
    bound = p.get("maxPassOver", 8)
    policy = Policy(base, bool(p.get("cacheAware", True)), placement, int(p.get("window", 16)), bound)
    datasets = []
    for i, d in enumerate(_get(data, "datasets", "calibration", list)):
        where = f"datasets[{i}]"
        datasets.append(Dataset(_get(d, "name", where, str), int(_get(d, "bytes", where, num))))
    names = {d.name for d in datasets}
    jobs, placements, measured = [], {}, {}
    for i, j in enumerate(_get(data, "jobs", "calibration", list)):
        where = f"jobs[{i}]"
        name = _get(j, "name", where, str)
        ds = _get(j, "dataset", where, str)
        if ds not in names:
            raise CalibrationError(f"{where}.dataset: {ds!r} is not in datasets")
        submitted = float(_get(j, "submitted", where, num))
        ended = float(_get(j, "ended", where, num))
        if ended <= submitted:
            raise CalibrationError(f"{where}: ended ({ended}) must be after submitted ({submitted})")
        gpus = int(j.get("gpus", 1))
        if gpus > cluster.gpus_per_node:
            raise CalibrationError(f"{where}.gpus: {gpus} is more than a node has ({cluster.gpus_per_node})")
        jobs.append(
            Job(name, submitted, gpus, ds, float(_get(j, "computeSeconds", where, num)), int(j.get("epochs", 1)))
        )
        measured[name] = ended - submitted
        node = j.get("node")
        if node is not None:
            if node not in nodes:
                raise CalibrationError(f"{where}.node: {node!r} is not in cluster.nodes")
            placements[name] = node
    if len(measured) != len(jobs):
        raise CalibrationError("jobs: names must be distinct")
    return Trace(tuple(datasets), tuple(jobs)), cluster, policy, placements, measured


def calibrate(path: Path, replay: bool = True) -> list[Measured]:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise CalibrationError(f"{path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path}: not JSON: {e}") from None
    trace, cluster, policy, placements, measured = parse(data)
    result = simulate(trace, cluster, policy, placements=placements if replay else None)
    return [Measured(r.name, measured[r.name], r.jct) for r in result.jobs]


def table(rows: list[Measured]) -> str:
    lines = ["| job | measured JCT (s) | predicted JCT (s) | error |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {m.name} | {m.measured:.1f} | {m.predicted:.1f} | {m.error * 100:+.1f} % |" for m in rows]
    if rows:
        errs = [abs(m.error) for m in rows]
        lines.append("")
        lines.append(f"mean |error| {sum(errs) / len(errs) * 100:.1f} %, largest {max(errs) * 100:.1f} %")
    return "\n".join(lines)
