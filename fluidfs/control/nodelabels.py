"""Where each dataset's cache is, published: ``cache.fluidfs.io/<dataset key>`` node labels from the mounters' metrics.

Every ``interval`` (60 s by default) the controller reads the metrics endpoint of every mount
supervisor pod (the CSI ``mounter`` DaemonSet: one per node, the pods the autoscaler samples
too) and learns, per node, how many bytes of each dataset its mounts hold.  The page must carry,
per dataset mounted on the node:

- ``fluidfs_csi_dataset_info{dataset="<name>", dataset_key="<key>"} 1`` -- which dataset key
  (``fluidfs.spec.identity``) the mount of that name serves (the CSI plugin exports it);
- the mount daemon's own samples with that ``dataset`` label: ``fluidfs_cache_used_bytes`` and
  ``fluidfs_cache_quota_bytes`` per tier (the largest tier counts: the SSD tier, or memory
  without one), and ``fluidfs_dataset_size_bytes`` / ``fluidfs_dataset_size_complete``.

It then writes each node's labels with ``sched.locations.label_patch`` (a JSON merge patch of
the Node, only when a bucketed value changes): the datasets the node holds most of (at most
``LabelPolicy.max_labels``, each at least ``min_bytes``).  A dataset that is not mounted on a
node any more keeps its label there (its SSD cache stays on the node's disk and warms the next
mount), until it is no longer *live*: a label whose key no StorageClass or PersistentVolume of
the driver, no inline volume of an unfinished pod and no mounter names any more is removed from
every node.  Nodes whose mounter did not answer are only cleaned, never re-measured.

The dataset sizes learnt on the way (from mounts that have seen their whole tree) give the Job
queue the cached fraction of each dataset.

Caveats: a dataset name served by several keys on one node (two volumes of the same bucket
with different prefixes and no ``name``) cannot be split: it is left out on that node and
logged.  A label is as fresh as ``interval``; a label kept for an unmounted dataset says what
the node held when it last served it (the CSI plugin may have removed that cache since).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from fluidfs.control import metrics
from fluidfs.control.adapter import KubeApi, PodInfo
from fluidfs.control.informer import ClusterView
from fluidfs.control.sched.locations import LabelPolicy, key_of_label, label_patch, parse_label_value
from fluidfs.errors import KubeApiError, ScrapeError
from fluidfs.spec.identity import is_key

log = logging.getLogger(__name__)

INFO = "fluidfs_csi_dataset_info"


@dataclass(frozen=True)
class NodeReport:
    """What one node's mounter says: per dataset key, bytes cached, and the dataset's size
    where a mount knows it completely."""

    cached: Mapping[str, int] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    unmapped: tuple[str, ...] = ()  # dataset names with cache metrics but no single key


def node_report(text: str) -> NodeReport:
    """Parse a mounter's metrics page (see the module docstring); ValueError if it is garbled."""
    keys: dict[str, set[str]] = {}
    used: dict[tuple[str, str], float] = {}
    quota: dict[tuple[str, str], float] = {}
    size: dict[str, float] = {}
    complete: dict[str, bool] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on garbage
        raise ValueError(f"garbled metrics: {type(exc).__name__}") from None
    for family in families:
        for s in family.samples:
            name = s.labels.get("dataset")
            value = float(s.value)
            if not name or math.isnan(value) or math.isinf(value):
                continue
            if s.name == INFO:
                key = s.labels.get("dataset_key", "")
                if is_key(key) and value > 0:
                    keys.setdefault(name, set()).add(key)
            elif s.name == "fluidfs_cache_used_bytes":
                t = (name, s.labels.get("tier", ""))
                used[t] = used.get(t, 0.0) + value
            elif s.name == "fluidfs_cache_quota_bytes":
                t = (name, s.labels.get("tier", ""))
                quota[t] = quota.get(t, 0.0) + value
            elif s.name == "fluidfs_dataset_size_bytes":
                size[name] = max(size.get(name, 0.0), value)
            elif s.name == "fluidfs_dataset_size_complete":
                complete[name] = complete.get(name, False) or value > 0
    cached: dict[str, int] = {}
    sizes: dict[str, int] = {}
    unmapped: list[str] = []
    for name in sorted({n for n, _ in used}):
        ks = keys.get(name, set())
        if len(ks) != 1:
            unmapped.append(name)
            continue
        (key,) = ks
        tier = "ssd" if quota.get((name, "ssd")) else "mem"
        cached[key] = cached.get(key, 0) + int(used.get((name, tier), 0.0))
        if complete.get(name) and size.get(name, 0) > 0:
            sizes[key] = int(size[name])
    return NodeReport(cached, sizes, tuple(unmapped))


