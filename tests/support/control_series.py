"""Generated metric series for autoscaler tests: a training job, its mount and the workers.

``Scenario`` says, for a worker count and a time, what the dataset's members would report:
the input rate delivered to training, the read stall, the hit ratio, the cache fill.
``Cluster`` integrates that into cumulative Prometheus counters per member (one mount daemon,
``n`` workers with a ``wN`` name each) and renders each member's exposition text exactly as
the data plane's metric names spell it, so tests drive the real parser
(``fluidfs.control.signals``) and the real decisions (``fluidfs.control.autoscaler``).
``drive`` runs the loop: scrape, sample, decide, apply (a new worker answers from the next
scrape on, as a pod that turns ready).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from fluidfs.control import autoscaler, signals

MiB = 1 << 20
GiB = 1 << 30
DATASET = "imagenet"


@dataclass
class Point:
    """What the job and cache look like during one interval."""

    rate: float  # bytes/s delivered to training
    stall: float  # seconds of read stall per second
    hit_ratio: float = 0.5  # share of the input that did not come from the source
    used: float = 0.0  # bytes cached, cluster-wide
    lookup_hit_ratio: float | None = None  # of block lookups (default: hit_ratio)


Scenario = Callable[[int, float], Point]  # (workers, time) -> point


@dataclass
class Member:
    name: str
    role: str
    quota: int
    counters: dict[str, float] = field(default_factory=dict)
    used: float = 0.0


def render(m: Member, dataset: str = DATASET, drop: tuple[str, ...] = ()) -> str:
    """The Prometheus text of one member (``drop``: metric names left out)."""
    c = m.counters
    lines = []

    def add(name: str, labels: str, value: float, kind: str = "counter") -> None:
        if name in drop:
            return
        lines.append(f"# TYPE {name.removesuffix('_total')} {kind}")
        lines.append(f"{name}{{{labels}}} {value}")

    ds = f'dataset="{dataset}"'
    if m.role == signals.CLIENT:
        add("fluidfs_fuse_read_bytes_total", ds, c.get("read_bytes", 0))
        add("fluidfs_fuse_operations_total", f'{ds},op="read"', c.get("reads", 0))
        add("fluidfs_fuse_read_stall_seconds_total", ds, c.get("stall", 0))
    add("fluidfs_cache_hits_total", f'{ds},tier="mem"', c.get("hits", 0))
    add("fluidfs_cache_misses_total", f'{ds},tier="mem"', c.get("misses", 0))
    add("fluidfs_source_bytes_total", f'{ds},kind="s3"', c.get("source", 0))
    add("fluidfs_cache_used_bytes", f'{ds},tier="ssd"', m.used, "gauge")
    add("fluidfs_cache_quota_bytes", f'{ds},tier="ssd"', m.quota, "gauge")
    return "\n".join(lines) + "\n"


class Cluster:
    """One mount daemon and ``n`` workers, integrating a scenario over time."""

    def __init__(self, scenario: Scenario, mount_quota: int = 10 * GiB, worker_quota: int = 10 * GiB) -> None:
        self.scenario = scenario
        self.worker_quota = worker_quota
        self.mount = Member("mount-0", signals.CLIENT, mount_quota)
        self.workers: list[Member] = []
        self._seq = 0

    def resize(self, n: int) -> None:
        while len(self.workers) > n:
            self.workers.pop()
        while len(self.workers) < n:
            self._seq += 1
            self.workers.append(Member(f"w{self._seq}", signals.WORKER, self.worker_quota))

    def advance(self, t: float, dt: float) -> None:
        p = self.scenario(len(self.workers), t)
        lookups = p.rate * dt / (4 * MiB)
        lookup_hits = p.hit_ratio if p.lookup_hit_ratio is None else p.lookup_hit_ratio
        c = self.mount.counters
        for key, value in (
            ("read_bytes", p.rate * dt),
            ("reads", p.rate * dt / MiB),
            ("stall", p.stall * dt),
            ("hits", lookups * lookup_hits),
            ("misses", lookups * (1 - lookup_hits)),
            ("source", p.rate * dt * (1 - p.hit_ratio)),
        ):
            c[key] = c.get(key, 0.0) + value
        members = [self.mount, *self.workers]
        capacity = sum(m.quota for m in members)
        for m in members:
            m.used = min(m.quota, p.used * m.quota / capacity)
            if m is not self.mount:
                m.counters["hits"] = m.counters.get("hits", 0.0) + lookups * p.hit_ratio / len(self.workers)
                m.counters["misses"] = m.counters.get("misses", 0.0) + lookups * (1 - p.hit_ratio) / len(self.workers)

    def capacity(self) -> int:
        return self.mount.quota + self.worker_quota * len(self.workers)

    def texts(self) -> list[tuple[signals.Target, str]]:
        return [(signals.Target(m.name, m.role, "node", f"http://{m.name}/metrics"), render(m)) for m in
                [self.mount, *self.workers]]  # fmt: skip


@dataclass
class Step:
    time: float
    replicas: int
    decision: autoscaler.Decision
    sample: signals.Sample


def drive(
    scenario: Scenario,
    params: autoscaler.Params,
    bounds: autoscaler.Bounds,
    duration: float,
    start: int | None = None,
    mangle: Callable[[int, signals.Target, str], str | None] | None = None,
    worker_quota: int = 10 * GiB,
    mount_quota: int = 10 * GiB,
) -> list[Step]:
    """Run the scrape → sample → decide → scale loop for ``duration`` seconds.

    ``mangle(tick, target, text)`` may alter or drop (None) a member's text (missing metrics).
    """
    replicas = bounds.min_workers if start is None else start
    cluster = Cluster(scenario, mount_quota=mount_quota, worker_quota=worker_quota)
    cluster.resize(replicas)
    state = autoscaler.State(replicas=replicas)
    history: list[signals.Sample] = []
    previous: dict[str, signals.MemberSnapshot] = {}
    steps: list[Step] = []
    dt = params.interval
    t = 0.0
    tick = 0
    while t < duration:
        t += dt
        tick += 1
        cluster.advance(t, dt)
        snaps = []
        for target, text in cluster.texts():
            out = mangle(tick, target, text) if mangle is not None else text
            snaps.append(signals.snapshot(target, out, DATASET, t, "" if out is not None else "refused"))
        sample = signals.sample(previous, snaps)
        previous = signals.by_name(snaps)
        history.append(sample)
        decision, state = autoscaler.decide(params, bounds, state, history, t)
        steps.append(Step(t, decision.replicas, decision, sample))
        cluster.resize(decision.replicas)
    return steps


def io_bound(demand: float, per_worker: float, base: float, best: int, hit_ratio: float = 0.3) -> Scenario:
    """A job that wants ``demand`` bytes/s; each worker up to ``best`` adds ``per_worker``."""

    def point(n: int, t: float) -> Point:
        supply = base + per_worker * min(n, best)
        rate = min(demand, supply)
        stall = 0.0 if rate >= demand else 4 * (1 - rate / demand)  # 4 readers
        return Point(rate, stall, hit_ratio, used=0.0)

    return point


def epochs(dataset: float, demand: float, source: float, mount_quota: float, worker_quota: float) -> Scenario:
    """Shuffled epochs over ``dataset`` bytes through a cluster cache that keeps what it first
    admits (eviction ``none``): the first epoch reads everything from the source (rate
    ``source``); later ones hit what is cached (``used / dataset`` of the input) and fetch the
    rest at ``source``.  The job wants ``demand`` bytes/s (4 readers)."""
    state = {"t": 0.0, "read": 0.0, "used": 0.0}

    def point(n: int, t: float) -> Point:
        capacity = mount_quota + worker_quota * n
        first_epoch = state["read"] < dataset
        hit = 0.0 if first_epoch else min(1.0, state["used"] / dataset)
        rate = min(demand, source / (1 - hit)) if hit < 1 else demand
        dt, state["t"] = t - state["t"], t
        state["read"] += rate * dt
        state["used"] = min(dataset, capacity * 0.97, state["used"] + rate * (1 - hit) * dt)
        return Point(rate, 4 * (1 - rate / demand), hit, used=state["used"])

    return point


def noisy(scenario: Scenario, amplitude: float, seed: int = 7) -> Scenario:
    rng = random.Random(seed)

    def point(n: int, t: float) -> Point:
        p = scenario(n, t)
        return Point(p.rate * (1 + rng.uniform(-amplitude, amplitude)), p.stall, p.hit_ratio, p.used)

    return point


def ends_at(scenario: Scenario, end: float) -> Scenario:
    def point(n: int, t: float) -> Point:
        return scenario(n, t) if t <= end else Point(0.0, 0.0, 1.0)

    return point


def direction_changes(steps: list[Step]) -> int:
    dirs = [s.decision.direction for s in steps if s.decision.changed]
    return sum(1 for a, b in zip(dirs, dirs[1:], strict=False) if a != b)
