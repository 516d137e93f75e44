"""Prometheus metrics of the CSI plugin (its own registry; each fluidfs mount exports its own).

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
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge

from fluidfs.util import prom

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
