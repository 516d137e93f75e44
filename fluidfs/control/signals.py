"""Turn the Prometheus text of mount daemons and cache workers into per-interval signals.

A *scrape* of one dataset is the text of every member's metrics endpoint at one moment.
:func:`snapshot` reads each text (prometheus_client's parser) into the cumulative counters
and gauges the autoscaler needs; :func:`sample` takes two snapshots and turns them into a
:class:`Sample`: rates over the interval between them, summed over the members.

Signals (names of the data-plane metrics in ``fluidfs/metrics.py``):

- delivered input: ``fluidfs_fuse_read_bytes_total`` and ``fluidfs_fuse_operations_total{op="read"}``
  of the mount daemons (bytes and reads handed to training processes per second);
- read stall: ``fluidfs_fuse_read_stall_seconds_total`` (seconds read() requests waited on
  blocks no local tier held, per second: 1.0 = on average one reader always waiting) and its
  share of the time spent in read() (``fluidfs_fuse_operation_duration_seconds_sum{op="read"}``);
- hit ratio of the cluster cache, as training sees it: the share of the delivered input that
  did not have to come from the source, ``1 - source bytes / delivered bytes`` (a block a
  mount gets from a peer that holds it is a hit; one the owner had to fetch is not);
- hit ratio of block lookups: ``(mem hits + ssd hits) / (mem hits + mem misses)`` (every lookup
  starts at the memory tier), over mounts and workers — a mount's lookups that a peer answers
  count as misses here, so this ratio stays low in a cluster even when nothing comes from the
  source;
- source throughput: ``fluidfs_source_bytes_total``;
- cache capacity used: ``fluidfs_cache_used_bytes`` / ``fluidfs_cache_quota_bytes`` of each
  member's largest tier (the SSD tier, or the memory tier of a member without one);
- dataset size, when some member knows it: ``fluidfs_dataset_size_bytes`` of a member whose
  ``fluidfs_dataset_size_complete`` is 1 (it has listed every directory it has seen); the largest
  size any member has seen is kept too, as a lower bound.

Only samples whose ``dataset`` label is the dataset being sampled count (a CSI mount
supervisor's endpoint serves every dataset mounted on that node, each mount's samples with a
``mount`` label, which are summed); a mount-side endpoint with no sample of the dataset at all
is not a member of it and is skipped.

Nothing here raises on bad input: an endpoint that did not answer, a garbled page, a missing
counter or a member seen for the first time makes the sample *partial* (``problems`` says
why) and the signals it affects ``None``; a counter that went down (the member restarted)
counts from zero, as Prometheus' ``rate()`` does.

Caveats: cached bytes are summed over members, so a block kept by a reader *and* its owner
counts twice; ``cached_fraction`` is capped at 1.  The stall share is approximate when read
latencies straddle the scrape moment.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

#: roles of the members of a dataset's cluster cache
CLIENT, WORKER = "mount", "worker"
#: a mount supervisor's gauge: the peer port of its daemon of a dataset, by the dataset's Service
CLUSTER_PORT = "fluidfs_csi_cluster_port"

_COUNTERS = {
    "read_bytes": ("fluidfs_fuse_read_bytes_total", {}),
    "reads": ("fluidfs_fuse_operations_total", {"op": "read"}),
    "read_seconds": ("fluidfs_fuse_operation_duration_seconds_sum", {"op": "read"}),
    "stall_seconds": ("fluidfs_fuse_read_stall_seconds_total", {}),
    "mem_hits": ("fluidfs_cache_hits_total", {"tier": "mem"}),
    "ssd_hits": ("fluidfs_cache_hits_total", {"tier": "ssd"}),
    "mem_misses": ("fluidfs_cache_misses_total", {"tier": "mem"}),
    "source_bytes": ("fluidfs_source_bytes_total", {}),
}
#: counters a mount daemon must export for its sample to be complete
_CLIENT_REQUIRED = ("read_bytes", "reads", "stall_seconds", "mem_hits", "mem_misses")
_WORKER_REQUIRED = ("mem_hits", "mem_misses")


@dataclass(frozen=True)
class Target:
    """One metrics endpoint of a dataset's member: a mount daemon or a cache worker."""

    name: str  # pod (or process) name, unique within the dataset
    role: str  # CLIENT | WORKER
    node: str  # where it runs ("" if unknown)
    url: str
    ip: str = ""  # the pod's IP (node members of the cluster are published by it)


