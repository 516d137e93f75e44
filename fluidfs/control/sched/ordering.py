"""Job admission order: a base policy (FIFO or SJF), cache-aware within a window, starvation-free.

``plan`` decides which waiting jobs to start now, given the free capacity and where the cache
is. It is pure: the Job queue (``queue``) feeds it from Kubernetes objects, the simulator
(``tools/sim``) from its model.

1. **Base order**: FIFO (submission time) or SJF (expected duration, then submission time).
2. **Look-ahead window**: only the first ``window`` jobs of the base order are candidates.
3. **Cache-aware**: within the window, *warm* jobs go first — jobs whose datasets are read by a
   running job (or one admitted in this round, so jobs of one dataset start together) or at
   least ``warm_threshold`` cached — each group in base order. Cache-oblivious keeps base order.

   **Source-aware** (``source``: the sources' bandwidth and a GPU's read rate; needs the
   datasets' ``sizes``): the window is sorted on each job's *effective* key instead — SJF: its
   expected duration plus the time its cold bytes add at the share of the sources it would get
   now (shortest effective job first); FIFO: its submission time pushed back by that same
   time. A job's cold bytes are its datasets' uncached bytes (none for a dataset being read),
   at most what it reads in its expected time. With ``cache_free`` known, a cold job that
   overflows the cluster cache also pays for the refetch of the bytes it would evict that other
   jobs in the window want. With ``stagger``, while cold readers saturate the sources no other
   cold job starts (its GPUs stay free for warm jobs; the barrier job is exempt).

   **Near the cache** (``local``; needs ``on_nodes``, the bytes each node holds of each
   dataset): within each of those groups (warm/cold; for source-aware, before the key), jobs
   that fit now on a node holding their data (``fits_near_cache``) go first, so that the GPUs
   freed on a node go to a job whose cache is there and the webhook's affinity can place it.
4. **Capacity**: a candidate starts if its pods fit: every pod on one node with enough free GPUs
   (best fit), and/or a slot count. Candidates that do not fit are skipped (backfill).
5. **Pass-over bound**: a job is *passed over* each time a job submitted after it starts while
   it waits. A job passed over ``max_pass_over`` times becomes a barrier: no job submitted after
   it starts until it has (it is tried first, and capacity frees up as running jobs end). So no
   job is ever passed over more than the bound, whatever the base policy (SJF included).
6. **Warm-up** (``warm_ahead`` > 0): for the next candidate that could not start, its cold
   datasets are returned as warm intents (the controller runs ``fluidfs load`` / a worker
   warm-up), at most ``warm_ahead`` datasets warming at once.

Caveats: a job's warmth is the mean over its datasets, weighted equally; the source-aware
estimate assumes every GPU reads at one rate and equal shares of the sources, and spreads
evictions over idle datasets by size (the caches' LRU order is not known here);
a job that can never fit (pods larger than any node) is reported as unschedulable and takes no
part in ordering or pass-over counting. Fit is checked per pod against free GPUs per node; other
resources, taints and affinity are the scheduler's (a started job may still wait for a node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


class BasePolicy(str, Enum):
    FIFO = "fifo"
    SJF = "sjf"


@dataclass(frozen=True)
class JobInfo:
    """A job as the ordering sees it."""

    name: str
    submitted: float
    gpus_per_pod: int = 0
    pods: int = 1
    expected_seconds: float | None = None
    datasets: tuple[str, ...] = ()
    passed_over: int = 0


@dataclass(frozen=True)
class DatasetState:
    """What is known about the datasets: cached fraction (0..1) per key, which are read by
    running jobs, which are being warmed, their sizes (bytes, where known), how many GPUs of
    running jobs read each, how much of the cluster cache is free, and how much each node holds."""

    cached_fraction: Mapping[str, float] = field(default_factory=dict)
    reading: frozenset[str] = frozenset()
    warming: frozenset[str] = frozenset()
    sizes: Mapping[str, int] = field(default_factory=dict)
    readers: Mapping[str, int] = field(default_factory=dict)
    cache_free: float | None = None  # bytes free in the cluster cache (None: unknown)
    on_nodes: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # dataset -> node -> bytes cached


@dataclass(frozen=True)
class SourceModel:
    """What the ordering assumes of the data path: the sources' aggregate bandwidth (bytes/s)
    and how fast one GPU of a job reads when its data is cached (bytes/s)."""

    bandwidth: float
    gpu_rate: float

    def __post_init__(self) -> None:
        if not self.bandwidth > 0 or not self.gpu_rate > 0:
            raise ValueError(f"source bandwidth and GPU rate must be positive, not {self.bandwidth}, {self.gpu_rate}")


@dataclass(frozen=True)
class Capacity:
    """Free GPUs per node (``None``: GPUs not modelled) and/or free job slots (``None``: no slot
    limit); ``total_gpus`` (allocatable per node) tells which jobs can ever fit."""

    free_gpus: Mapping[str, int] | None = None
    slots: int | None = None
    total_gpus: Mapping[str, int] | None = None

    def place(self, job: JobInfo) -> Capacity | None:
        """The capacity left once ``job`` runs, or None if it does not fit now."""
        if self.slots is not None and self.slots < 1:
            return None
        free = self.free_gpus
        if free is not None and job.gpus_per_pod > 0:
            left = dict(free)
            for _ in range(max(1, job.pods)):
                fitting = [n for n, g in left.items() if g >= job.gpus_per_pod]
                if not fitting:
                    return None
                best = min(fitting, key=lambda n: (left[n], n))
                left[best] -= job.gpus_per_pod
            free = left
        slots = None if self.slots is None else self.slots - 1
        return Capacity(free, slots, self.total_gpus)

    def can_ever_fit(self, job: JobInfo) -> bool:
        if job.gpus_per_pod <= 0 or self.total_gpus is None:
            return True
        return Capacity(self.total_gpus).place(job) is not None


@dataclass(frozen=True)
class OrderingConfig:
    base: BasePolicy = BasePolicy.FIFO
    cache_aware: bool = True
    window: int = 16
    max_pass_over: int | None = 8
    warm_threshold: float = 0.5
    warm_ahead: int = 0
    default_expected_seconds: float = 3600.0
    source: SourceModel | None = None
    stagger: bool = False
    local: bool = False

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, not {self.window}")
        if self.max_pass_over is not None and self.max_pass_over < 0:
            raise ValueError(f"max_pass_over must be >= 0, not {self.max_pass_over}")
        if not 0.0 <= self.warm_threshold <= 1.0:
            raise ValueError(f"warm_threshold must be within 0..1, not {self.warm_threshold}")
        if self.warm_ahead < 0:
            raise ValueError(f"warm_ahead must be >= 0, not {self.warm_ahead}")


@dataclass(frozen=True)
class WarmIntent:
    """Warm ``dataset`` because ``job`` is next in line and its cache is cold."""

    dataset: str
    job: str


@dataclass(frozen=True)
class Plan:
    admit: tuple[str, ...] = ()
    passed_over: Mapping[str, int] = field(default_factory=dict)  # new counts, changed jobs only
    warm: tuple[WarmIntent, ...] = ()
    barrier: str | None = None
    unschedulable: tuple[str, ...] = ()


def submission_key(job: JobInfo) -> tuple[float, str]:
    return (job.submitted, job.name)


def base_order(jobs: Sequence[JobInfo], config: OrderingConfig) -> list[JobInfo]:
    if config.base is BasePolicy.SJF:

        def sjf_key(j: JobInfo) -> tuple[float, float, str]:
            expected = j.expected_seconds if j.expected_seconds is not None else config.default_expected_seconds
            return (expected, j.submitted, j.name)

        return sorted(jobs, key=sjf_key)
    return sorted(jobs, key=submission_key)


def warmth(job: JobInfo, state: DatasetState, reading: frozenset[str] | set[str] | None = None) -> float:
    """How warm a job's data is (0..1): per dataset 1 if it is being read, else its cached
    fraction; the mean over the job's datasets (0 for a job reading none)."""
    if not job.datasets:
        return 0.0
    now_reading = state.reading if reading is None else reading
    parts = [1.0 if d in now_reading else min(1.0, max(0.0, state.cached_fraction.get(d, 0.0))) for d in job.datasets]
    return sum(parts) / len(parts)


