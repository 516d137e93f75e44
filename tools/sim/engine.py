"""The simulator's event loop: jobs arrive, are admitted, placed, read their data, compute, end.

Time advances from event to event (a heap): arrivals, the end of a compute, the end of a local
read, the next transfer to finish, a node leaving a dataset's membership. Admission and placement
call the controller's own code, not a copy:

- admission: ``fluidfs.control.sched.ordering.plan`` over the waiting jobs, with the free GPUs per
  node and the datasets' state (cached fraction, sizes, GPUs reading each, datasets warming); its
  warm intents start warm-ups (``datapath``);
- placement: ``random`` (uniform over the nodes with room) or ``affinity``: each node's
  ``cache.fluidfs.io`` labels from ``locations.desired_labels``, the pod's node affinity from
  ``placement.cache_affinity``, and kube-scheduler's scoring (NodeAffinity, weight 2, normalised
  to 0..100 over the feasible nodes, evaluated with ``placement.preferred_score``; plus
  LeastAllocated GPUs, weight 1; ties broken at random; ``scoring.choose_node``).

A job reads its dataset (``chunks`` equal chunks) ``epochs`` times (a pass may be partial) in
order, fetching up to ``prefetch`` chunks ahead of its compute; each chunk computes for
``compute_seconds / chunks read``, so with its data local the job runs for ``compute_seconds``.
Where a chunk comes from is the data path's business (``datapath``). While a job computes, a run
of chunks held on its own node is read at once and computed back to back (local reads outpace
compute; exact when ``prefetch`` >= 2, and far fewer events).

With ``placements`` (a replay of a real run) each job goes to the node it ran on; admitted
while that node is still busy here, it waits in the queue for it.

Caveats: a job is one pod; the run of local chunks is taken from the cache as it is when the run
starts (an eviction during it is not seen); see ``datapath`` and ``cluster`` for the data model.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fluidfs.control.sched import locations, ordering, placement
from tools.sim.datapath import DataPath, Reader, Traffic
from tools.sim.scoring import choose_node
from tools.sim.trace import GIB, Job, Trace

__all__ = [
    "ClusterConfig",
    "Policy",
    "RunResult",
    "JobResult",
    "Simulator",
    "simulate",
    "locations",
    "ordering",
    "placement",
]

PLACEMENTS = ("random", "affinity")


@dataclass(frozen=True)
class ClusterConfig:
    nodes: int = 16
    gpus_per_node: int = 8
    cache_bytes: int = 400 * GIB
    source_bandwidth: float = 2.0e9
    nic_bandwidth: float = 3.0e9
    local_bandwidth: float = 4.0e9
    chunks: int = 32
    prefetch: int = 2
    grace: float = 300.0
    names: tuple[str, ...] = ()
    shared: bool = True  # False: each node's cache serves only its own readers (no cluster cache)
    peer_copy: bool = False  # True: a reader's node keeps a copy of each chunk it got from a peer

    def node_names(self) -> list[str]:
        """The nodes' names: ``names`` if given (then ``nodes`` must match), else n00, n01, ..."""
        if self.names:
            return list(self.names)
        return [f"n{i:02d}" for i in range(self.nodes)]


@dataclass(frozen=True)
class Policy:
    base: ordering.BasePolicy = ordering.BasePolicy.FIFO
    cache_aware: bool = False
    placement: str = "random"
    window: int = 16
    max_pass_over: int | None = 8
    source: ordering.SourceModel | None = None
    warm_ahead: int = 0
    stagger: bool = False
    local: bool = False
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.base.value}{'+cache' if self.cache_aware else ''}{self.label}/{self.placement}"

    def ordering_config(self) -> ordering.OrderingConfig:
        return ordering.OrderingConfig(
            base=self.base,
            cache_aware=self.cache_aware,
            window=self.window,
            max_pass_over=self.max_pass_over,
            source=self.source,
            warm_ahead=self.warm_ahead,
            stagger=self.stagger,
            local=self.local,
        )


@dataclass
class JobResult:
    name: str
    dataset: str
    gpus: int
    submit: float
    start: float = 0.0
    end: float = 0.0
    node: str = ""
    passed_over: int = 0
    compute: float = 0.0
    bytes_source: float = 0.0
    bytes_peer: float = 0.0
    bytes_local: float = 0.0

    @property
    def jct(self) -> float:
        return self.end - self.submit


@dataclass
class _Run:
    job: Job
    key: str
    reader: Reader
    total: int
    compute_each: float
    result: JobResult
    fetched: int = 0
    computed: int = 0
    computing: bool = False
    fetching: bool = False
    streams: bool = False  # local reads outpace compute: runs of local chunks are read at once
    batch: int = 1  # chunks in the compute event in progress