@dataclass(frozen=True)
class MemberSnapshot:
    """What one member's endpoint said at ``time``; ``error`` is set when it said nothing usable."""

    target: Target
    time: float
    counters: Mapping[str, float] = field(default_factory=dict)  # keys of _COUNTERS present
    used_bytes: int | None = None  # largest tier
    quota_bytes: int | None = None
    dataset_bytes: int | None = None  # the dataset's size, if this member knows it completely
    dataset_bytes_seen: int | None = None  # bytes of the files it has seen (a lower bound)
    error: str = ""
    peer_port: int | None = None  # a mount supervisor's daemon of the dataset serves peers here (CLUSTER_PORT)


@dataclass(frozen=True)
class MemberUsage:
    """Cache held by one member (for the Dataset status' per-node view)."""

    name: str
    role: str
    node: str
    used_bytes: int
    quota_bytes: int


@dataclass(frozen=True)
class Sample:
    """The dataset's signals over one interval, summed over its members; None = unknown."""

    time: float  # end of the interval (the later snapshot)
    interval: float  # seconds
    delivered_bps: float | None = None  # bytes/s returned to read() calls of training processes
    reads_per_s: float | None = None
    stall: float | None = None  # seconds of read stall per second, summed over readers
    stall_share: float | None = None  # stall / time spent in read()
    hit_ratio: float | None = None  # of the cluster: 1 - source / delivered; None without input
    lookup_hit_ratio: float | None = None  # of block lookups; None also when there were none
    source_bps: float | None = None
    used_bytes: int | None = None  # cluster cache (all members)
    capacity_bytes: int | None = None
    dataset_bytes: int | None = None  # known completely by some member
    dataset_bytes_seen: int | None = None  # the most any member has seen (a lower bound)
    clients: int = 0  # mount daemons that answered
    workers: int = 0  # cache workers that answered
    members: tuple[MemberUsage, ...] = ()
    partial: bool = False
    problems: tuple[str, ...] = ()

    @property
    def fill(self) -> float | None:
        """Fraction of the cluster cache's capacity in use."""
        if self.used_bytes is None or not self.capacity_bytes:
            return None
        return self.used_bytes / self.capacity_bytes

    @property
    def cached_fraction(self) -> float | None:
        """Bytes cached / dataset size (capped at 1), when the size is known."""
        if self.used_bytes is None or not self.dataset_bytes:
            return None
        return min(1.0, self.used_bytes / self.dataset_bytes)


def _match(labels: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in want.items())


def snapshot(
    target: Target, text: str | None, dataset: str, now: float, error: str = "", service: str = ""
) -> MemberSnapshot:
    """Parse one endpoint's Prometheus text (None: it did not answer; ``error`` says why).

    ``service`` (``NAMESPACE/NAME`` of the dataset's peer Service): also read the peer port a
    mount supervisor exports for it (:data:`CLUSTER_PORT`).
    """
    if text is None:
        return MemberSnapshot(target, now, error=error or "no answer")
    counters: dict[str, float] = {}
    used: dict[str, float] = {}
    quota: dict[str, float] = {}
    size: float | None = None
    complete = False
    peer_port: int | None = None
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = s.labels
                if service and s.name == CLUSTER_PORT and labels.get("service") == service and 0 < s.value < 65536:
                    peer_port = int(s.value)
                    continue
                if labels.get("dataset", dataset) != dataset:
                    continue
                value = float(s.value)
                if math.isnan(value) or math.isinf(value):
                    continue
                for key, (name, want) in _COUNTERS.items():
                    if s.name == name and _match(labels, want):
                        counters[key] = counters.get(key, 0.0) + value
                tier = labels.get("tier", "")
                if s.name == "fluidfs_cache_used_bytes":
                    used[tier] = used.get(tier, 0.0) + value
                elif s.name == "fluidfs_cache_quota_bytes":
                    quota[tier] = quota.get(tier, 0.0) + value
                elif s.name == "fluidfs_dataset_size_bytes" and value > 0:
                    size = value if size is None else max(size, value)
                elif s.name == "fluidfs_dataset_size_complete" and value > 0:
                    complete = True
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on garbage
        log.debug("metrics of %s (%s) are garbled: %s", target.name, target.url, exc)
        return MemberSnapshot(target, now, error=f"garbled metrics: {type(exc).__name__}")
    tier = "ssd" if quota.get("ssd") else "mem"
    return MemberSnapshot(
        target,
        now,
        counters=counters,
        used_bytes=int(used[tier]) if tier in used else None,
        quota_bytes=int(quota[tier]) if tier in quota else None,
        dataset_bytes=int(size) if size is not None and complete else None,
        dataset_bytes_seen=int(size) if size is not None else None,
        peer_port=peer_port,
    )


def _delta(cur: float, prev: float) -> float:
    return cur if cur < prev else cur - prev  # a counter that went down restarted from zero