def fits_near_cache(job: JobInfo, state: DatasetState, capacity: Capacity) -> bool:
    """Whether one of the job's pods fits now on a node holding at least half as much of each of
    its datasets as the node holding most of it (where the webhook's affinity would send it)."""
    free = capacity.free_gpus
    if free is None or not job.datasets:
        return False
    for d in job.datasets:
        held = state.on_nodes.get(d, {})
        most = max(held.values(), default=0.0)
        if most <= 0 or not any(free.get(n, 0) >= job.gpus_per_pod and b >= most / 2 for n, b in held.items()):
            return False
    return True


def _fraction(state: DatasetState, d: str) -> float:
    return min(1.0, max(0.0, state.cached_fraction.get(d, 0.0)))


class _Source:
    """One round's view of the sources: the load cold readers put on them, and per job its cold
    data, its demand on the sources and its expected duration given the cache."""

    def __init__(self, state: DatasetState, model: SourceModel) -> None:
        self.state, self.model = state, model
        self.free = state.cache_free
        self._cold: dict[str, tuple[float, float]] = {}
        self.load = 0.0
        self.fetching = 0
        for d in state.reading:
            cold = 1.0 - _fraction(state, d)
            if cold > 0:
                self.load += max(1, state.readers.get(d, 1)) * model.gpu_rate * cold
                self.fetching += 1

    def cold(self, job: JobInfo, reading: set[str], seconds: float) -> tuple[float, float]:
        """(bytes the job must fetch from the sources, share of its data that is cold); a job
        reads at most ``seconds`` x its reading pace, so a short job over a large dataset only
        fetches that much. Memoised until the next ``add`` (which changes ``reading``)."""
        got = self._cold.get(job.name)
        if got is None:
            got = self._cold[job.name] = self._compute_cold(job, reading, seconds)
        return got

    def _compute_cold(self, job: JobInfo, reading: set[str], seconds: float) -> tuple[float, float]:
        weights = [float(self.state.sizes.get(d, 0)) for d in job.datasets]
        if not job.datasets:
            return 0.0, 0.0
        if not all(w > 0 for w in weights):
            weights = [1.0] * len(job.datasets)
        nbytes = share = 0.0
        for d, w in zip(job.datasets, weights, strict=True):
            if d in reading:
                continue
            cold = 1.0 - _fraction(self.state, d)
            nbytes += self.state.sizes.get(d, 0) * cold
            share += w * cold
        return min(nbytes, self.speed(job) * seconds), share / sum(weights)

    def speed(self, job: JobInfo) -> float:
        return max(1, job.gpus_per_pod) * max(1, job.pods) * self.model.gpu_rate

    def demand(self, job: JobInfo, reading: set[str], seconds: float) -> float:
        return self.speed(job) * self.cold(job, reading, seconds)[1]

    def extra(self, job: JobInfo, reading: set[str], seconds: float) -> float:
        """The time the job's cold bytes add to its run beyond its own reading pace, at the
        share of the sources it would get now."""
        nbytes = self.cold(job, reading, seconds)[0]
        if nbytes <= 0:
            return 0.0
        speed = self.speed(job)
        return nbytes / min(speed, self.share()) - nbytes / speed

    def share(self) -> float:
        """The source bandwidth one more cold reader would get now."""
        return max(self.model.bandwidth - self.load, self.model.bandwidth / (self.fetching + 1))

    def idle(self, reading: set[str]) -> dict[str, float]:
        """Bytes cached of each dataset nobody reads (what a full cache evicts from)."""
        sizes = self.state.sizes
        return {d: _fraction(self.state, d) * sizes.get(d, 0) for d in self.state.cached_fraction if d not in reading}

    def evicted(
        self, job: JobInfo, reading: set[str], seconds: float, wanted: set[str], idle: Mapping[str, float]
    ) -> float:
        """Bytes that other waiting jobs want (datasets in ``wanted``) which the job's cold
        bytes would push out of a full cluster cache: what it overflows, taken from the cached
        datasets nobody reads (``idle``) in proportion to their bytes."""
        if self.free is None:
            return 0.0
        over = self.cold(job, reading, seconds)[0] - max(0.0, self.free)
        if over <= 0:
            return 0.0
        total = sum(idle.values()) - sum(idle.get(d, 0.0) for d in set(job.datasets))
        if total <= 0:
            return 0.0
        return min(over, total) * sum(idle.get(d, 0.0) for d in wanted - set(job.datasets)) / total

    def saturated(self) -> bool:
        return self.load >= self.model.bandwidth

    def add(self, job: JobInfo, reading: set[str], seconds: float) -> None:
        """Account for ``job`` admitted (before ``reading`` takes its datasets)."""
        demand = self.demand(job, reading, seconds)
        if demand > 0:
            self.load += demand
            self.fetching += 1
        if self.free is not None:
            self.free -= self.cold(job, reading, seconds)[0]
        self._cold.clear()


