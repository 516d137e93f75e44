"""The Job queue: suspended ``batch/v1`` Jobs admitted in cache-aware order, from Kubernetes objects.

A Job joins queue ``NAME`` with the label ``fluidfs.io/queue: NAME`` and ``spec.suspend: true``
(the webhook sets ``suspend`` for labelled Jobs; a Job created running is reported, never
touched). ``plan_queue`` reads the cluster as JSON objects (Jobs, Nodes, Pods) plus the cache
location model, and returns what the controller must write:

- ``admit``: a JSON merge patch per Job to start it (``spec.suspend: false``, and the
  annotation ``fluidfs.io/admitted-at``);
- ``passed_over``: a merge patch per waiting Job whose pass-over count changed (annotation
  ``fluidfs.io/passed-over``; the count lives on the Job so that a controller restart keeps it);
- ``warm``: datasets to warm before their job starts;
- ``problems``: one line per Job that cannot take part (bad annotation, created running, ...).

Annotations read: ``fluidfs.io/expected-duration`` (``90m``, ``2h``, seconds; for SJF),
``fluidfs.io/passed-over``. Capacity: free ``nvidia.com/gpu`` per node (allocatable minus the
requests of the pods bound there that have not finished, minus the pods of admitted Jobs -- of
any queue -- not yet bound), or ``slots`` concurrently running Jobs of this queue, or both.
Datasets read by running Jobs of any queue count as warm.

Jobs managed by Kueue (label ``kueue.x-k8s.io/queue-name``) are left to Kueue: see
docs/scheduling.md for how the ordering plugs into Kueue instead.

Caveats: only GPU requests are modelled (CPU/memory fit is the scheduler's); unschedulable or
cordoned nodes are left out; taints and the Jobs' own node selectors are not. A Job's pods count
``parallelism`` (default 1), each requesting the larger of its containers' sum and its largest
init container (requests, or limits when requests are absent).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fluidfs.util.sizes import parse_duration

from .locations import CacheLocations
from .ordering import Capacity, DatasetState, JobInfo, OrderingConfig, Plan, WarmIntent, plan
from .resolve import VolumeLookups, dataset_keys, pod_datasets

log = logging.getLogger(__name__)

QUEUE_LABEL = "fluidfs.io/queue"
EXPECTED_DURATION = "fluidfs.io/expected-duration"
PASSED_OVER = "fluidfs.io/passed-over"
ADMITTED_AT = "fluidfs.io/admitted-at"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class QueueConfig:
    name: str
    ordering: OrderingConfig = field(default_factory=OrderingConfig)
    slots: int | None = None
    gpu_resource: str = GPU
    model_gpus: bool = True


@dataclass(frozen=True)
class ClusterState:
    """One observation of the cluster (JSON objects as the API returns them)."""

    jobs: Sequence[Mapping[str, Any]]
    nodes: Sequence[Mapping[str, Any]]
    pods: Sequence[Mapping[str, Any]]
    locations: CacheLocations = field(default_factory=CacheLocations)
    dataset_bytes: Mapping[str, int] = field(default_factory=dict)
    warming: frozenset[str] = frozenset()


@dataclass(frozen=True)
class JobPatch:
    namespace: str
    name: str
    patch: Mapping[str, Any]  # a JSON merge patch of the Job


@dataclass(frozen=True)
class QueuePlan:
    admit: tuple[JobPatch, ...] = ()
    passed_over: tuple[JobPatch, ...] = ()
    warm: tuple[WarmIntent, ...] = ()
    problems: tuple[str, ...] = ()
    decision: Plan = field(default_factory=Plan)


# ---------------------------------------------------------------------------- quantities


_SUFFIX = {"k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_count(value: Any) -> int:
    """A Kubernetes quantity of a countable resource (``"2"``, ``2``, ``"1k"``) as an int."""
    text = str(value).strip()
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * _SUFFIX[suffix])
    return int(float(text))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _container_request(container: Mapping[str, Any], resource: str) -> int:
    res = _mapping(container.get("resources"))
    for kind in ("requests", "limits"):
        got = _mapping(res.get(kind)).get(resource)
        if got is not None:
            return parse_count(got)
    return 0


def pod_request(pod_spec: Mapping[str, Any], resource: str = GPU) -> int:
    """What one pod requests of ``resource`` (the scheduler's effective request)."""
    main = sum(_container_request(_mapping(c), resource) for c in pod_spec.get("containers") or [])
    init = max((_container_request(_mapping(c), resource) for c in pod_spec.get("initContainers") or []), default=0)
    return max(main, init)


def api_time(now: datetime) -> str:
    """``now`` as an API timestamp (``2026-03-01T12:00:00Z``)."""
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: Any) -> float:
    """Seconds since the epoch of an API timestamp (``2026-03-01T12:00:00Z``); 0 if absent."""
    if not isinstance(text, str) or not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _finished(job: Mapping[str, Any]) -> bool:
    for cond in _mapping(job.get("status")).get("conditions") or []:
        cond = _mapping(cond)
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return True
    return False