_GROUP = {"read_bytes": "delivered", "reads": "delivered", "read_seconds": "stall", "stall_seconds": "stall"}


def _lose(complete: dict[str, bool], client: bool) -> None:
    """A member's rates are unknown this interval: so are the sums it contributes to."""
    complete["hits"] = complete["source"] = False
    if client:
        complete["delivered"] = complete["stall"] = False


def sample(previous: Mapping[str, MemberSnapshot], current: Sequence[MemberSnapshot]) -> Sample:
    """The signals between two scrapes of one dataset (``previous`` keyed by target name)."""
    problems: list[str] = []
    now = max((m.time for m in current), default=0.0)
    prev_times = [previous[m.target.name].time for m in current if m.target.name in previous]
    interval = now - min(prev_times) if prev_times else 0.0
    sums = dict.fromkeys(_COUNTERS, 0.0)
    complete = {"delivered": True, "stall": True, "hits": True, "source": True}
    clients = workers = used = capacity = 0
    usage_known = bool(current)
    size: int | None = None
    seen: int | None = None
    members: list[MemberUsage] = []
    if not current:
        problems.append("no member answered")
    for cur in current:
        t = cur.target
        client = t.role == CLIENT
        if cur.error:
            problems.append(f"{t.role} {t.name}: {cur.error}")
            _lose(complete, client)
            usage_known = False
            continue
        if client and not cur.counters and cur.used_bytes is None and cur.quota_bytes is None:
            continue  # a mount supervisor's endpoint without this dataset: no mount of it there
        clients += client
        workers += not client
        if cur.used_bytes is None or cur.quota_bytes is None:
            usage_known = False
            problems.append(f"{t.role} {t.name}: no cache usage metrics")
        else:
            used += cur.used_bytes
            capacity += cur.quota_bytes
            members.append(MemberUsage(t.name, t.role, t.node, cur.used_bytes, cur.quota_bytes))
        if cur.dataset_bytes is not None:
            size = max(size or 0, cur.dataset_bytes)
        if cur.dataset_bytes_seen is not None:
            seen = max(seen or 0, cur.dataset_bytes_seen)
        required = _CLIENT_REQUIRED if client else _WORKER_REQUIRED
        missing = [k for k in required if k not in cur.counters]
        if missing:
            problems.append(f"{t.role} {t.name}: missing {', '.join(_COUNTERS[k][0] for k in missing)}")
        prev = previous.get(t.name)
        if prev is None or prev.error:
            problems.append(f"{t.role} {t.name}: first scrape, no rate yet")
            _lose(complete, client)
            continue
        for key in _COUNTERS:
            c, p = cur.counters.get(key), prev.counters.get(key)
            if c is not None and p is not None:
                sums[key] += _delta(c, p)
            elif key in required:
                complete[_GROUP.get(key, "hits")] = False
            # optional counters (source bytes before the first fetch, ssd hits without an
            # SSD tier, read latency) count as zero

    def rate(key: str, group: str) -> float | None:
        if interval <= 0 or not complete[group]:
            return None
        return sums[key] / interval

    lookups = sums["mem_hits"] + sums["mem_misses"]
    lookup_hit_ratio = None
    if interval > 0 and complete["hits"] and lookups > 0:
        lookup_hit_ratio = min(1.0, (sums["mem_hits"] + sums["ssd_hits"]) / lookups)
    hit_ratio = None
    if interval > 0 and complete["source"] and complete["delivered"] and sums["read_bytes"] > 0:
        hit_ratio = max(0.0, 1.0 - sums["source_bytes"] / sums["read_bytes"])
    stall = rate("stall_seconds", "stall")
    stall_share = None
    if stall is not None and sums["read_seconds"] > 0:
        stall_share = min(1.0, sums["stall_seconds"] / sums["read_seconds"])
    return Sample(
        time=now,
        interval=interval,
        delivered_bps=rate("read_bytes", "delivered"),
        reads_per_s=rate("reads", "delivered"),
        stall=stall,
        stall_share=stall_share,
        hit_ratio=hit_ratio,
        lookup_hit_ratio=lookup_hit_ratio,
        source_bps=rate("source_bytes", "source"),
        used_bytes=used if usage_known else None,
        capacity_bytes=capacity if usage_known else None,
        dataset_bytes=size,
        dataset_bytes_seen=seen,
        clients=clients,
        workers=workers,
        members=tuple(members),
        partial=bool(problems),
        problems=tuple(problems),
    )


def by_name(snapshots: Iterable[MemberSnapshot]) -> dict[str, MemberSnapshot]:
    """Index a scrape by target name (the ``previous`` argument of :func:`sample`)."""
    return {s.target.name: s for s in snapshots}
