"""fluidfs-controller's loop: each Dataset reconciled, sampled, scaled and reported.

One pass (:meth:`Controller.run_once`) lists the Dataset resources and, for each:

1. deletion: a Dataset being deleted has its objects deleted, its memory and metric series
   dropped, and the controller's finalizer removed (``ownerReferences`` make the garbage
   collector delete the objects too, should the controller be away);
2. adds the finalizer, parses the resource (``resource.parse``; an invalid one gets phase
   ``Failed``, the message and one Warning event per generation);
3. creates or repairs its objects (``objects.desired`` + ``reconcile.plan``);
4. when its sampling interval is due: scrapes its members' metrics endpoints (worker pods, and
   node plugin pods that hold its mounts) in parallel, turns them into a ``signals.Sample``,
   asks the autoscaler, and scales the StatefulSet through the scale subresource, with an
   Event for every change;
5. patches the status when it changed.

Everything goes through the ``KubeApi`` adapter; the per-Dataset memory (signal history,
autoscaler state) lives in this process only: after a restart, the autoscaler starts again
from the StatefulSet's replica count.

Cache-aware scheduling (``fluidfs.control.scheduling``, optional): every replica refreshes its
caches in the loop (its admission webhook answers from them); the leader also writes the node
labels and runs the Job queues, after the Datasets of a pass.

Threads: scrapes run in a bounded ``ThreadPoolExecutor``; the loop itself is one thread
(``run``), stopped by a ``threading.Event``; the webhook serves from threads of its own.
Nothing here is async.

Caveats: Datasets are processed one after another in a pass; a slow API server or many
Datasets lengthen the pass (the scrape of one Dataset is bounded by ``scrape_timeout``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from fluidfs.control import autoscaler, metrics, objects, reconcile, resource, signals
from fluidfs.control.adapter import KubeApi, Obj, PodInfo
from fluidfs.control.leader import LeaderElector
from fluidfs.control.resource import DatasetResource, Meta
from fluidfs.control.scheduling import Scheduling
from fluidfs.errors import KubeApiError, ScrapeError, SpecError

log = logging.getLogger(__name__)

FINALIZER = "fluidfs.io/cache-workers"


@dataclass(frozen=True)
class ControllerConfig:
    namespace: str | None = None  # watch one namespace, or all
    worker: objects.WorkerConfig = field(default_factory=objects.WorkerConfig)
    client_namespace: str = ""  # where the pods holding the mounts (node plugins) run; "" = none
    client_selector: Mapping[str, str] = field(default_factory=dict)
    scrape_timeout: float = 5.0
    scrape_threads: int = 8
    history: int = 240  # samples kept per Dataset
    identity: str = objects.MANAGER  # Events' reportingInstance, the Lease holder
    resync: float = 5.0  # longest sleep between two passes


@dataclass
class _Memory:
    """What the controller remembers of one Dataset (by uid)."""

    uid: str
    generation: int = -1
    resource: DatasetResource | None = None
    error: str = ""
    reported_generation: int = -1  # of the last InvalidSpec/Conflict event
    snapshots: dict[str, signals.MemberSnapshot] = field(default_factory=dict)
    history: deque[signals.Sample] = field(default_factory=deque)
    state: autoscaler.State | None = None
    shadow: autoscaler.State | None = None  # training-speed advice under the manual policy
    decision: autoscaler.Decision | None = None
    recommended: int | None = None
    last_scaling: Obj | None = None
    next_sample: float = 0.0
    sampled_at: str = ""
    last_status: Obj | None = None


def _now_text() -> str:
    return objects.rfc3339(datetime.now(timezone.utc))


class Controller:
    """Reconciles every Dataset through ``api``; ``clock`` is monotonic seconds."""

    def __init__(
        self,
        api: KubeApi,
        cfg: ControllerConfig,
        clock: Callable[[], float] = time.monotonic,
        scheduling: Scheduling | None = None,
    ) -> None:
        self.api = api
        self.cfg = cfg
        self.clock = clock
        self.scheduling = scheduling
        self._mem: dict[str, _Memory] = {}  # namespace/name -> memory
        self._pool = ThreadPoolExecutor(max_workers=cfg.scrape_threads, thread_name_prefix="fluidfs-scrape")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event, elector: LeaderElector | None = None) -> None:
        """Reconcile until ``stop`` is set (leading only while ``elector`` says so)."""
        try:
            while not stop.is_set():
                wait = self.cfg.resync
                if self.scheduling is not None:  # every replica: its webhook answers from these caches
                    wait = min(wait, self.scheduling.refresh())
                leading = elector is None or elector.acquire_or_renew()
                metrics.LEADER.set(1 if leading else 0)
                if leading:
                    try:
                        wait = min(wait, self.run_once())
                    except KubeApiError as exc:
                        log.warning("listing Datasets failed: %s", exc)
                    if self.scheduling is not None:
                        wait = min(wait, self.scheduling.run_leader())
                else:
                    self._mem.clear()  # a new leader starts from the cluster's state
                stop.wait(max(0.05, wait))
        finally:
            if elector is not None:
                elector.release()
            metrics.LEADER.set(0)

    def run_once(self) -> float:
        """One pass over every Dataset; returns the seconds until the next sample is due."""
        seen: set[str] = set()
        for obj in self.api.list_datasets(self.cfg.namespace):
            meta = resource.meta_of(obj)
            seen.add(meta.key)
            t0 = time.perf_counter()
            try:
                self.reconcile(obj)
            except KubeApiError as exc:
                metrics.RECONCILE_ERRORS.inc()
                log.warning("Dataset %s: reconcile failed: %s", meta.key, exc)
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                log.exception("Dataset %s: reconcile failed", meta.key)
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - t0)
        for key in set(self._mem) - seen:  # deleted while we were away: nothing left to do
            namespace, _, name = key.partition("/")
            metrics.forget(namespace, name)
            del self._mem[key]
        now = self.clock()
        return min((max(0.0, m.next_sample - now) for m in self._mem.values()), default=self.cfg.resync)

    # ------------------------------------------------------------------------------ one Dataset

    def reconcile(self, obj: Obj) -> None:
        meta = resource.meta_of(obj)
        mem = self._mem.get(meta.key)
        if mem is None or mem.uid != meta.uid:
            mem = self._mem[meta.key] = _Memory(meta.uid, history=deque(maxlen=self.cfg.history))
        if meta.deleting:
            self._finalize(meta)
            return
        if FINALIZER not in meta.finalizers:
            finalizers = [*meta.finalizers, FINALIZER]
            patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.resource_version}}
            self.api.patch_dataset(meta.namespace, meta.name, patch)
        old_status: Mapping[str, Any] = obj.get("status") or {}
        old_conditions = old_status.get("conditions") or []
        if mem.generation != meta.generation:
            mem.generation = meta.generation
            try:
                mem.resource, mem.error = resource.parse(obj), ""
            except SpecError as exc:
                mem.resource, mem.error = None, str(exc)
        res = mem.resource
        if res is None:
            self._fail(meta, mem, mem.error, "InvalidSpec", old_conditions)
            return
        sts = self._apply(res, mem, old_conditions)
        if sts is None:
            return
        now = self.clock()
        if now >= mem.next_sample:
            mem.next_sample = now + res.params.interval
            self._sample_and_scale(res, mem, sts, now)
            sts = self.api.get("StatefulSet", res.namespace, objects.base_name(res.name)) or sts
        status = reconcile.status(
            generation=res.generation,
            policy=res.params.policy,
            selector=objects.selector_string(res),
            sts=sts,
            decision=mem.decision,
            recommended=mem.recommended,
            sample=mem.history[-1] if mem.history else None,
            last_scaling=mem.last_scaling,
            warnings=res.warnings,
            old_conditions=old_conditions,
            now=mem.sampled_at or _now_text(),
        )
        self._patch_status(meta, mem, status)

    def _fail(self, meta: Meta, mem: _Memory, message: str, reason: str, old_conditions: Any) -> None:
        if mem.reported_generation != meta.generation:
            mem.reported_generation = meta.generation
            log.warning("Dataset %s: %s", meta.key, message)
            self._event(meta, reason, message, "Reconcile", warning=True)
        metrics.forget(meta.namespace, meta.name)
        self._patch_status(meta, mem, reconcile.failed_status(meta.generation, message, old_conditions, _now_text()))

    def _patch_status(self, meta: Meta, mem: _Memory, status: Obj) -> None:
        if status == mem.last_status:
            return
        self.api.patch_dataset_status(meta.namespace, meta.name, status)
        mem.last_status = status

    def _event(self, meta: Meta, reason: str, note: str, action: str, warning: bool = False) -> None:
        ref = {"namespace": meta.namespace, "name": meta.name, "uid": meta.uid}
        self.api.emit(objects.event(ref, reason, note, action, self.cfg.identity, warning))

    def _apply(self, res: DatasetResource, mem: _Memory, old_conditions: Any) -> Obj | None:
        """Create/repair the Dataset's objects; returns the observed StatefulSet (None: blocked)."""
        b = res.bounds
        initial = b.clamp(b.replicas if res.params.policy == autoscaler.MANUAL and b.replicas is not None else 0)
        want = objects.desired(res, self.cfg.worker, initial)
        name = objects.base_name(res.name)
        observed = {kind: self.api.get(kind, res.namespace, name) for kind in objects.KINDS}
        meta = Meta(res.namespace, res.name, res.uid, res.generation, False, (), "")
        for action in reconcile.plan(want, observed, res.uid):
            kind = action.obj["kind"]
            if action.verb == "conflict":
                self._fail(meta, mem, action.why, "Conflict", old_conditions)
                return None
            log.info("Dataset %s: %s (%s)", res.key, action.why, action.verb)
            if action.verb == "create":
                observed[kind] = self.api.create(action.obj)
            elif action.verb == "replace":
                observed[kind] = self.api.replace(action.obj)
            elif action.verb == "recreate":  # created again on the next pass, once it is gone
                self.api.delete(kind, res.namespace, name)
                observed[kind] = None
        return observed["StatefulSet"]

    # ------------------------------------------------------------------------------ signals

    def _targets(self, res: DatasetResource) -> tuple[list[signals.Target], list[str]]:
        problems: list[str] = []
        pods: list[tuple[str, PodInfo]] = []
        try:
            pods += [(signals.WORKER, p) for p in self.api.list_pods(res.namespace, objects.selector(res))]
        except KubeApiError as exc:
            problems.append(f"cannot list worker pods: {exc}")
        if self.cfg.client_namespace:
            try:
                found = self.api.list_pods(self.cfg.client_namespace, self.cfg.client_selector)
                pods += [(signals.CLIENT, p) for p in found]
            except KubeApiError as exc:
                problems.append(f"cannot list mount pods: {exc}")
        targets = [
            signals.Target(f"{p.namespace}/{p.name}", role, p.node, p.metrics_url)
            for role, p in pods
            if p.ready and not p.deleting and p.metrics_url
        ]
        return targets, problems

    def _scrape(self, res: DatasetResource, target: signals.Target) -> signals.MemberSnapshot:
        try:
            text = self.api.scrape(target.url, self.cfg.scrape_timeout)
        except ScrapeError as exc:
            metrics.SCRAPE_ERRORS.labels(res.namespace, res.name).inc()
            return signals.snapshot(target, None, res.name, self.clock(), str(exc))
        return signals.snapshot(target, text, res.name, self.clock())

    def _sample_and_scale(self, res: DatasetResource, mem: _Memory, sts: Obj, now: float) -> None:
        targets, problems = self._targets(res)
        snaps = list(self._pool.map(lambda t: self._scrape(res, t), targets))
        sample = signals.sample(mem.snapshots, snaps)
        if problems:
            sample = replace(sample, partial=True, problems=(*problems, *sample.problems))
        mem.snapshots = signals.by_name(snaps)
        mem.history.append(sample)
        mem.sampled_at = _now_text()
        current = int((sts.get("spec") or {}).get("replicas") or 0)
        state = mem.state if mem.state is not None else autoscaler.State(replicas=current)
        if state.replicas != current:  # changed by someone else, or our last scale failed
            state = replace(state, replicas=current)
        decision, nxt = autoscaler.decide(res.params, res.bounds, state, mem.history, now)
        if decision.replicas != current:
            name = objects.base_name(res.name)
            self.api.scale(res.namespace, name, decision.replicas)  # raises: state stays as it was
            mem.last_scaling = reconcile.scaling_record(decision, current, mem.sampled_at)
            metrics.DECISIONS.labels(res.namespace, res.name, decision.direction).inc()
            meta = Meta(res.namespace, res.name, res.uid, res.generation, False, (), "")
            reason = "ScaledUp" if decision.direction == autoscaler.UP else "ScaledDown"
            self._event(meta, reason, f"{current} -> {decision.replicas} workers: {decision.reason}", "Scale")
            log.info("Dataset %s: %d -> %d workers: %s", res.key, current, decision.replicas, decision.reason)
        mem.state, mem.decision = nxt, decision
        mem.recommended = decision.replicas
        if res.params.policy == autoscaler.MANUAL:  # what an HPA/KEDA following the metric should do
            shadow = mem.shadow if mem.shadow is not None else autoscaler.State(replicas=decision.replicas)
            trial = shadow.trial
            if trial is None or decision.replicas not in (trial.from_replicas, trial.to_replicas):
                shadow = replace(shadow, replicas=decision.replicas)  # else: a step the HPA is to follow
            params = replace(res.params, policy=autoscaler.TRAINING_SPEED)
            advice, mem.shadow = autoscaler.decide(params, res.bounds, shadow, mem.history, now)
            mem.recommended = advice.replicas
        metrics.record(res.namespace, res.name, mem.recommended, decision.replicas, sample)

    # ------------------------------------------------------------------------------ deletion

    def _finalize(self, meta: Meta) -> None:
        if FINALIZER not in meta.finalizers:
            return
        name = objects.base_name(meta.name)
        for kind in reversed(objects.KINDS):
            have = self.api.get(kind, meta.namespace, name)
            if have is not None and reconcile.owned_by(have, meta.uid):
                self.api.delete(kind, meta.namespace, name)
        metrics.forget(meta.namespace, meta.name)
        self._mem.pop(meta.key, None)
        rest = [f for f in meta.finalizers if f != FINALIZER]
        patch = {"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}}
        self.api.patch_dataset(meta.namespace, meta.name, patch)
        log.info("Dataset %s deleted: its cache workers are gone", meta.key)
