"""Prometheus metrics of fluidfs-controller (its own registry and endpoint).

Per Dataset (labels ``namespace``, ``dataset``: bounded by the Dataset resources; the series of
a deleted Dataset are removed):

- ``fluidfs_autoscaler_recommended_replicas``: the worker count the autoscaler wants now — what
  an HPA (through a metrics adapter) or KEDA can use to drive the Dataset's scale subresource;
- ``fluidfs_autoscaler_replicas``: the worker count the StatefulSet asks for;
- ``fluidfs_autoscaler_input_bytes_per_second``, ``fluidfs_autoscaler_read_stall_ratio``
  (seconds of read stall per second), ``fluidfs_autoscaler_hit_ratio``,
  ``fluidfs_autoscaler_cache_fill_ratio``: the signals of the last sample (absent when unknown);
- ``fluidfs_autoscaler_decisions_total{direction}``: scaling changes (up, down);
- ``fluidfs_controller_scrape_errors_total``: member endpoints that could not be read.

Controller-wide: ``fluidfs_controller_reconcile_errors_total``,
``fluidfs_controller_reconcile_duration_seconds``, ``fluidfs_controller_leader`` (1 while
this replica holds the lease).

Scheduling (labels bounded by the queue names the controller is started with, and fixed sets):
``fluidfs_controller_queue_admitted_total{queue}``, ``fluidfs_controller_queue_waiting_jobs{queue}``,
``fluidfs_controller_warmups_total`` (warm-up Jobs started), ``fluidfs_controller_node_label_patches_total``,
``fluidfs_controller_webhook_reviews_total{kind, result}`` (kind: pod, job, other; result:
patched, unchanged, error).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fluidfs.control.signals import Sample

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
_DS = ["namespace", "dataset"]
RECOMMENDED = Gauge(
    "fluidfs_autoscaler_recommended_replicas", "Cache workers the autoscaler recommends", _DS, registry=REGISTRY
)
REPLICAS = Gauge("fluidfs_autoscaler_replicas", "Cache workers the StatefulSet asks for", _DS, registry=REGISTRY)
INPUT_RATE = Gauge(
    "fluidfs_autoscaler_input_bytes_per_second",
    "Bytes per second delivered to training processes (last sample)",
    _DS,
    registry=REGISTRY,
)
STALL = Gauge(
    "fluidfs_autoscaler_read_stall_ratio",
    "Seconds of read stall on cache misses per second, summed over readers (last sample)",
    _DS,
    registry=REGISTRY,
)
HIT_RATIO = Gauge(
    "fluidfs_autoscaler_hit_ratio", "Share of the last sample's input not from the source", _DS, registry=REGISTRY
)
FILL = Gauge("fluidfs_autoscaler_cache_fill_ratio", "Cluster cache bytes used / capacity", _DS, registry=REGISTRY)
DECISIONS = Counter(
    "fluidfs_autoscaler_decisions_total", "Scaling changes made", [*_DS, "direction"], registry=REGISTRY
)
SCRAPE_ERRORS = Counter(
    "fluidfs_controller_scrape_errors_total", "Member metrics endpoints that could not be read", _DS, registry=REGISTRY
)
RECONCILE_ERRORS = Counter(
    "fluidfs_controller_reconcile_errors_total", "Reconcile passes of a Dataset that failed", registry=REGISTRY
)
RECONCILE_SECONDS = Histogram(
    "fluidfs_controller_reconcile_duration_seconds",
    "Time of one reconcile pass over one Dataset",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
LEADER = Gauge("fluidfs_controller_leader", "1 while this replica is the leader", registry=REGISTRY)
QUEUE_ADMITTED = Counter(
    "fluidfs_controller_queue_admitted_total", "Jobs the queue admitted (unsuspended)", ["queue"], registry=REGISTRY
)
QUEUE_WAITING = Gauge(
    "fluidfs_controller_queue_waiting_jobs", "Suspended Jobs waiting in the queue", ["queue"], registry=REGISTRY
)
KUEUE_READY = Counter(
    "fluidfs_controller_kueue_ready_total",
    "Kueue Workloads whose fluidfs admission check was set Ready",
    registry=REGISTRY,
)
KUEUE_WAITING = Gauge(
    "fluidfs_controller_kueue_waiting_workloads",
    "Kueue Workloads with quota reserved waiting for the fluidfs admission check",
    registry=REGISTRY,
)
WARMUPS = Counter("fluidfs_controller_warmups_total", "Warm-up Jobs started for queued Jobs", registry=REGISTRY)
NODE_LABEL_PATCHES = Counter(
    "fluidfs_controller_node_label_patches_total", "Nodes whose cache.fluidfs.io labels were written", registry=REGISTRY
)
WEBHOOK_REVIEWS = Counter(
    "fluidfs_controller_webhook_reviews_total",
    "Admission reviews answered (always allowed)",
    ["kind", "result"],
    registry=REGISTRY,
)

_PER_DATASET = (RECOMMENDED, REPLICAS, INPUT_RATE, STALL, HIT_RATIO, FILL, SCRAPE_ERRORS)
_SIGNALS = (INPUT_RATE, STALL, HIT_RATIO, FILL)


def record(namespace: str, dataset: str, recommended: int, replicas: int, sample: Sample | None) -> None:
    """Export one Dataset's decision and signals."""
    RECOMMENDED.labels(namespace, dataset).set(recommended)
    REPLICAS.labels(namespace, dataset).set(replicas)
    values = (sample.delivered_bps, sample.stall, sample.hit_ratio, sample.fill) if sample else (None, None, None, None)
    for gauge, value in zip(_SIGNALS, values, strict=True):
        if value is None:
            _remove(gauge, namespace, dataset)
        else:
            gauge.labels(namespace, dataset).set(value)


def _remove(metric: Gauge | Counter, namespace: str, dataset: str) -> None:
    try:
        metric.remove(namespace, dataset)
    except KeyError:
        pass


def forget(namespace: str, dataset: str) -> None:
    """Drop every series of a deleted Dataset."""
    for metric in _PER_DATASET:
        _remove(metric, namespace, dataset)
    for direction in ("up", "down"):
        try:
            DECISIONS.remove(namespace, dataset, direction)
        except KeyError:
            pass


def serve(addr: str) -> tuple[str, int]:
    """Serve /metrics on ``HOST:PORT`` (port 0: any free port); returns the bound address."""
    host, _, port = addr.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
    bound = server.server_address
    log.info("controller metrics on http://%s:%d/metrics", bound[0], bound[1])
    return str(bound[0]), int(bound[1])
