"""The Job queues run by fluidfs-controller: ``sched.queue.plan_queue`` over the cached cluster, its patches applied.

Every ``interval`` seconds, for each configured queue name (``fluidfs.io/queue: NAME`` on the
Jobs), the controller builds a ``ClusterState`` from its caches (``fluidfs.control.informer``:
the queue's Jobs, Nodes, unfinished Pods; where each dataset is cached from the Nodes' labels;
the datasets' sizes the mounters reported; the datasets being warmed) and writes what
``plan_queue`` decides:

- each admitted Job gets its merge patch (``spec.suspend: false`` and ``fluidfs.io/admitted-at``)
  and a Normal ``Admitted`` event;
- each waiting Job whose pass-over count changed gets its ``fluidfs.io/passed-over`` annotation;
- each warm intent starts a warm-up Job (``fluidfs.control.warm``) when warm-ups are enabled;
- each problem becomes one Warning event on its Job (once per Job and problem text).

Queues are planned one after another from the same caches, and every Job the controller patches
is put back into the cache from the API's answer, so a Job admitted by one queue holds its GPUs
for the next queue and for the next pass.  A patch that fails is retried on the next pass (the
Job is still suspended); nothing is admitted while the Job, Node or Pod lists have never
succeeded.

Caveats: capacity is GPUs per node and/or a slot count (``sched.queue``); the cached Pods may be
up to one pod period old, so a Job that ended a few seconds ago still holds its GPUs (admission
errs on the side of waiting).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fluidfs.control import metrics, objects, warm
from fluidfs.control.adapter import KubeApi, Obj
from fluidfs.control.informer import WARM_LABEL, ClusterView
from fluidfs.control.sched.ordering import OrderingConfig
from fluidfs.control.sched.queue import GPU, QUEUE_LABEL, ClusterState, QueueConfig, QueuePlan, plan_queue
from fluidfs.errors import KubeApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueSettings:
    names: tuple[str, ...]
    ordering: OrderingConfig = field(default_factory=OrderingConfig)
    slots: int | None = None
    gpu_resource: str = GPU
    model_gpus: bool = True
    interval: float = 5.0


class JobQueues:
    """Runs every configured queue (see the module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        view: ClusterView,
        settings: QueueSettings,
        *,
        warm_config: warm.WarmConfig | None = None,
        dataset_bytes: Callable[[], Mapping[str, int]] = dict,
        identity: str = objects.MANAGER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if view.jobs is None or view.warm_jobs is None or view.pods is None:
            raise ValueError("the Job queue needs the view's Job and Pod caches")
        self.api = api
        self.view = view
        self.settings = settings
        self.warm_config = warm_config
        self.dataset_bytes = dataset_bytes
        self.identity = identity
        self.clock = clock
        self._next = 0.0
        self._reported: dict[str, set[str]] = {}  # "ns/name" -> problems already reported

    def due(self) -> float:
        return max(0.0, self._next - self.clock())

    def run_if_due(self) -> list[QueuePlan]:
        if self.clock() < self._next:
            return []
        self._next = self.clock() + self.settings.interval
        return self.run_once()

    def _state(self) -> ClusterState:
        assert self.view.jobs is not None and self.view.pods is not None and self.view.warm_jobs is not None
        warming = frozenset(
            str((j.get("metadata") or {}).get("labels", {}).get(WARM_LABEL, ""))
            for j in self.view.warm_jobs.items()
            if warm.active(j)
        )
        return ClusterState(
            jobs=self.view.jobs.items(),
            nodes=self.view.nodes.items(),
            pods=self.view.pods.items(),
            locations=self.view.locations(),
            dataset_bytes=dict(self.dataset_bytes()),
            warming=warming - {""},
        )

    def run_once(self, now: datetime | None = None) -> list[QueuePlan]:
        """Plan and apply every queue once; returns the plans (for tests and logs)."""
        caches = [self.view.jobs, self.view.nodes, self.view.pods]
        if not all(c is not None and c.listed for c in caches):
            log.info("job queues: waiting for the first lists of Jobs, Nodes and Pods")
            return []
        plans = []
        present: set[str] = set()
        for name in self.settings.names:
            cfg = QueueConfig(name, self.settings.ordering, self.settings.slots, self.settings.gpu_resource,
                              self.settings.model_gpus)  # fmt: skip
            state = self._state()
            plan = plan_queue(state, cfg, self.view, now)
            self._apply(name, plan, state)
            plans.append(plan)
            present |= {_job_key(j) for j in state.jobs}
        self._reported = {k: v for k, v in self._reported.items() if k in present}
        return plans

    # ------------------------------------------------------------------------------ writes

    def _patch_job(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Obj | None:
        assert self.view.jobs is not None
        try:
            obj = self.api.patch("Job", namespace, name, dict(patch))
        except KubeApiError as exc:
            log.warning("job %s/%s: patch failed (retried next pass): %s", namespace, name, exc)
            return None
        self.view.jobs.put(obj)
        return obj

    def _apply(self, queue: str, plan: QueuePlan, state: ClusterState) -> None:
        by_key = {_job_key(j): j for j in state.jobs}
        for p in plan.admit:
            obj = self._patch_job(p.namespace, p.name, p.patch)
            if obj is None:
                continue
            metrics.QUEUE_ADMITTED.labels(queue).inc()
            log.info("queue %s: admitted job %s/%s", queue, p.namespace, p.name)
            self._event(obj, "Admitted", f"admitted by the fluidfs queue {queue}", "Admit")
        for p in plan.passed_over:
            self._patch_job(p.namespace, p.name, p.patch)
        for intent in plan.warm:
            job = by_key.get(intent.job)
            if job is not None:
                self._warm(job, intent.dataset)
        for line in plan.problems:
            key = line.split(":", 1)[0].removeprefix("job ").strip()
            if line in self._reported.setdefault(key, set()):
                continue
            self._reported[key].add(line)
            log.warning("queue %s: %s", queue, line)
            job = by_key.get(key)
            if job is not None:
                self._event(job, "NotQueued", line.split(": ", 1)[-1], "Queue", warning=True)
        pending = sum(
            1
            for j in state.jobs
            if (j.get("metadata") or {}).get("labels", {}).get(QUEUE_LABEL) == queue
            and (j.get("spec") or {}).get("suspend") is True
        )
        metrics.QUEUE_WAITING.labels(queue).set(max(0, pending - len(plan.admit)))

    def _warm(self, job: Mapping[str, Any], key: str) -> None:
        if self.warm_config is None:
            return
        meta = job.get("metadata") or {}
        try:
            volumes = warm.dataset_volumes(job, key, self.view)
        except KubeApiError as exc:
            log.warning("job %s/%s: cannot resolve its volumes to warm %s: %s", meta.get("namespace"),
                        meta.get("name"), key, exc)  # fmt: skip
            return
        if not volumes:
            return
        obj = warm.warm_job(job, key, volumes, self.warm_config)
        try:
            created = self.api.create(obj)
        except KubeApiError as exc:
            if exc.status != 409:  # 409: warmed within the warm-up's ttl already
                log.warning("dataset %s: warm-up Job not created: %s", key, exc)
            return
        assert self.view.warm_jobs is not None
        self.view.warm_jobs.put(created)
        metrics.WARMUPS.inc()
        log.info("dataset %s: warm-up Job %s/%s started for job %s", key, obj["metadata"]["namespace"],
                 obj["metadata"]["name"], meta.get("name"))  # fmt: skip
        self._event(job, "Warming", f"warming dataset {key} (Job {obj['metadata']['name']}) before it starts",
                    "Warm")  # fmt: skip

    def _event(self, job: Mapping[str, Any], reason: str, note: str, action: str, warning: bool = False) -> None:
        meta = job.get("metadata") or {}
        ref = {"namespace": str(meta.get("namespace") or "default"), "name": str(meta.get("name") or ""),
               "uid": str(meta.get("uid") or "")}  # fmt: skip
        self.api.emit(objects.event(ref, reason, note, action, self.identity, warning, kind="Job",
                                    api_version="batch/v1"))  # fmt: skip


def _job_key(job: Mapping[str, Any]) -> str:
    meta = job.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
