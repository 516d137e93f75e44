"""The simulator's event loop: jobs arrive, are admitted, placed, read their data, compute, end.

Time advances from event to event (a heap): arrivals, the end of a chunk's compute, the end of a
local read, the next transfer to finish, a node leaving a dataset's membership. Admission and
placement call the controller's own code, not a copy:

- admission: ``fluidfs.control.sched.ordering.plan`` over the waiting jobs, with the free GPUs per
  node and the datasets' state (cached fraction from the nodes' caches, datasets being read);
- placement: ``random`` (uniform over the nodes with room) or ``affinity``: each node's
  ``cache.fluidfs.io`` labels from ``locations.desired_labels``, the pod's node affinity from
  ``placement.cache_affinity``, and kube-scheduler's scoring (NodeAffinity, weight 2, normalised
  to 0..100 over the feasible nodes, evaluated with ``placement.preferred_score``; plus
  LeastAllocated GPUs, weight 1; ties broken at random).

Data: a job reads its dataset (``chunks`` equal chunks) ``epochs`` times in order, fetching up
to ``prefetch`` chunks ahead of its compute; each chunk computes for ``compute_seconds / (epochs
x chunks)``. A chunk comes from the job's node if cached there; else from its owner among the
dataset's members (nodes running a job on it, or that did within ``grace`` seconds) over the
NICs; else from a member that holds it (ownership moved: the owner takes a copy); else from the
source through the owner, which keeps it (each chunk leaves the source once while it stays
cached; concurrent readers of a chunk in flight wait for it). Readers keep no copy of chunks
they do not own.

Caveats: a job is one pod; warm-up intents are not simulated; see ``cluster`` for the bandwidth
model.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fluidfs.control.sched import locations, ordering, placement

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
from tools.sim.cluster import Chunk, Flow, Flows, NodeCache, owner
from tools.sim.trace import GIB, Job, Trace

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

    @property
    def name(self) -> str:
        return f"{self.base.value}{'+cache' if self.cache_aware else ''}/{self.placement}"

    def ordering_config(self) -> ordering.OrderingConfig:
        return ordering.OrderingConfig(
            base=self.base, cache_aware=self.cache_aware, window=self.window, max_pass_over=self.max_pass_over
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
    node: str
    total: int
    chunk_bytes: float
    compute_each: float
    result: JobResult
    fetched: int = 0
    computed: int = 0
    computing: bool = False
    fetching: bool = False


@dataclass
class RunResult:
    policy: str
    jobs: list[JobResult]
    total_gpus: int
    meta: dict[str, Any] = field(default_factory=dict)


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
        self.rng = random.Random(seed)
        self.forced = dict(placements or {})
        self.nodes = cluster.node_names()
        unknown = sorted(set(self.forced.values()) - set(self.nodes))
        if unknown:
            raise ValueError(f"placements name unknown nodes: {', '.join(unknown)}")
        self.caches = {n: NodeCache(cluster.cache_bytes) for n in self.nodes}
        self.weights = {n: float(cluster.cache_bytes) for n in self.nodes}
        self.free = {n: cluster.gpus_per_node for n in self.nodes}
        self.total = dict(self.free)
        cap = {"source": cluster.source_bandwidth}
        for n in self.nodes:
            cap[f"out:{n}"] = cap[f"in:{n}"] = cluster.nic_bandwidth
        self.flows = Flows(cap)
        self.sizes = {d.name: d.size for d in trace.datasets}
        self.keys = {d.name: dataset_key(d.name) for d in trace.datasets}
        self.heap: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.flow_gen = 0
        self.pending: dict[str, Job] = {}
        self.passed: dict[str, int] = {}
        self.running: dict[str, _Run] = {}
        self.readers: dict[str, dict[str, int]] = {}  # dataset -> node -> running jobs
        self.grace: dict[str, dict[str, float]] = {}  # dataset -> node -> membership ends
        self.inflight: dict[Chunk, list[str]] = {}
        self.results: list[JobResult] = []
        self.plans = 0

    # ------------------------------------------------------------------ events

    def _push(self, t: float, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, data))

    def _rearm(self) -> None:
        self.flow_gen += 1
        t = self.flows.next_finish()
        if t is not None:
            self._push(t, "flows", self.flow_gen)

    def run(self) -> RunResult:
        for job in sorted(self.trace.jobs, key=lambda j: (j.submit, j.name)):
            self._push(job.submit, "arrive", job)
        while self.heap:
            t, _, kind, data = heapq.heappop(self.heap)
            if kind == "flows":
                if data != self.flow_gen:
                    continue
                for flow in self.flows.finish_due(t):
                    self._flow_done(flow, t)
                self._rearm()
            elif kind == "arrive":
                self.pending[data.name] = data
                self.passed[data.name] = 0
                self._schedule(t)
            elif kind == "compute":
                self._computed(self.running[data], t)
            elif kind == "local":
                self._fetched(self.running[data], t)
            elif kind == "expire":
                ds, node, until = data
                if self.grace.get(ds, {}).get(node) == until:
                    del self.grace[ds][node]
        if self.pending:
            raise RuntimeError(f"{len(self.pending)} jobs never started (larger than any node?)")
        meta = {"plans": self.plans, "cluster": self.cluster.__dict__, "policy": self.policy.name}
        return RunResult(self.policy.name, sorted(self.results, key=lambda r: r.name), sum(self.total.values()), meta)

    # ------------------------------------------------------------------ admission and placement

    def _dataset_state(self) -> ordering.DatasetState:
        held: dict[str, int] = {}
        for cache in self.caches.values():
            for ds, nbytes in cache.by_dataset.items():
                held[ds] = held.get(ds, 0) + nbytes
        fractions = {self.keys[ds]: min(1.0, n / self.sizes[ds]) for ds, n in held.items()}
        reading = frozenset(r.key for r in self.running.values())
        return ordering.DatasetState(fractions, reading)

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
        decision = ordering.plan(infos, self._dataset_state(), cap, self.policy.ordering_config())
        self.plans += 1
        self.passed.update(decision.passed_over)
        labels: dict[str, dict[str, str]] | None = None
        admitted = [self.pending.pop(name) for name in decision.admit]
        for i, job in enumerate(admitted):
            if self.policy.placement == "affinity" and labels is None:
                labels = self._labels()
            node = self._place(job, labels, admitted[i + 1 :])
            self._start(job, node, t)

    def _labels(self) -> dict[str, dict[str, str]]:
        return {
            n: locations.desired_labels({self.keys[ds]: b for ds, b in c.by_dataset.items()})
            for n, c in self.caches.items()
        }

    def _place(self, job: Job, labels: dict[str, dict[str, str]] | None, rest: list[Job]) -> str:
        """The node for ``job``: the best-scoring one on which the rest of this round's admitted
        jobs still fit (the queue admitted them together)."""
        if job.name in self.forced:
            return self.forced[job.name]
        feasible = [n for n in self.nodes if self.free[n] >= job.gpus]
        tiebreak = {n: self.rng.random() for n in feasible}
        if labels is None:
            scores = {n: 0.0 for n in feasible}
        else:
            locs = locations.CacheLocations.from_node_labels(labels)
            aff = placement.as_node_affinity(placement.cache_affinity([self.keys[job.dataset]], locs))
            raw = {n: placement.preferred_score(aff, labels[n], n) for n in feasible}
            top = max(raw.values())
            scores = {}
            for n in feasible:
                affinity = raw[n] * 100 / top if top > 0 else 0.0
                least = (self.free[n] - job.gpus) * 100 / self.total[n]
                scores[n] = 2 * affinity + least
        for n in sorted(feasible, key=lambda n: (-scores[n], tiebreak[n])):
            free = dict(self.free)
            free[n] -= job.gpus
            cap: ordering.Capacity | None = ordering.Capacity(free)
            for other in rest:
                cap = cap.place(ordering.JobInfo(other.name, other.submit, other.gpus)) if cap else None
            if cap is not None:
                return n
        raise RuntimeError(f"job {job.name}: no node leaves room for the rest of the round")

    def _start(self, job: Job, node: str, t: float) -> None:
        if self.free[node] < job.gpus:
            raise RuntimeError(f"job {job.name}: node {node} has {self.free[node]} free GPUs, needs {job.gpus}")
        self.free[node] -= job.gpus
        k = self.cluster.chunks
        result = JobResult(
            job.name, job.dataset, job.gpus, job.submit, t, node=node, passed_over=self.passed.pop(job.name)
        )
        total = max(1, job.epochs) * k
        run = _Run(
            job, self.keys[job.dataset], node, total, self.sizes[job.dataset] / k, job.compute_seconds / total, result
        )
        self.running[job.name] = run
        self.readers.setdefault(job.dataset, {})
        self.readers[job.dataset][node] = self.readers[job.dataset].get(node, 0) + 1
        self._try_fetch(run, t)

    # ------------------------------------------------------------------ reading

    def _members(self, ds: str) -> list[str]:
        readers = self.readers.get(ds, {})
        nodes = {n for n, c in readers.items() if c > 0} | set(self.grace.get(ds, {}))
        return sorted(nodes)

    def _try_fetch(self, run: _Run, t: float) -> None:
        if run.fetching or run.fetched >= run.total or run.fetched - run.computed >= self.cluster.prefetch:
            return
        run.fetching = True
        self._fetch(run, (run.job.dataset, run.fetched % self.cluster.chunks), t)

    def _fetch(self, run: _Run, chunk: Chunk, t: float) -> None:
        n, nbytes = run.node, run.chunk_bytes
        if self.caches[n].has(chunk):
            self.caches[n].touch(chunk)
            run.result.bytes_local += nbytes
            self._push(t + nbytes / self.cluster.local_bandwidth, "local", run.job.name)
            return
        members = self._members(chunk[0])
        own = owner(chunk, members, self.weights)
        if self.caches[own].has(chunk):
            self.caches[own].touch(chunk)
            self._transfer(t, [f"out:{own}", f"in:{n}"], nbytes, ("peer", run.job.name, chunk, own))
            return
        holder = next((m for m in members if m != own and self.caches[m].has(chunk)), None)
        if holder is not None:
            self._transfer(t, [f"out:{holder}", f"in:{n}"], nbytes, ("handoff", run.job.name, chunk, own))
            return
        if chunk in self.inflight:
            self.inflight[chunk].append(run.job.name)
            return
        self.inflight[chunk] = []
        path = ["source"] + ([f"out:{own}", f"in:{n}"] if own != n else [])
        self._transfer(t, path, nbytes, ("source", run.job.name, chunk, own))

    def _transfer(self, t: float, resources: list[str], nbytes: float, payload: Any) -> None:
        self.flows.start(t, resources, nbytes, payload)
        self._rearm()

    def _flow_done(self, flow: Flow, t: float) -> None:
        payload: tuple[str, str, Chunk, str] = flow.payload  # type: ignore[assignment]
        kind, name, chunk, own = payload
        run = self.running[name]
        nbytes = run.chunk_bytes
        if kind == "peer":
            run.result.bytes_peer += nbytes
        elif kind == "handoff":
            self.caches[own].insert(chunk, int(nbytes))
            run.result.bytes_peer += nbytes * (1 if own == run.node else 2)
        else:
            self.caches[own].insert(chunk, int(nbytes))
            run.result.bytes_source += nbytes
            if own != run.node:
                run.result.bytes_peer += nbytes
            for waiter in self.inflight.pop(chunk, []):
                self._fetch(self.running[waiter], chunk, t)
        self._fetched(run, t)

    def _fetched(self, run: _Run, t: float) -> None:
        run.fetching = False
        run.fetched += 1
        self._maybe_compute(run, t)
        self._try_fetch(run, t)

    def _maybe_compute(self, run: _Run, t: float) -> None:
        if not run.computing and run.fetched > run.computed:
            run.computing = True
            self._push(t + run.compute_each, "compute", run.job.name)

    def _computed(self, run: _Run, t: float) -> None:
        run.computing = False
        run.computed += 1
        if run.computed >= run.total:
            self._finish(run, t)
            return
        self._maybe_compute(run, t)
        self._try_fetch(run, t)

    def _finish(self, run: _Run, t: float) -> None:
        job, node = run.job, run.node
        del self.running[job.name]
        self.free[node] += job.gpus
        run.result.end = t
        self.results.append(run.result)
        readers = self.readers[job.dataset]
        readers[node] -= 1
        if readers[node] == 0:
            del readers[node]
            until = t + self.cluster.grace
            self.grace.setdefault(job.dataset, {})[node] = until
            self._push(until, "expire", (job.dataset, node, until))
        self._schedule(t)


def simulate(trace: Trace, cluster: ClusterConfig, policy: Policy, seed: int = 0, **kw: Any) -> RunResult:
    return Simulator(trace, cluster, policy, seed=seed, **kw).run()
