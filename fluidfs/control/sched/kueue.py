"""Kueue AdmissionCheck ``fluidfs.io/cache-aware``: Kueue's Workloads admitted in cache-aware order.

Kueue keeps quota, fairness, preemption and multi-tenancy; this module only decides *when* a
Workload that already holds quota may start. A ClusterQueue lists an ``AdmissionCheck`` whose
``spec.controllerName`` is ``fluidfs.io/cache-aware``; Kueue reserves quota for a Workload, adds
the check to ``status.admissionChecks`` as ``Pending`` and admits the Workload once every check
is ``Ready``. ``plan_checks`` reads the cluster as JSON objects and returns what to write:

- ``activate``: a status merge patch per AdmissionCheck of ours without ``Active=True`` (Kueue
  keeps a ClusterQueue inactive until each of its checks is active);
- ``ready``: a status merge patch per Workload to start now: its ``admissionChecks`` list with
  our entry ``Ready`` and every other entry as read, conditional on the ``resourceVersion`` read
  (a JSON merge patch replaces the list; the condition makes a concurrent change of another
  check's entry a 409, retried on the next pass, instead of a lost update);
- ``passed_over``: a merge patch of the annotation ``fluidfs.io/passed-over`` per waiting
  Workload whose count changed;
- ``problems``: one line per Workload that cannot take part.

The order is ``ordering.plan``'s, the Job queue's decision function: per ClusterQueue (sorted by
name), over the Workloads with quota reserved (``QuotaReserved=True``), not finished, whose
entry of one of our checks is ``Pending``; the free GPUs per node are shared by the
ClusterQueues, each taking what it admits before the next is planned. A Workload's pods are its
podSets' pods that request the most GPUs (a launcher without GPUs is not counted); its datasets
are those of every podSet's volumes; ``fluidfs.io/expected-duration`` is read from the Workload's
annotations or else its first pod template's. Workloads admitted (``Admitted=True``) or whose
entry of our check is ``Ready`` count as running: they read their datasets, and the pods of a
Job-owned one that are not bound yet (found by ``batch.kubernetes.io/job-name``) hold GPUs; the
pods of other owners (JobSet, Kubeflow jobs, ...) count once bound, like any pod.

A Workload whose pods need more GPUs than any node has is set ``Ready`` unordered (reported):
nodes may yet be added, and holding quota for it forever would starve its ClusterQueue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .ordering import JobInfo, OrderingConfig, Plan, plan
from .queue import (
    GPU,
    PASSED_OVER,
    ClusterState,
    api_time,
    dataset_state,
    free_capacity,
    object_id,
    parse_timestamp,
    pod_request,
    read_annotations,
)
from .resolve import VolumeLookups, dataset_keys, pod_datasets

CONTROLLER_NAME = "fluidfs.io/cache-aware"
API_VERSION = "kueue.x-k8s.io/v1beta1"


@dataclass(frozen=True)
class CheckConfig:
    ordering: OrderingConfig = field(default_factory=OrderingConfig)
    gpu_resource: str = GPU
    controller_name: str = CONTROLLER_NAME


@dataclass(frozen=True)
class Patch:
    kind: str  # "Workload" or "AdmissionCheck"
    namespace: str  # "" for an AdmissionCheck
    name: str
    patch: Mapping[str, Any]  # a JSON merge patch (of the status subresource for ``activate`` and ``ready``)


@dataclass(frozen=True)
class CheckPlan:
    activate: tuple[Patch, ...] = ()
    ready: tuple[Patch, ...] = ()
    passed_over: tuple[Patch, ...] = ()
    problems: tuple[str, ...] = ()
    waiting: int = 0
    decisions: Mapping[str, Plan] = field(default_factory=dict)  # per ClusterQueue


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _condition(obj: Mapping[str, Any], kind: str) -> bool:
    return any(
        _mapping(c).get("type") == kind and _mapping(c).get("status") == "True"
        for c in _mapping(obj.get("status")).get("conditions") or []
    )


def our_checks(
    checks: Iterable[Mapping[str, Any]], controller_name: str = CONTROLLER_NAME
) -> dict[str, Mapping[str, Any]]:
    """The AdmissionChecks this controller serves, by name."""
    out: dict[str, Mapping[str, Any]] = {}
    for ac in checks:
        if _mapping(ac.get("spec")).get("controllerName") == controller_name:
            out[str(_mapping(ac.get("metadata")).get("name") or "")] = ac
    return out


def activate_patch(check: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """The status patch that marks ``check`` Active, or None if it already is."""
    if _condition(check, "Active"):
        return None
    others = [c for c in _mapping(check.get("status")).get("conditions") or [] if _mapping(c).get("type") != "Active"]
    active = {
        "type": "Active",
        "status": "True",
        "reason": "Active",
        "message": "fluidfs-controller orders the Workloads of this check by where their datasets are cached",
        "lastTransitionTime": api_time(now),
        "observedGeneration": int(_mapping(check.get("metadata")).get("generation") or 0),
    }
    return {"status": {"conditions": [*others, active]}}


def _our_entry(workload: Mapping[str, Any], ours: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for entry in _mapping(workload.get("status")).get("admissionChecks") or []:
        if _mapping(entry).get("name") in ours:
            return _mapping(entry)
    return None


def owner_job(workload: Mapping[str, Any]) -> str:
    """The name of the batch/v1 Job that owns ``workload`` ("" if none does)."""
    for ref in _mapping(workload.get("metadata")).get("ownerReferences") or []:
        ref = _mapping(ref)
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/") and ref.get("name"):
            return str(ref["name"])
    return ""


def workload_info(workload: Mapping[str, Any], lookups: VolumeLookups, resource: str = GPU) -> JobInfo:
    """A Workload as the ordering sees it (named after the Job that owns it, if one does, so
    that its pods are found); raises ValueError on a bad annotation."""
    ns, name = object_id(workload)
    meta = _mapping(workload.get("metadata"))
    podsets = [_mapping(p) for p in _mapping(workload.get("spec")).get("podSets") or []]
    templates = [_mapping(p.get("template")) for p in podsets]
    ann = dict(_mapping(_mapping(templates[0].get("metadata")).get("annotations")) if templates else {})
    ann.update(_mapping(meta.get("annotations")))
    expected, passed = read_annotations(ann)
    requests = [pod_request(_mapping(t.get("spec")), resource) for t in templates]
    most = max(requests, default=0)
    pods = sum(int(p.get("count") or 1) for p, r in zip(podsets, requests, strict=True) if r == most) or 1
    keys: list[str] = []
    for t in templates:
        keys.extend(dataset_keys(pod_datasets(_mapping(t.get("spec")), ns, lookups)))
    return JobInfo(
        name=f"{ns}/{owner_job(workload) or name}",
        submitted=parse_timestamp(meta.get("creationTimestamp")),
        gpus_per_pod=most,
        pods=pods,
        expected_seconds=expected,
        datasets=tuple(dict.fromkeys(keys)),
        passed_over=passed,
    )


def _ready_patch(workload: Mapping[str, Any], ours: Mapping[str, Any], message: str, now: datetime) -> dict[str, Any]:
    entries = []
    for entry in _mapping(workload.get("status")).get("admissionChecks") or []:
        entry = dict(_mapping(entry))
        if entry.get("name") in ours and entry.get("state") == "Pending":
            entry.update(state="Ready", message=message, lastTransitionTime=api_time(now))
        entries.append(entry)
    rv = _mapping(workload.get("metadata")).get("resourceVersion")
    return {"metadata": {"resourceVersion": rv}, "status": {"admissionChecks": entries}}


def plan_checks(
    state: ClusterState,
    workloads: Sequence[Mapping[str, Any]],
    checks: Sequence[Mapping[str, Any]],
    config: CheckConfig,
    lookups: VolumeLookups,
    now: datetime | None = None,
) -> CheckPlan:
    """What to write for the Workloads waiting for our checks (see the module docstring)."""
    now = now or datetime.now(timezone.utc)
    ours = our_checks(checks, config.controller_name)
    activate = tuple(
        Patch("AdmissionCheck", "", name, p) for name, ac in sorted(ours.items()) if (p := activate_patch(ac, now))
    )
    problems: list[str] = []
    ready: list[Patch] = []
    pending: dict[str, list[tuple[JobInfo, Mapping[str, Any]]]] = {}  # ClusterQueue -> waiting
    running: list[JobInfo] = []
    with_pods: list[JobInfo] = []  # running and owned by a Job: its pods (job-name label) are known
    for wl in workloads:
        if _condition(wl, "Finished"):
            continue
        entry = _our_entry(wl, ours)
        admitted = _condition(wl, "Admitted") or (entry is not None and entry.get("state") == "Ready")
        waiting = entry is not None and entry.get("state") == "Pending" and _condition(wl, "QuotaReserved")
        if not admitted and not waiting:
            continue
        ns, name = object_id(wl)
        try:
            info = workload_info(wl, lookups, config.gpu_resource)
        except ValueError as e:
            if waiting:
                problems.append(f"workload {ns}/{name}: {e}; set Ready unordered")
                ready.append(Patch("Workload", ns, name, _ready_patch(wl, ours, "fluidfs: not ordered", now)))
            continue
        if admitted:
            running.append(info)
            if owner_job(wl):
                with_pods.append(info)
        else:
            cq = str(_mapping(_mapping(wl.get("status")).get("admission")).get("clusterQueue") or "")
            pending.setdefault(cq, []).append((info, wl))

    capacity = free_capacity(state, with_pods, config.gpu_resource)
    dstate = dataset_state(state, running)
    passed: list[Patch] = []
    decisions: dict[str, Plan] = {}
    for cq in sorted(pending):
        by_name = {info.name: (info, wl) for info, wl in pending[cq]}
        decision = plan([info for info, _ in pending[cq]], dstate, capacity, config.ordering)
        decisions[cq] = decision
        for job_name in (*decision.admit, *decision.unschedulable):
            info, wl = by_name[job_name]
            ns, name = object_id(wl)
            if job_name in decision.unschedulable:
                problems.append(f"workload {ns}/{name}: its pods need more {config.gpu_resource} than any node has; "
                                "set Ready unordered")  # fmt: skip
                message = "fluidfs: not ordered (larger than any node)"
            else:
                message = "fluidfs: admitted in cache-aware order"
                after = capacity.place(info)
                capacity = after if after is not None else capacity
            ready.append(Patch("Workload", ns, name, _ready_patch(wl, ours, message, now)))
        for job_name, count in sorted(decision.passed_over.items()):
            ns, name = object_id(by_name[job_name][1])
            passed.append(Patch("Workload", ns, name, {"metadata": {"annotations": {PASSED_OVER: str(count)}}}))
    started = sum(len(d.admit) + len(d.unschedulable) for d in decisions.values())
    still = sum(len(v) for v in pending.values()) - started
    return CheckPlan(activate, tuple(ready), tuple(passed), tuple(problems), still, decisions)