@dataclass
class RunResult:
    policy: str
    jobs: list[JobResult]
    total_gpus: int
    meta: dict[str, Any] = field(default_factory=dict)
    warm: Traffic = field(default_factory=Traffic)  # moved by warm-ups, not by a job


def dataset_key(name: str) -> str:
    """The dataset key a simulated dataset gets (as if its URL were ``sim://<name>``)."""
    return locations.dataset_key_for_url(f"sim://{name}")


class Simulator:
    def __init__(
        self,
        trace: Trace,
        cluster: ClusterConfig,
        policy: Policy,
        *,
        seed: int = 0,
        placements: Mapping[str, str] | None = None,
    ) -> None:
        if policy.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, not {policy.placement!r}")
        self.trace, self.cluster, self.policy = trace, cluster, policy
        self.config = policy.ordering_config()
        self.rng = random.Random(seed)
        self.forced = dict(placements or {})
        self.nodes = cluster.node_names()
        unknown = sorted(set(self.forced.values()) - set(self.nodes))
        if unknown:
            raise ValueError(f"placements name unknown nodes: {', '.join(unknown)}")
        self.free = {n: cluster.gpus_per_node for n in self.nodes}
        self.total = dict(self.free)
        bandwidth = {"source": cluster.source_bandwidth}
        for n in self.nodes:
            bandwidth[f"out:{n}"] = bandwidth[f"in:{n}"] = cluster.nic_bandwidth
        self.sizes = {d.name: d.size for d in trace.datasets}
        self.keys = {d.name: dataset_key(d.name) for d in trace.datasets}
        self.names = {key: name for name, key in self.keys.items()}
        self.key_sizes = {self.keys[name]: size for name, size in self.sizes.items()}
        self.data = DataPath(
            self.nodes,
            cluster.cache_bytes,
            bandwidth,
            cluster.local_bandwidth,
            self.sizes,
            cluster.chunks,
            cluster.prefetch,
            cluster.grace,
            self._push,
            self._arrived,
            cluster.shared,
            cluster.peer_copy,
        )
        self.heap: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.pending: dict[str, Job] = {}
        self.passed: dict[str, int] = {}
        self.running: dict[str, _Run] = {}
        self.results: list[JobResult] = []
        self.plans = 0

    # ------------------------------------------------------------------ events

    def _push(self, t: float, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, data))

    def run(self) -> RunResult:
        for job in sorted(self.trace.jobs, key=lambda j: (j.submit, j.name)):
            self._push(job.submit, "arrive", job)
        while self.heap:
            t, _, kind, data = heapq.heappop(self.heap)
            if kind == "flows":
                self.data.on_flows(data, t)
            elif kind == "compute":
                self._computed(self.running[data], t)
            elif kind == "local":
                self._arrived(data, t)
            elif kind == "arrive":
                self.pending[data.name] = data
                self.passed[data.name] = 0
                self._schedule(t)
            elif kind == "expire":
                self.data.on_expire(data)
        if self.pending:
            raise RuntimeError(f"{len(self.pending)} jobs never started (larger than any node?)")
        meta = {"plans": self.plans, "cluster": self.cluster.__dict__, "policy": self.policy.name}
        jobs = sorted(self.results, key=lambda r: r.name)
        return RunResult(self.policy.name, jobs, sum(self.total.values()), meta, self.data.warm_traffic)

    # ------------------------------------------------------------------ admission and placement

    def _dataset_state(self) -> ordering.DatasetState:
        fractions = {self.keys[ds]: min(1.0, n / self.sizes[ds]) for ds, n in self.data.held().items()}
        readers: dict[str, int] = {}
        for r in self.running.values():
            readers[r.key] = readers.get(r.key, 0) + r.job.gpus
        warming = frozenset(self.keys[ds] for ds in self.data.warms)
        free = float(sum(c.capacity - c.used for c in self.data.caches.values()))
        on_nodes: dict[str, dict[str, float]] = {}
        for n, c in self.data.caches.items():
            for ds, b in c.by_dataset.items():
                on_nodes.setdefault(self.keys[ds], {})[n] = float(b)
        return ordering.DatasetState(fractions, frozenset(readers), warming, self.key_sizes, readers, free, on_nodes)

    def _schedule(self, t: float) -> None:
        if not self.pending:
            return
        infos = [
            ordering.JobInfo(
                j.name, j.submit, j.gpus, 1, j.compute_seconds, (self.keys[j.dataset],), self.passed[j.name]
            )
            for j in self.pending.values()
        ]
        cap = ordering.Capacity(dict(self.free), None, self.total)
        decision = ordering.plan(infos, self._dataset_state(), cap, self.config)
        self.plans += 1
        self.passed.update(decision.passed_over)
        for intent in decision.warm:
            self.data.warm(self.names[intent.dataset], self.pending[intent.job].gpus, self.free, t)
        labels: dict[str, dict[str, str]] | None = None
        admitted = [self.pending.pop(name) for name in decision.admit]
        for i, job in enumerate(admitted):
            forced = self.forced.get(job.name)
            if forced is not None and self.free[forced] < job.gpus:
                self.pending[job.name] = job  # a replayed job waits for the node it ran on
                continue
            if self.policy.placement == "affinity" and labels is None:
                labels = self._labels()
            node = self._place(job, labels, admitted[i + 1 :])
            self._start(job, node, t)

    def _labels(self) -> dict[str, dict[str, str]]:
        return {
            n: locations.desired_labels({self.keys[ds]: b for ds, b in c.by_dataset.items()})
            for n, c in self.data.caches.items()
        }

    def _place(self, job: Job, labels: dict[str, dict[str, str]] | None, rest: list[Job]) -> str:
        """The node for ``job`` (``scoring.choose_node``), unless the run forces one."""
        if job.name in self.forced:
            return self.forced[job.name]
        others = [ordering.JobInfo(o.name, o.submit, o.gpus) for o in rest]
        return choose_node(job.name, job.gpus, self.keys[job.dataset], self.free, self.total, labels, others, self.rng)

    def _start(self, job: Job, node: str, t: float) -> None:
        if self.free[node] < job.gpus:
            raise RuntimeError(f"job {job.name}: node {node} has {self.free[node]} free GPUs, needs {job.gpus}")
        self.free[node] -= job.gpus
        k = self.cluster.chunks
        result = JobResult(
            job.name,
            job.dataset,
            job.gpus,
            job.submit,
            t,
            node=node,
            passed_over=self.passed.pop(job.name),
            compute=job.compute_seconds,
        )
        total = max(1, round(job.epochs * k))
        reader = Reader(job.name, job.dataset, node, self.sizes[job.dataset] / k, Traffic())
        run = _Run(job, self.keys[job.dataset], reader, total, job.compute_seconds / total, result)
        run.streams = (
            self.cluster.prefetch >= 2 and reader.chunk_bytes / self.cluster.local_bandwidth <= run.compute_each
        )
        self.running[job.name] = run
        self.data.join(reader)
        self._try_fetch(run, t)

    # ------------------------------------------------------------------ reading and computing

    def _try_fetch(self, run: _Run, t: float) -> None:
        prefetch = self.cluster.prefetch
        if run.fetching or run.fetched >= run.total or run.fetched - run.computed >= prefetch:
            return
        if run.computing and run.streams:
            run.fetched = self.data.read_local_run(
                run.reader, run.fetched, min(run.total, run.fetched + self.cluster.chunks)
            )
            if run.fetched >= run.total or run.fetched - run.computed >= prefetch:
                return
        run.fetching = True
        self.data.fetch(run.reader, (run.job.dataset, run.fetched % self.cluster.chunks), t)

    def _arrived(self, name: str, t: float) -> None:
        run = self.running[name]
        run.fetching = False
        run.fetched += 1
        self._maybe_compute(run, t)
        self._try_fetch(run, t)

    def _maybe_compute(self, run: _Run, t: float) -> None:
        if not run.computing and run.fetched > run.computed:
            run.computing = True
            # the chunks read ahead beyond the prefetch window compute back to back
            run.batch = max(1, run.fetched - run.computed - self.cluster.prefetch + 1)
            self._push(t + run.batch * run.compute_each, "compute", run.job.name)

    def _computed(self, run: _Run, t: float) -> None:
        run.computing = False
        run.computed += run.batch
        if run.computed >= run.total:
            self._finish(run, t)
            return
        self._maybe_compute(run, t)
        self._try_fetch(run, t)

    def _finish(self, run: _Run, t: float) -> None:
        job = run.job
        del self.running[job.name]
        self.free[run.reader.node] += job.gpus
        traffic = self.data.leave(job.name, t).traffic
        result = run.result
        result.end = t
        result.bytes_source, result.bytes_peer, result.bytes_local = traffic.source, traffic.peer, traffic.local
        self.results.append(result)
        self._schedule(t)


def simulate(trace: Trace, cluster: ClusterConfig, policy: Policy, seed: int = 0, **kw: Any) -> RunResult:
    return Simulator(trace, cluster, policy, seed=seed, **kw).run()
