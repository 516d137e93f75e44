"""Scenario files: a small JSON or YAML document describing a cluster, datasets, jobs and policies.

The same file drives the simulator (``python -m tools.sim scenario FILE``) and a real run
(whoever runs the emulated trainers reads the jobs from it), so both see the same jobs; with
the measured times filled in, it is also the calibration input (``--calibrate FILE``). Format
(sizes take units, ``2Gi``, ``50M``; bandwidths are bytes/s; times are seconds)::

    cluster:
      members: [m1, m2, m3]      # names, or a count (n00, n01, ...)
      gpusPerMember: 1
      cacheBytes: 2Gi            # one member's cache quota
      sourceBandwidth: 50M       # all sources together (the proxy's cap), bytes/s
      nicBandwidth: 1G           # optional: per member, each way (default 3G)
      localBandwidth: 2G         # optional: a member reading its own cache (default 4G)
      chunks: 16                 # optional: chunks per dataset (default 32)
      prefetch: 2                # optional: chunks a reader fetches ahead (default 2)
      grace: 300                 # optional: seconds a member stays one after its last reader
      sharedCache: true          # optional: false = each node's cache serves only its own jobs
      peerCopy: false            # optional: true = a node keeps what it read from a peer
    policies:                    # optional (default: FIFO and SJF, each without and with cache)
      - {base: sjf, cacheAware: true, placement: affinity, window: 16, maxPassOver: 8,
         sourceAware: true, gpuRate: 200M, stagger: false, preferLocal: false}
    datasets:
      - {name: a, bytes: 1Gi, samples: 10000}
    jobs:
      - name: j1
        arrival: 0               # seconds (alias: submitted)
        dataset: a
        gpus: 1
        samples: 20000           # samples read (here two passes); or epochs: 2
        computePerSample: 0.002  # seconds of compute per sample on one GPU; or computeSeconds
        # measured, for calibration (optional): started, ended, node

A job's GPUs share its samples (data parallel): its compute-bound duration is ``samples x
computePerSample / gpus``; it reads ``samples / dataset samples`` passes over its dataset.
``policy`` (one mapping) is accepted for ``policies``.

Errors: ``ScenarioError`` (a ``ValueError``) with a one-line message naming the field.

Caveats: a job is one pod (``gpus`` at most a member's); every dataset is read in order in
equal chunks (see ``engine``); without ``samples`` on the dataset, jobs give ``epochs``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fluidfs.control.sched.ordering import BasePolicy, SourceModel
from fluidfs.util.sizes import parse_size
from tools.sim.engine import PLACEMENTS, ClusterConfig, Policy
from tools.sim.trace import Dataset, Job, Trace

__all__ = ["Scenario", "ScenarioError", "default_policies", "load", "parse"]


class ScenarioError(ValueError):
    """The scenario file is malformed."""


@dataclass(frozen=True)
class Scenario:
    trace: Trace
    cluster: ClusterConfig
    policies: tuple[Policy, ...]
    placements: Mapping[str, str] = field(default_factory=dict)  # job -> member it ran on
    measured: Mapping[str, float] = field(default_factory=dict)  # job -> measured JCT (s)


def default_policies(placement: str = "affinity") -> tuple[Policy, ...]:
    return tuple(Policy(b, aware, placement) for b in (BasePolicy.FIFO, BasePolicy.SJF) for aware in (False, True))


def _get(obj: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key not in obj or obj[key] is None:
        if default is ...:
            raise ScenarioError(f"{where}: missing {key!r}")
        return default
    return obj[key]


def _map(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ScenarioError(f"{where}: must be a mapping, not {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ScenarioError(f"{where}: must be a list, not {type(value).__name__}")
    return value


def _number(value: Any, where: str, *, positive: bool = False, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScenarioError(f"{where}: must be a number, not {value!r}")
    if value < minimum or (positive and value <= 0):
        raise ScenarioError(f"{where}: must be {'positive' if positive else f'at least {minimum:g}'}, not {value!r}")
    return float(value)


def _integer(value: Any, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ScenarioError(f"{where}: must be an integer >= {minimum}, not {value!r}")
    return value


def _size(value: Any, where: str, *, positive: bool = True) -> float:
    """Bytes (or bytes/s): a number, or a string with a unit (``2Gi``, ``50M``)."""
    if isinstance(value, str):
        try:
            got = float(parse_size(value.removesuffix("/s")))
        except ValueError as e:
            raise ScenarioError(f"{where}: {e}") from None
    else:
        got = _number(value, where)
    if positive and got <= 0:
        raise ScenarioError(f"{where}: must be positive, not {value!r}")
    return got


def _cluster(c: Mapping[str, Any]) -> ClusterConfig:
    members = _get(c, "members", "cluster", None)
    if members is None:
        members = _get(c, "nodes", "cluster")  # the older calibration spelling
    if isinstance(members, list):
        if not members or not all(isinstance(n, str) and n for n in members) or len(set(members)) != len(members):
            raise ScenarioError("cluster.members: must be a non-empty list of distinct names, or a count")
        names: tuple[str, ...] = tuple(members)
    else:
        names = ()
    count = len(names) if names else _integer(members, "cluster.members")
    d = ClusterConfig()
    gpus = _get(c, "gpusPerMember", "cluster", None)
    if gpus is None:
        gpus = _get(c, "gpusPerNode", "cluster", 1)
    return ClusterConfig(
        nodes=count,
        names=names,
        gpus_per_node=_integer(gpus, "cluster.gpusPerMember"),
        cache_bytes=int(_size(_get(c, "cacheBytes", "cluster"), "cluster.cacheBytes")),
        source_bandwidth=_size(_get(c, "sourceBandwidth", "cluster"), "cluster.sourceBandwidth"),
        nic_bandwidth=_size(_get(c, "nicBandwidth", "cluster", d.nic_bandwidth), "cluster.nicBandwidth"),
        local_bandwidth=_size(_get(c, "localBandwidth", "cluster", d.local_bandwidth), "cluster.localBandwidth"),
        chunks=_integer(_get(c, "chunks", "cluster", d.chunks), "cluster.chunks"),
        prefetch=_integer(_get(c, "prefetch", "cluster", d.prefetch), "cluster.prefetch"),
        grace=_number(_get(c, "grace", "cluster", d.grace), "cluster.grace"),
        shared=_flag(_get(c, "sharedCache", "cluster", True), "cluster.sharedCache"),
        peer_copy=_flag(_get(c, "peerCopy", "cluster", False), "cluster.peerCopy"),
    )


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}: must be true or false, not {value!r}")
    return value


def _policy(p: Mapping[str, Any], where: str, cluster: ClusterConfig, gpu_rate: float) -> Policy:
    try:
        base = BasePolicy(_get(p, "base", where, "fifo"))
    except ValueError:
        raise ScenarioError(f"{where}.base: {p.get('base')!r} is not fifo or sjf") from None
    placement = _get(p, "placement", where, "affinity")
    if placement not in PLACEMENTS:
        raise ScenarioError(f"{where}.placement: {placement!r} is not random or affinity")
    bound = _get(p, "maxPassOver", where, 8)
    if bound is not None and bound != "none":
        bound = _integer(bound, f"{where}.maxPassOver", 0)
    else:
        bound = None
    aware = _get(p, "cacheAware", where, True)
    source_aware = _get(p, "sourceAware", where, False)
    stagger = _get(p, "stagger", where, False)
    local = _get(p, "preferLocal", where, False)
    for key, value in (
        ("cacheAware", aware),
        ("sourceAware", source_aware),
        ("stagger", stagger),
        ("preferLocal", local),
    ):
        _flag(value, f"{where}.{key}")
    source = None
    if source_aware:
        rate = _get(p, "gpuRate", where, None)
        rate = gpu_rate if rate is None else _size(rate, f"{where}.gpuRate")
        source = SourceModel(cluster.source_bandwidth, rate)
    return Policy(
        base,
        aware,
        placement,
        window=_integer(_get(p, "window", where, 16), f"{where}.window"),
        max_pass_over=bound,
        source=source,
        stagger=stagger,
        warm_ahead=_integer(_get(p, "warmAhead", where, 0), f"{where}.warmAhead", 0),
        local=local,
        label=("+src" if source_aware else "") + ("+local" if local else ""),
    )


def mean_gpu_rate(trace: Trace) -> float:
    """Bytes per second per GPU the trace's jobs read when their data is local (compute-bound),
    weighted by GPU-seconds; what a source-aware policy assumes when the scenario gives none."""
    sizes = {d.name: d.size for d in trace.datasets}
    nbytes = sum(j.epochs * sizes[j.dataset] for j in trace.jobs)
    gpu_seconds = sum(j.compute_seconds * j.gpus for j in trace.jobs)
    return nbytes / gpu_seconds if gpu_seconds > 0 and nbytes > 0 else 1.0


def parse(data: Any) -> Scenario:
    """A ``Scenario`` from a parsed JSON/YAML document (see the module docstring)."""
    doc = _map(data, "scenario")
    cluster = _cluster(_map(_get(doc, "cluster", "scenario"), "cluster"))
    member_names = cluster.node_names()
    datasets: list[Dataset] = []
    samples: dict[str, float] = {}
    for i, d in enumerate(_list(_get(doc, "datasets", "scenario"), "datasets")):
        where = f"datasets[{i}]"
        d = _map(d, where)
        name = _get(d, "name", where)
        if not isinstance(name, str) or not name:
            raise ScenarioError(f"{where}.name: must be a non-empty string")
        if name in samples or any(x.name == name for x in datasets):
            raise ScenarioError(f"{where}.name: {name!r} appears twice")
        datasets.append(Dataset(name, int(_size(_get(d, "bytes", where), f"{where}.bytes"))))
        if "samples" in d:
            samples[name] = _number(d["samples"], f"{where}.samples", positive=True)
    sizes = {x.name: x for x in datasets}
    jobs: list[Job] = []
    placements: dict[str, str] = {}
    measured: dict[str, float] = {}
    for i, j in enumerate(_list(_get(doc, "jobs", "scenario"), "jobs")):
        where = f"jobs[{i}]"
        j = _map(j, where)
        name = _get(j, "name", where)
        if not isinstance(name, str) or not name:
            raise ScenarioError(f"{where}.name: must be a non-empty string")
        if any(x.name == name for x in jobs):
            raise ScenarioError(f"{where}.name: {name!r} appears twice")
        ds = _get(j, "dataset", where)
        if ds not in sizes:
            raise ScenarioError(f"{where}.dataset: {ds!r} is not in datasets")
        arrival = _get(j, "arrival", where, None)
        if arrival is None:
            arrival = _get(j, "submitted", where, None)
        if arrival is None:
            raise ScenarioError(f"{where}: missing 'arrival'")
        arrival = _number(arrival, f"{where}.arrival")
        gpus = _integer(_get(j, "gpus", where, 1), f"{where}.gpus")
        if gpus > cluster.gpus_per_node:
            raise ScenarioError(f"{where}.gpus: {gpus} is more than a member has ({cluster.gpus_per_node})")
        if "samples" in j:
            if ds not in samples:
                raise ScenarioError(f"{where}.samples: dataset {ds!r} gives no samples (use epochs)")
            n = _number(j["samples"], f"{where}.samples", positive=True)
            epochs = n / samples[ds]
        else:
            n = 0.0
            epochs = _number(_get(j, "epochs", where, 1), f"{where}.epochs", positive=True)
        if "computePerSample" in j:
            if not n:
                raise ScenarioError(f"{where}.computePerSample: needs samples")
            compute = n * _number(j["computePerSample"], f"{where}.computePerSample") / gpus
        else:
            compute = _number(_get(j, "computeSeconds", where), f"{where}.computeSeconds")
        jobs.append(Job(name, arrival, gpus, ds, compute, epochs))
        if "ended" in j:
            ended = _number(j["ended"], f"{where}.ended")
            if ended <= arrival:
                raise ScenarioError(f"{where}: ended ({ended:g}) must be after arrival ({arrival:g})")
            measured[name] = ended - arrival
        node = j.get("node")
        if node is not None:
            if node not in member_names:
                raise ScenarioError(f"{where}.node: {node!r} is not in cluster.members")
            placements[name] = node
    if not jobs:
        raise ScenarioError("jobs: must not be empty")
    trace = Trace(tuple(datasets), tuple(jobs), {"scenario": True})
    rate = mean_gpu_rate(trace)
    raw = doc.get("policies")
    if raw is None and "policy" in doc:
        raw = [doc["policy"]]
    if raw is None:
        policies = default_policies()
    else:
        policies = tuple(
            _policy(_map(p, f"policies[{i}]"), f"policies[{i}]", cluster, rate)
            for i, p in enumerate(_list(raw, "policies"))
        )
        if not policies:
            raise ScenarioError("policies: must not be empty")
    return Scenario(trace, cluster, policies, placements, measured)


def load(path: Path) -> Scenario:
    """Read a scenario from a JSON or YAML file (YAML is a superset of JSON)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(f"{path}: {e.strerror or e}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ScenarioError(f"{path}: not {kind}: {str(e).splitlines()[0]}") from None
    return parse(data)