@dataclass(frozen=True)
class LabelConfig:
    namespace: str  # where the mounter pods run
    selector: Mapping[str, str]  # their labels
    interval: float = 60.0
    policy: LabelPolicy = field(default_factory=LabelPolicy)
    scrape_timeout: float = 5.0


class NodeLabeler:
    """Keeps the Nodes' cache labels (see the module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        view: ClusterView,
        cfg: LabelConfig,
        pool: ThreadPoolExecutor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.view = view
        self.cfg = cfg
        self.pool = pool
        self.clock = clock
        self.dataset_bytes: dict[str, int] = {}  # dataset key -> size, from mounts that know it
        self._next = 0.0
        self._unmapped_logged: set[tuple[str, str]] = set()

    def due(self) -> float:
        return max(0.0, self._next - self.clock())

    def run_if_due(self) -> None:
        if self.clock() >= self._next:
            self._next = self.clock() + self.cfg.interval
            self.run_once()

    def _scrape(self, pod: PodInfo) -> tuple[str, NodeReport | None]:
        try:
            return pod.node, node_report(self.api.scrape(pod.metrics_url, self.cfg.scrape_timeout))
        except (ScrapeError, ValueError) as exc:
            log.warning("node %s: mounter %s/%s metrics unreadable: %s", pod.node, pod.namespace, pod.name, exc)
            return pod.node, None

    def measure(self) -> dict[str, NodeReport]:
        """Per node name: its mounter's report (nodes whose mounter did not answer are absent)."""
        try:
            pods = self.api.list_pods(self.cfg.namespace, self.cfg.selector)
        except KubeApiError as exc:
            log.warning("cannot list the mounter pods: %s", exc)
            return {}
        ready = [p for p in pods if p.ready and not p.deleting and p.metrics_url and p.node]
        out: dict[str, NodeReport] = {}
        for node, report in self.pool.map(self._scrape, ready):
            if report is not None:
                out[node] = report
                for name in report.unmapped:
                    if (node, name) not in self._unmapped_logged:
                        self._unmapped_logged.add((node, name))
                        log.warning("node %s: dataset %r has cache metrics but no single dataset key; "
                                    "not labelled there", node, name)  # fmt: skip
        return out

    def run_once(self) -> int:
        """Measure and write the labels; returns the number of Nodes patched."""
        reports = self.measure()
        for report in reports.values():
            self.dataset_bytes.update(report.sizes)
        live = self.view.live_keys()
        if live is not None:
            live |= {k for r in reports.values() for k in r.cached}
        patched = 0
        for node in self.view.nodes.items():
            meta = node.get("metadata") or {}
            name = str(meta.get("name") or "")
            labels: Mapping[str, str] = meta.get("labels") or {}
            found = reports.get(name)
            cached = None if found is None else held(labels, found.cached)
            patch = label_patch(labels, cached, self.cfg.policy, live)
            if patch is None:
                continue
            try:
                self.view.nodes.put(self.api.patch("Node", "", name, patch))
            except KubeApiError as exc:
                log.warning("node %s: cache labels not written: %s", name, exc)
                continue
            patched += 1
            metrics.NODE_LABEL_PATCHES.inc()
            log.info("node %s: cache labels %s", name, patch["metadata"]["labels"])
        if live is not None:
            self.dataset_bytes = {k: v for k, v in self.dataset_bytes.items() if k in live}
        return patched


def held(labels: Mapping[str, str], mounted: Mapping[str, int]) -> dict[str, int]:
    """What a node holds: its mounts' bytes, and for datasets it labels but does not mount now,
    the bytes its label says (their cache stays on the node's disk)."""
    out = dict(mounted)
    for name, value in labels.items():
        key = key_of_label(name)
        if key is not None and key not in out:
            nbytes = parse_label_value(str(value))
            if nbytes:
                out[key] = nbytes
    return out
