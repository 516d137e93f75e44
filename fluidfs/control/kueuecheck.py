"""The Kueue AdmissionCheck run by fluidfs-controller: ``sched.kueue.plan_checks`` over the cached cluster, applied.

Every ``interval`` seconds the leader builds a ``ClusterState`` from its caches
(``fluidfs.control.informer``: Workloads, AdmissionChecks, Nodes, unfinished Pods; where each
dataset is cached from the Nodes' labels; the datasets' sizes the mounters reported) and writes
what ``plan_checks`` decides:

- each AdmissionCheck of ours that is not ``Active`` gets its ``Active=True`` condition;
- each Workload to start gets its ``admissionChecks`` entry ``Ready`` (a conditional status
  patch; a 409 -- the Workload changed since it was listed -- is retried on the next pass, after
  the next list) and a Normal ``Ready`` event;
- each waiting Workload whose pass-over count changed gets its ``fluidfs.io/passed-over``
  annotation;
- each problem becomes one Warning event on its Workload (once per Workload and problem text).

Every Workload the controller patches is put back into the cache from the API's answer, so a
Workload set Ready holds its GPUs for the next pass. Nothing is set Ready while the Workload,
Node or Pod lists have never succeeded.

Caveats: no warm-ups for Workloads (the Job queue's warm-up Jobs copy a Job's volumes; a
Workload's owner may be any kind Kueue integrates); the Kueue API version is ``v1beta1``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from fluidfs.control import metrics, objects
from fluidfs.control.adapter import KubeApi, Obj
from fluidfs.control.informer import ClusterView
from fluidfs.control.sched.kueue import API_VERSION, CONTROLLER_NAME, CheckConfig, CheckPlan, Patch, plan_checks
from fluidfs.control.sched.ordering import OrderingConfig
from fluidfs.control.sched.queue import GPU, ClusterState
from fluidfs.errors import KubeApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KueueSettings:
    ordering: OrderingConfig = field(default_factory=OrderingConfig)
    gpu_resource: str = GPU
    controller_name: str = CONTROLLER_NAME
    interval: float = 5.0


class KueueChecks:
    """Serves the AdmissionChecks whose ``controllerName`` is ours (see the module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        view: ClusterView,
        settings: KueueSettings,
        *,
        dataset_bytes: Callable[[], Mapping[str, int]] = dict,
        identity: str = objects.MANAGER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if view.workloads is None or view.admission_checks is None or view.pods is None:
            raise ValueError("the Kueue check needs the view's Workload, AdmissionCheck and Pod caches")
        self.api = api
        self.view = view
        self.settings = settings
        self.dataset_bytes = dataset_bytes
        self.identity = identity
        self.clock = clock
        self._next = 0.0
        self._reported: dict[str, set[str]] = {}  # "ns/name" -> problems already reported

    def due(self) -> float:
        return max(0.0, self._next - self.clock())

    def run_if_due(self) -> CheckPlan | None:
        if self.clock() < self._next:
            return None
        self._next = self.clock() + self.settings.interval
        return self.run_once()

    def run_once(self, now: datetime | None = None) -> CheckPlan | None:
        """Plan and apply once; the plan (for tests and logs), None while the caches are not listed."""
        w, ac, pods = self.view.workloads, self.view.admission_checks, self.view.pods
        assert w is not None and ac is not None and pods is not None
        if not all(c.listed for c in (w, ac, self.view.nodes, pods)):
            log.info("kueue check: waiting for the first lists of Workloads, AdmissionChecks, Nodes and Pods")
            return None
        state = ClusterState(
            jobs=(),
            nodes=self.view.nodes.items(),
            pods=pods.items(),
            locations=self.view.locations(),
            dataset_bytes=dict(self.dataset_bytes()),
        )
        s = self.settings
        cfg = CheckConfig(s.ordering, s.gpu_resource, s.controller_name)
        workloads = w.items()
        plan = plan_checks(state, workloads, ac.items(), cfg, self.view, now)
        self._apply(plan, {_key(o): o for o in workloads})
        return plan

    def _patch(self, p: Patch, subresource: str = "") -> Obj | None:
        try:
            obj = self.api.patch(p.kind, p.namespace, p.name, dict(p.patch), subresource)
        except KubeApiError as exc:
            level = logging.INFO if exc.status == 409 else logging.WARNING
            log.log(level, "%s %s: patch failed (retried next pass): %s", p.kind, _name(p), exc)
            return None
        cache = self.view.workloads if p.kind == "Workload" else self.view.admission_checks
        assert cache is not None
        cache.put(obj)
        return obj

    def _apply(self, plan: CheckPlan, by_key: Mapping[str, Mapping[str, object]]) -> None:
        for p in plan.activate:
            if self._patch(p, "status") is not None:
                log.info("kueue check: AdmissionCheck %s is active", p.name)
        ready = 0
        for p in plan.ready:
            obj = self._patch(p, "status")
            if obj is None:
                continue
            ready += 1
            metrics.KUEUE_READY.inc()
            log.info("kueue check: workload %s ready", _name(p))
            self._event(obj, "Ready", "fluidfs cache-aware admission check is Ready", "Admit")
        for p in plan.passed_over:
            self._patch(p)
        for line in plan.problems:
            key = line.split(":", 1)[0].removeprefix("workload ").strip()
            if line in self._reported.setdefault(key, set()):
                continue
            self._reported[key].add(line)
            log.warning("kueue check: %s", line)
            wl = by_key.get(key)
            if wl is not None:
                self._event(wl, "NotOrdered", line.split(": ", 1)[-1], "Order", warning=True)
        self._reported = {k: v for k, v in self._reported.items() if k in by_key}
        metrics.KUEUE_WAITING.set(plan.waiting + len(plan.ready) - ready)

    def _event(self, wl: Mapping[str, object], reason: str, note: str, action: str, warning: bool = False) -> None:
        meta = wl.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        ref = {"namespace": str(meta.get("namespace") or "default"), "name": str(meta.get("name") or ""),
               "uid": str(meta.get("uid") or "")}  # fmt: skip
        self.api.emit(objects.event(ref, reason, note, action, self.identity, warning, kind="Workload",
                                    api_version=API_VERSION))  # fmt: skip


def _key(obj: Mapping[str, object]) -> str:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


def _name(p: Patch) -> str:
    return f"{p.namespace}/{p.name}" if p.namespace else p.name
