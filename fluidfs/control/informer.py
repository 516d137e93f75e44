"""Informer-like caches of cluster objects for the webhook and the Job queue: periodic lists, bounded API load.

A :class:`ListCache` holds the objects of one kind (and one label/field selector), listed again
when its period has passed (:meth:`ListCache.refresh`, called from the controller's loop);
readers -- the controller loop and the admission webhook's threads -- get the last list without
any API call.  Objects the controller changes itself (an admitted Job, a labelled Node) are put
back into the cache from the API's answer (:meth:`ListCache.put`), so the next pass sees them
at once.

:class:`ClusterView` groups the caches the scheduling features use and implements
``sched.resolve.VolumeLookups`` for the webhook: a PersistentVolumeClaim, PersistentVolume or
StorageClass comes from the cache; one the cache does not hold yet (created after the last list:
the usual case of a claim applied together with its pod) is fetched with one GET of a short
timeout and remembered, also when absent, for ``miss_ttl`` seconds.

API load: one list per cached kind and period (:class:`Periods`: volumes and classes every 30 s,
Nodes every 15 s, queued Jobs every 5 s, unfinished Pods every 10 s; with the Kueue check,
Workloads every 5 s and AdmissionChecks every 30 s; lists are paginated), plus
at most one GET per unknown volume object and ``miss_ttl``.  A failed list keeps the previous
objects (and is retried after a third of the period); ``ListCache.error`` says why.

Caveats: periodic lists, not watches (the official client's watch needs its own thread per kind
and resourceVersion bookkeeping; a period of seconds is enough for placement and admission).
Every replica of the controller keeps its own caches (the webhook is served by all of them), so
two replicas list twice as often.  Cached objects are shared, not copied: readers must not
modify them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fluidfs.control.adapter import CLUSTER_SCOPED, KubeApi, Obj
from fluidfs.control.sched.locations import CacheLocations
from fluidfs.control.sched.queue import QUEUE_LABEL
from fluidfs.control.sched.resolve import DRIVER
from fluidfs.errors import KubeApiError
from fluidfs.spec.identity import dataset_key

log = logging.getLogger(__name__)

#: label of the warm-up Jobs the queue starts (value: the dataset key)
WARM_LABEL = "fluidfs.io/warm"
#: the Pods that hold resources on their node
UNFINISHED = "status.phase!=Succeeded,status.phase!=Failed"
#: unknown volume objects remembered at most (the oldest are forgotten first)
MAX_MISSES = 4096


@dataclass(frozen=True)
class Periods:
    """Seconds between two lists of each kind."""

    volumes: float = 30.0  # PersistentVolumeClaims, PersistentVolumes, StorageClasses
    nodes: float = 15.0
    jobs: float = 5.0
    pods: float = 10.0


def _ident(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class ListCache:
    """The objects of one kind, as of the last list."""

    def __init__(
        self,
        api: KubeApi,
        kind: str,
        period: float,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.kind = kind
        self.period = period
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.clock = clock
        self.error = ""
        self._objs: dict[tuple[str, str], Obj] = {}
        self._next = 0.0
        self._listed = False
        self._lock = threading.Lock()

    @property
    def listed(self) -> bool:
        """Whether a list has succeeded at least once."""
        return self._listed

    def due(self) -> float:
        """Seconds until the next list (0: now)."""
        return max(0.0, self._next - self.clock())

    def refresh(self, force: bool = False) -> bool:
        """List again if the period has passed (or ``force``); False if nothing was listed."""
        now = self.clock()
        if not force and now < self._next:
            return False
        try:
            items = self.api.list_objects(self.kind, self.namespace, self.label_selector, self.field_selector)
        except KubeApiError as exc:
            self.error = str(exc)
            self._next = now + self.period / 3
            log.warning("listing %s failed (keeping %d cached): %s", self.kind, len(self._objs), exc)
            return False
        objs = {_ident(o): o for o in items}
        with self._lock:
            self._objs = objs
            self._listed, self.error = True, ""
        self._next = now + self.period
        return True

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._objs.values())

    def get(self, namespace: str, name: str) -> Obj | None:
        ns = "" if self.kind in CLUSTER_SCOPED else namespace
        with self._lock:
            return self._objs.get((ns, name))

    def put(self, obj: Obj) -> None:
        """Store an object the API just returned (after our own change, or a lookup)."""
        with self._lock:
            self._objs[_ident(obj)] = obj

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._objs.pop((namespace, name), None)


class ClusterView:
    """The caches of the scheduling features; ``sched.resolve.VolumeLookups`` for the webhook."""

    def __init__(
        self,
        api: KubeApi,
        periods: Periods | None = None,
        *,
        lookup_api: KubeApi | None = None,
        jobs: bool = True,
        pods: bool = True,
        kueue: bool = False,
        miss_ttl: float = 10.0,
        driver: str = DRIVER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        p = periods or Periods()
        self.lookup_api = lookup_api or api
        self.miss_ttl = miss_ttl
        self.driver = driver
        self.clock = clock

        def cache(kind: str, period: float, **kw: str) -> ListCache:
            return ListCache(api, kind, period, clock=clock, **kw)

        self.pvcs = cache("PersistentVolumeClaim", p.volumes)
        self.pvs = cache("PersistentVolume", p.volumes)
        self.classes = cache("StorageClass", p.volumes)
        self.nodes = cache("Node", p.nodes)
        self.jobs = cache("Job", p.jobs, label_selector=QUEUE_LABEL) if jobs else None
        self.warm_jobs = cache("Job", p.jobs, label_selector=WARM_LABEL) if jobs else None
        self.pods = (
            cache("Pod", p.pods, field_selector="status.phase!=Succeeded,status.phase!=Failed") if pods else None
        )
        self.workloads = cache("Workload", p.jobs) if kueue else None
        self.admission_checks = cache("AdmissionCheck", p.volumes) if kueue else None
        self._misses: dict[tuple[str, str, str], float] = {}
        self._miss_lock = threading.Lock()

    def caches(self) -> list[ListCache]:
        every = (self.pvcs, self.pvs, self.classes, self.nodes, self.jobs, self.warm_jobs, self.pods, self.workloads,
                 self.admission_checks)  # fmt: skip
        return [c for c in every if c]

    def refresh(self) -> float:
        """List every cache that is due; returns the seconds until the next one is."""
        for c in self.caches():
            c.refresh()
        return min(c.due() for c in self.caches())

    # --- VolumeLookups --------------------------------------------------------------------

    def _lookup(self, cache: ListCache, namespace: str, name: str) -> Obj | None:
        obj = cache.get(namespace, name)
        if obj is not None:
            return obj
        key = (cache.kind, namespace, name)
        now = self.clock()
        with self._miss_lock:
            seen = self._misses.get(key)
            if seen is not None and now - seen < self.miss_ttl:
                return None
        found = self.lookup_api.get(cache.kind, namespace, name)  # KubeApiError: the webhook's to report
        if found is not None:
            cache.put(found)
            return found
        with self._miss_lock:
            self._misses[key] = now
            if len(self._misses) > MAX_MISSES:
                for old in sorted(self._misses, key=self._misses.__getitem__)[: MAX_MISSES // 4]:
                    del self._misses[old]
        return None

    def get_pvc(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self._lookup(self.pvcs, namespace, name)

    def get_pv(self, name: str) -> Mapping[str, Any] | None:
        return self._lookup(self.pvs, "", name)

    def get_storage_class(self, name: str) -> Mapping[str, Any] | None:
        return self._lookup(self.classes, "", name)

    # --- what the scheduling features read --------------------------------------------------

    def locations(self) -> CacheLocations:
        """Where each dataset's cache is, from the Nodes' ``cache.fluidfs.io/`` labels."""
        return CacheLocations.from_nodes(self.nodes.items())

    def live_keys(self) -> set[str] | None:
        """Keys of the datasets the cluster still names: StorageClasses of the driver, its
        PersistentVolumes, inline volumes of unfinished pods.  None until every one of those
        lists has succeeded (no label is judged dead on a partial view)."""
        sources: list[ListCache] = [self.classes, self.pvs] + ([self.pods] if self.pods else [])
        if not all(c.listed for c in sources):
            return None
        keys: set[str] = set()
        for sc in self.classes.items():
            if sc.get("provisioner") == self.driver:
                keys.update(_key(sc.get("parameters")))
        for pv in self.pvs.items():
            csi = (pv.get("spec") or {}).get("csi") or {}
            if csi.get("driver") == self.driver:
                keys.update(_key(csi.get("volumeAttributes")))
        for pod in self.pods.items() if self.pods else ():
            keys.update(_inline_keys(pod, self.driver))
        return keys


def _key(attributes: Any) -> Iterable[str]:
    if not isinstance(attributes, Mapping):
        return ()
    key = dataset_key({str(k): str(v) for k, v in attributes.items()})
    return (key,) if key else ()


def _inline_keys(pod: Mapping[str, Any], driver: str) -> Iterable[str]:
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        csi = vol.get("csi") if isinstance(vol, Mapping) else None
        if isinstance(csi, Mapping) and csi.get("driver") == driver:
            yield from _key(csi.get("volumeAttributes"))