def _pod_finished(pod: Mapping[str, Any]) -> bool:
    return _mapping(pod.get("status")).get("phase") in ("Succeeded", "Failed")


# ---------------------------------------------------------------------------- capacity


def gpu_capacity(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], resource: str = GPU
) -> tuple[dict[str, int], dict[str, int]]:
    """(free, allocatable) ``resource`` per schedulable node."""
    alloc: dict[str, int] = {}
    for node in nodes:
        meta, spec = _mapping(node.get("metadata")), _mapping(node.get("spec"))
        if spec.get("unschedulable"):
            continue
        amount = _mapping(_mapping(node.get("status")).get("allocatable")).get(resource)
        if amount is not None and isinstance(meta.get("name"), str):
            alloc[meta["name"]] = parse_count(amount)
    free = dict(alloc)
    for pod in pods:
        pod_spec = _mapping(pod.get("spec"))
        bound_to = pod_spec.get("nodeName")
        if isinstance(bound_to, str) and bound_to in free and not _pod_finished(pod):
            free[bound_to] -= pod_request(pod_spec, resource)
    return {n: max(0, g) for n, g in free.items()}, alloc


# ---------------------------------------------------------------------------- jobs


def object_id(job: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of a namespaced object."""
    meta = _mapping(job.get("metadata"))
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def read_annotations(ann: Mapping[str, Any]) -> tuple[float | None, int]:
    """(expected seconds or None, pass-over count) from a queued object's annotations;
    ValueError if either is malformed."""
    expected = None
    if EXPECTED_DURATION in ann:
        expected = parse_duration(str(ann[EXPECTED_DURATION]), EXPECTED_DURATION)
    passed = 0
    if PASSED_OVER in ann:
        text = str(ann[PASSED_OVER])
        if not text.isdigit():
            raise ValueError(f"{PASSED_OVER}: {text!r} is not a count")
        passed = int(text)
    return expected, passed


def job_info(job: Mapping[str, Any], lookups: VolumeLookups, resource: str = GPU) -> JobInfo:
    """A queued Job as the ordering sees it; raises ValueError on a bad annotation."""
    ns, name = object_id(job)
    meta, spec = _mapping(job.get("metadata")), _mapping(job.get("spec"))
    template = _mapping(_mapping(spec.get("template")).get("spec"))
    expected, passed = read_annotations(_mapping(meta.get("annotations")))
    parallelism = spec.get("parallelism")
    pods = 1 if parallelism is None else int(parallelism)
    keys = dataset_keys(pod_datasets(template, ns, lookups))
    return JobInfo(
        name=f"{ns}/{name}",
        submitted=parse_timestamp(meta.get("creationTimestamp")),
        gpus_per_pod=pod_request(template, resource),
        pods=pods,
        expected_seconds=expected,
        datasets=tuple(keys),
        passed_over=passed,
    )


def _bound_pods(pods: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """Per (namespace, job name): the job's pods that are bound to a node and not finished."""
    out: dict[tuple[str, str], int] = {}
    for pod in pods:
        meta, spec = _mapping(pod.get("metadata")), _mapping(pod.get("spec"))
        job = _mapping(meta.get("labels")).get("batch.kubernetes.io/job-name") or _mapping(meta.get("labels")).get(
            "job-name"
        )
        if job and spec.get("nodeName") and not _pod_finished(pod):
            key = (str(meta.get("namespace") or "default"), str(job))
            out[key] = out.get(key, 0) + 1
    return out


def plan_queue(
    state: ClusterState,
    config: QueueConfig,
    lookups: VolumeLookups,
    now: datetime | None = None,
) -> QueuePlan:
    """What to write for queue ``config.name`` in cluster ``state`` (see the module docstring)."""
    now = now or datetime.now(timezone.utc)
    problems: list[str] = []
    pending: list[JobInfo] = []
    running: list[JobInfo] = []
    elsewhere: list[JobInfo] = []  # running Jobs of the other queues: they hold GPUs and read datasets too
    for job in state.jobs:
        labels = _mapping(_mapping(job.get("metadata")).get("labels"))
        if QUEUE_LABEL not in labels or _finished(job):
            continue
        ns, name = object_id(job)
        if labels.get(QUEUE_LABEL) != config.name:
            if _mapping(job.get("spec")).get("suspend") is not True and KUEUE_LABEL not in labels:
                try:
                    elsewhere.append(job_info(job, lookups, config.gpu_resource))
                except ValueError:
                    pass  # its own queue reports it
            continue
        if KUEUE_LABEL in labels:
            problems.append(f"job {ns}/{name}: managed by Kueue ({KUEUE_LABEL}); left to Kueue")
            continue
        try:
            info = job_info(job, lookups, config.gpu_resource)
        except ValueError as e:
            problems.append(f"job {ns}/{name}: {e}")
            continue
        if _mapping(job.get("spec")).get("suspend") is True:
            pending.append(info)
        else:
            running.append(info)
            if ADMITTED_AT not in _mapping(_mapping(job.get("metadata")).get("annotations")):
                problems.append(f"job {ns}/{name}: created without spec.suspend: true; it runs outside the queue order")

    capacity = free_capacity(state, running + elsewhere, config.gpu_resource, config.model_gpus)
    slots = None if config.slots is None else max(0, config.slots - len(running))
    capacity = Capacity(capacity.free_gpus, slots, capacity.total_gpus)
    decision = plan(pending, dataset_state(state, running + elsewhere), capacity, config.ordering)
    for name in decision.unschedulable:
        problems.append(f"job {name}: its pods need more {config.gpu_resource} than any node has; never admitted")
    stamp = api_time(now)
    admit = tuple(
        JobPatch(*_split(name), {"metadata": {"annotations": {ADMITTED_AT: stamp}}, "spec": {"suspend": False}})
        for name in decision.admit
    )
    passed = tuple(
        JobPatch(*_split(name), {"metadata": {"annotations": {PASSED_OVER: str(n)}}})
        for name, n in sorted(decision.passed_over.items())
    )
    return QueuePlan(admit, passed, decision.warm, tuple(problems), decision)


def free_capacity(
    state: ClusterState, running: Sequence[JobInfo], resource: str = GPU, model_gpus: bool = True
) -> Capacity:
    """Free ``resource`` per node (None without ``model_gpus``): allocatable minus the requests of
    unfinished pods bound there, minus the pods of ``running`` jobs not bound yet (as
    ``namespace/name`` of the Job their pods are labelled with)."""
    if not model_gpus:
        return Capacity()
    free_gpus, alloc = gpu_capacity(state.nodes, state.pods, resource)
    capacity = Capacity(free_gpus, None, alloc)
    bound = _bound_pods(state.pods)
    for info in running:
        ns, _, name = info.name.partition("/")
        unbound = max(0, info.pods - bound.get((ns, name), 0))
        if unbound and info.gpus_per_pod > 0 and capacity.free_gpus is not None:
            after = capacity.place(JobInfo(info.name, info.submitted, info.gpus_per_pod, unbound))
            capacity = after if after is not None else Capacity({n: 0 for n in capacity.free_gpus}, None, alloc)
    return capacity


def dataset_state(state: ClusterState, running: Sequence[JobInfo]) -> DatasetState:
    """What the ordering knows of the datasets: cached fractions and where (node labels), sizes,
    which ``running`` jobs read them and with how many GPUs, which are being warmed."""
    fractions: dict[str, float] = {}
    for key, size in state.dataset_bytes.items():
        if size > 0:
            fractions[key] = min(1.0, state.locations.total(key) / size)
    reading = frozenset(d for j in running for d in j.datasets)
    on_nodes = {key: {n: float(b) for n, b in state.locations.nodes(key).items()} for key in state.locations.keys()}
    return DatasetState(
        fractions, reading, state.warming, state.dataset_bytes, _gpu_readers(running), on_nodes=on_nodes
    )


def _gpu_readers(running: Sequence[JobInfo]) -> dict[str, int]:
    """GPUs of running jobs per dataset they read (what a source-aware ordering weighs)."""
    out: dict[str, int] = {}
    for info in running:
        for d in info.datasets:
            out[d] = out.get(d, 0) + max(1, info.gpus_per_pod) * max(1, info.pods)
    return out


def _split(name: str) -> tuple[str, str]:
    ns, _, job = name.partition("/")
    return ns, job