def plan(
    pending: Sequence[JobInfo],
    state: DatasetState,
    capacity: Capacity,
    config: OrderingConfig,
) -> Plan:
    """Which of ``pending`` to start now (see the module docstring)."""
    fits: dict[tuple[int, int], bool] = {}
    for j in pending:
        shape = (j.gpus_per_pod, j.pods)
        if shape not in fits:
            fits[shape] = capacity.can_ever_fit(j)
    unschedulable = tuple(j.name for j in pending if not fits[(j.gpus_per_pod, j.pods)])
    jobs = [j for j in pending if j.name not in unschedulable]
    order = base_order(jobs, config)
    rank = {j.name: i for i, j in enumerate(order)}
    fifo = {j.name: i for i, j in enumerate(sorted(jobs, key=submission_key))}
    count = {j.name: j.passed_over for j in jobs}
    bound = config.max_pass_over
    reading: set[str] = set(state.reading)
    remaining = list(order)
    admitted: list[str] = []
    cap = capacity
    source = _Source(state, config.source) if config.cache_aware and config.source is not None else None

    def expected(j: JobInfo) -> float:
        return j.expected_seconds if j.expected_seconds is not None else config.default_expected_seconds

    def effective_key(j: JobInfo, src: _Source, wanted: set[str], idle: Mapping[str, float]) -> float:
        # SJF: the job's expected duration given the cache; FIFO: its submission, pushed back by
        # the time its cold data costs. Both add the refetch of what it would evict for others.
        seconds = expected(j)
        cost = src.extra(j, reading, seconds) + src.evicted(j, reading, seconds, wanted, idle) / src.share()
        return (seconds if config.base is BasePolicy.SJF else j.submitted) + cost

    def barrier_job() -> JobInfo | None:
        if bound is None:
            return None
        at_bound = [j for j in remaining if count[j.name] >= bound]
        return min(at_bound, key=lambda j: fifo[j.name]) if at_bound else None

    def ranked(barrier: JobInfo | None) -> list[JobInfo]:
        window = remaining[: config.window]
        if config.cache_aware:
            far = {j.name: config.local and not fits_near_cache(j, state, cap) for j in window}
            if source is not None:
                wanted = {d for o in window for d in o.datasets}
                idle = source.idle(reading)
                key = {j.name: effective_key(j, source, wanted, idle) for j in window}
                window.sort(key=lambda j: (far[j.name], key[j.name], rank[j.name]))
            else:
                window.sort(
                    key=lambda j: (warmth(j, state, reading) < config.warm_threshold, far[j.name], rank[j.name])
                )
        if barrier is not None:
            window = [barrier] + [j for j in window if j.name != barrier.name]
        return window

    while remaining:
        barrier = barrier_job()
        chosen: JobInfo | None = None
        for job in ranked(barrier):
            if barrier is not None and fifo[job.name] > fifo[barrier.name]:
                continue
            if source is not None and config.stagger and job is not barrier and source.saturated():
                if source.demand(job, reading, expected(job)) > 0:
                    continue
            after = cap.place(job)
            if after is not None:
                chosen, cap = job, after
                break
        if chosen is None:
            break
        admitted.append(chosen.name)
        if source is not None:
            source.add(chosen, reading, expected(chosen))
        reading.update(chosen.datasets)
        remaining = [j for j in remaining if j.name != chosen.name]
        for j in remaining:
            if fifo[j.name] < fifo[chosen.name]:
                count[j.name] += 1

    changed = {j.name: count[j.name] for j in jobs if j.name not in admitted and count[j.name] != j.passed_over}
    barrier = barrier_job()
    warm: list[WarmIntent] = []
    budget = config.warm_ahead - len(state.warming)
    if budget > 0 and remaining:
        for job in ranked(barrier):
            cold = [
                d
                for d in job.datasets
                if d not in reading
                and d not in state.warming
                and state.cached_fraction.get(d, 0.0) < config.warm_threshold
            ]
            if not cold:
                continue
            for d in cold[:budget]:
                warm.append(WarmIntent(d, job.name))
            break
    return Plan(tuple(admitted), changed, tuple(warm), barrier.name if barrier else None, unschedulable)
