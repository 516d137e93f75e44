"""Prometheus metrics of the CSI plugin (its own registry), and the metrics of every dataset daemon
it runs, re-exported on the same page.

- ``fluidfs_csi_volume_mounted{volume_id}``: 1 while the volume is staged and its shared mount
  answers, 0 while it is broken (being repaired); the series is removed at unstage, so the label
  set is bounded by the volumes staged on the node.
- ``fluidfs_csi_recoveries_total{kind}``: repairs performed; ``kind`` is ``mount`` (a dead FUSE
  daemon remounted) or ``bind`` (a stale staging/publish bind re-bound).
- ``fluidfs_csi_shared_mounts``: node-level fluidfs mounts currently held.
- ``fluidfs_csi_dataset_info{dataset, dataset_key}``: 1 per dataset mounted on the node: the
  name its daemon labels its own metrics with, and its dataset key (``fluidfs.spec.identity``),
  so that fluidfs-controller can publish the ``cache.fluidfs.io/<dataset_key>`` node labels from
  the daemons' cache metrics.  Bounded by the datasets mounted on the node.
- ``fluidfs_csi_cluster_port{service}``: the peer port of this node's daemon of each cluster
  service (``NAMESPACE/NAME``) it serves (``csi/peers.py``); fluidfs-controller publishes the
  nodes of a dataset's cluster from it.  Bounded by the datasets mounted on the node.
- ``fluidfs_csi_budget_bytes{resource}``: the node's limits: ``memory`` (the supervisor's memory
  limit) and ``cache`` (the SSD capacity all datasets share); ``fluidfs_csi_granted_bytes{resource}``:
  what the mounted datasets hold of them; ``fluidfs_csi_budget_adjustments_total{resource,
  outcome}``: memory tiers and SSD quotas ``shrunk`` to fit, mounts ``refused`` (``csi/budget.py``).
- ``fluidfs_csi_cache_dirs_removed_total{reason}``: unused cache directories removed (``expired``
  after the grace period, ``evicted`` to make room; ``csi/caches.py``).
- every dataset daemon's own metrics (``fluidfs_cache_*``, ``fluidfs_fuse_*``, ``fluidfs_source_*``,
  ``process_*``... each with its ``dataset`` label), with a ``mount`` label added (the dataset key,
  bounded by the mounts on the node), and ``fluidfs_csi_daemon_up{mount}`` (1: its page was read).
  :class:`DaemonCollector` reads them from each daemon's loopback endpoint when this page is
  scraped, so a Prometheus (or fluidfs-controller) scraping the supervisor's pod sees every
  dataset of the node.

Caveats: a daemon's counters start from zero when it is mounted again after a crash (a counter
reset, which ``rate()`` handles); a daemon that does not answer within ``SCRAPE_TIMEOUT`` is
left out of that scrape (``fluidfs_csi_daemon_up`` 0).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from fluidfs.util import prom

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT = 2.0  # one daemon's page
SCRAPE_THREADS = 8

REGISTRY = CollectorRegistry()
VOLUME_MOUNTED = Gauge(
    "fluidfs_csi_volume_mounted",
    "1 if the staged volume's shared fluidfs mount is healthy, 0 while it is being repaired",
    ["volume_id"],
    registry=REGISTRY,
)
RECOVERIES = Counter(
    "fluidfs_csi_recoveries",
    "Repairs performed by the CSI plugin (kind: mount = dead daemon remounted, bind = re-bound)",
    ["kind"],
    registry=REGISTRY,
)
SHARED_MOUNTS = Gauge(
    "fluidfs_csi_shared_mounts", "Node-level fluidfs mounts held by the CSI plugin", registry=REGISTRY
)
DATASET_INFO = Gauge(
    "fluidfs_csi_dataset_info",
    "1 per dataset mounted on the node: its metrics name and dataset key (cache.fluidfs.io/<key> labels)",
    ["dataset", "dataset_key"],
    registry=REGISTRY,
)
CLUSTER_PORT = Gauge(
    "fluidfs_csi_cluster_port",
    "Peer port of this node's dataset daemon that is a member of the cluster cache of this Service",
    ["service"],
    registry=REGISTRY,
)
BUDGET = Gauge(
    "fluidfs_csi_budget_bytes",
    "Node-wide limits of the datasets (memory: the supervisor's memory limit; cache: the SSD capacity)",
    ["resource"],
    registry=REGISTRY,
)
GRANTED = Gauge(
    "fluidfs_csi_granted_bytes",
    "Memory tiers and SSD quotas granted to the datasets mounted on the node",
    ["resource"],
    registry=REGISTRY,
)
BUDGET_ADJUSTMENTS = Counter(
    "fluidfs_csi_budget_adjustments",
    "Dataset mounts whose memory tier or SSD quota was shrunk to fit the node, or that were refused",
    ["resource", "outcome"],
    registry=REGISTRY,
)
CACHE_DIRS_REMOVED = Counter(
    "fluidfs_csi_cache_dirs_removed",
    "Unused cache directories removed (expired: after the grace period; evicted: to make room)",
    ["reason"],
    registry=REGISTRY,
)
for _kind in ("mount", "bind"):
    RECOVERIES.labels(kind=_kind)
_DATASETS: dict[str, tuple[str, str]] = {}  # shared mount key -> (dataset name, dataset key)
_DATASETS_LOCK = threading.Lock()


def set_dataset(mount_key: str, name: str, dataset_key: str) -> None:
    """Publish that shared mount ``mount_key`` serves dataset ``name`` of key ``dataset_key``."""
    with _DATASETS_LOCK:
        _DATASETS[mount_key] = (name, dataset_key)
        DATASET_INFO.labels(dataset=name, dataset_key=dataset_key).set(1)


def drop_dataset(mount_key: str) -> None:
    """The shared mount ``mount_key`` is gone (the series goes with the last mount of its pair)."""
    with _DATASETS_LOCK:
        pair = _DATASETS.pop(mount_key, None)
        if pair is not None and pair not in _DATASETS.values():
            try:
                DATASET_INFO.remove(*pair)
            except KeyError:
                pass


for _resource in ("memory", "cache"):
    GRANTED.labels(resource=_resource)
for _reason in ("expired", "evicted"):
    CACHE_DIRS_REMOVED.labels(reason=_reason)


class DaemonCollector:
    """Every dataset daemon's metrics page, re-exported with a ``mount`` label.

    ``daemons()`` lists ``(mount key, metrics URL or "")`` of the datasets mounted right now."""

    def __init__(self, daemons: Callable[[], Sequence[tuple[str, str]]], timeout: float = SCRAPE_TIMEOUT) -> None:
        self.daemons = daemons
        self.timeout = timeout

    def describe(self) -> list[Metric]:
        return []  # nothing fixed: the registry must not scrape the daemons when this is registered

    def _fetch(self, url: str) -> str | None:
        if not url:
            return None
        try:
            return prom.fetch_text(url, self.timeout)
        except OSError as e:
            log.debug("metrics of %s: %s", url, e)
            return None

    def collect(self) -> Iterator[Metric]:
        daemons = list(self.daemons())
        up = GaugeMetricFamily("fluidfs_csi_daemon_up", "1 if the dataset daemon's metrics were read", labels=["mount"])
        families: dict[str, Metric] = {}
        if daemons:
            with ThreadPoolExecutor(min(SCRAPE_THREADS, len(daemons)), thread_name_prefix="csi-scrape") as pool:
                texts = list(pool.map(self._fetch, [url for _key, url in daemons]))
        else:
            texts = []
        for (key, _url), text in zip(daemons, texts, strict=True):
            ok = text is not None
            if text is not None:
                try:
                    parsed = list(text_string_to_metric_families(text))
                except Exception as e:  # the parser raises ValueError, IndexError... on garbage
                    log.warning("metrics of dataset %s are garbled: %s", key, e)
                    parsed, ok = [], False
                for fam in parsed:
                    merged = families.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
                    for smp in fam.samples:
                        merged.add_sample(smp.name, {**smp.labels, "mount": key}, smp.value, smp.timestamp)
            up.add_metric([key], 1.0 if ok else 0.0)
        yield up
        yield from families.values()


def register_daemons(daemons: Callable[[], Sequence[tuple[str, str]]]) -> DaemonCollector:
    """Re-export the dataset daemons' metrics on this registry's page."""
    collector = DaemonCollector(daemons)
    REGISTRY.register(collector)
    return collector


def set_volume(volume_id: str, healthy: bool) -> None:
    VOLUME_MOUNTED.labels(volume_id=volume_id).set(1 if healthy else 0)


def drop_volume(volume_id: str) -> None:
    try:
        VOLUME_MOUNTED.remove(volume_id)
    except KeyError:
        pass


def serve(addr: str) -> tuple[str, int]:
    """Serve /metrics on ``HOST:PORT`` (port 0 = any free port); returns the bound address."""
    return prom.serve(addr, REGISTRY)
