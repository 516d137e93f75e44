"""An in-memory ``KubeApi`` for controller tests: objects, pods, metrics texts and failures.

It behaves like the API server where the controller relies on it: resourceVersions and 409
conflicts, finalizers holding a deleted Dataset, the garbage collector deleting owned objects,
the StatefulSet controller creating pods ``<set>-<ordinal>`` (ready by default; tests may
change that) and a status with ``readyReplicas``.  Every call is recorded in ``calls``;
``fail`` makes the next calls of a verb/kind raise.  Metrics texts are served from ``texts``
(URL -> text, or a callable giving it, or None for an endpoint that does not answer).

The cluster objects of cache-aware scheduling (Nodes, Jobs, Pods, PVCs, PVs, StorageClasses)
are added with ``add``; ``list_objects`` filters them by kind, namespace, label selector and the
``status.phase`` field selector, and ``patch`` applies JSON merge patches (recorded in
``patches``).
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from fluidfs.control.adapter import CLUSTER_SCOPED, Obj, PodInfo, merge_patch, selector_matches
from fluidfs.errors import KubeApiError, ScrapeError


class FakeKube:
    def __init__(self) -> None:
        self.datasets: dict[tuple[str, str], Obj] = {}
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.events: list[Obj] = []
        self.calls: list[tuple[str, str, str]] = []
        self.created: list[Obj] = []  # every object the controller created or replaced
        self.texts: dict[str, str | Callable[[], str | None] | None] = {}
        self.clients: list[PodInfo] = []
        self.not_ready: set[str] = set()  # pod names reported not ready
        self.failures: dict[tuple[str, str], list[KubeApiError]] = {}
        self.patches: list[tuple[str, str, str, Obj]] = []  # (kind, namespace, name, patch)
        self._rv = itertools.count(1)

    # --- test controls -------------------------------------------------------------------

    def add(self, obj: Obj) -> Obj:
        """Store a cluster object as if a user had created it (uid, resourceVersion added)."""
        new = copy.deepcopy(obj)
        m = new.setdefault("metadata", {})
        ns = "" if new["kind"] in CLUSTER_SCOPED else m.setdefault("namespace", "default")
        m.setdefault("uid", str(uuid.uuid4()))
        m["resourceVersion"] = str(next(self._rv))
        self.objects[(new["kind"], ns, m["name"])] = new
        return copy.deepcopy(new)

    def obj(self, kind: str, namespace: str, name: str) -> Obj:
        return self.objects[(kind, "" if kind in CLUSTER_SCOPED else namespace, name)]

    def fail(self, verb: str, kind: str, error: KubeApiError, times: int = 1) -> None:
        self.failures.setdefault((verb, kind), []).extend([error] * times)

    def _call(self, verb: str, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))
        queue = self.failures.get((verb, kind))
        if queue:
            raise queue.pop(0)

    def apply(self, obj: Obj) -> Obj:
        """Create or update a Dataset resource (kubectl apply)."""
        meta = obj["metadata"]
        key = (meta.setdefault("namespace", "default"), meta["name"])
        old = self.datasets.get(key)
        new = copy.deepcopy(obj)
        m = new["metadata"]
        if old is None:
            m.update(uid=str(uuid.uuid4()), generation=1, finalizers=[])
        else:
            m.update(uid=old["metadata"]["uid"], finalizers=old["metadata"].get("finalizers", []))
            m["generation"] = old["metadata"]["generation"] + (old.get("spec") != new.get("spec"))
            new["status"] = old.get("status", {})
        m["resourceVersion"] = str(next(self._rv))
        self.datasets[key] = new
        return new

    def delete_dataset(self, namespace: str, name: str) -> None:
        obj = self.datasets[(namespace, name)]
        if obj["metadata"].get("finalizers"):
            obj["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
        else:
            self._gc(namespace, name)

    def _gc(self, namespace: str, name: str) -> None:
        uid = self.datasets.pop((namespace, name))["metadata"]["uid"]
        for key, obj in list(self.objects.items()):
            if any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences", [])):
                del self.objects[key]

    def status_of(self, namespace: str, name: str) -> Obj:
        return dict(self.datasets[(namespace, name)].get("status", {}))

    def sts(self, namespace: str, name: str) -> Obj | None:
        return self.objects.get(("StatefulSet", namespace, name))

    # --- KubeApi -------------------------------------------------------------------------

    def list_datasets(self, namespace: str | None) -> list[Obj]:
        self._call("list", "Dataset", namespace or "")
        return [copy.deepcopy(o) for (ns, _), o in sorted(self.datasets.items()) if namespace in (None, ns)]

    def patch_dataset(self, namespace: str, name: str, patch: Obj) -> Obj:
        self._call("patch", "Dataset", name)
        obj = self.datasets.get((namespace, name))
        if obj is None:
            raise KubeApiError("not found", 404)
        meta = dict(patch.get("metadata") or {})
        rv = meta.pop("resourceVersion", None)
        if rv and rv != obj["metadata"]["resourceVersion"]:
            raise KubeApiError("conflict", 409)
        obj["metadata"].update(meta)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            self._gc(namespace, name)
        return copy.deepcopy(obj)

    def patch_dataset_status(self, namespace: str, name: str, status: Obj) -> None:
        self._call("status", "Dataset", name)
        obj = self.datasets.get((namespace, name))
        if obj is None:
            raise KubeApiError("not found", 404)
        merged = {**obj.get("status", {}), **copy.deepcopy(status)}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        self._call("get", kind, name)
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            return None
        out = copy.deepcopy(obj)
        if kind == "StatefulSet":
            n = int(out["spec"].get("replicas") or 0)
            ready = sum(1 for i in range(n) if f"{name}-{i}" not in self.not_ready)
            out["status"] = {"replicas": n, "readyReplicas": ready}
        return out

    def create(self, obj: Obj) -> Obj:
        m = obj["metadata"]
        self._call("create", obj["kind"], m["name"])
        key = (obj["kind"], m["namespace"], m["name"])
        if key in self.objects:
            raise KubeApiError("already exists", 409)
        new = copy.deepcopy(obj)
        new["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._rv)))
        self.objects[key] = new
        self.created.append(copy.deepcopy(obj))
        return copy.deepcopy(new)

    def replace(self, obj: Obj) -> Obj:
        m = obj["metadata"]
        self._call("replace", obj["kind"], m["name"])
        key = (obj["kind"], m["namespace"], m["name"])
        old = self.objects.get(key)
        if old is None:
            raise KubeApiError("not found", 404)
        if m.get("resourceVersion") != old["metadata"]["resourceVersion"]:
            raise KubeApiError("conflict", 409)
        new = copy.deepcopy(obj)
        new["metadata"].update(uid=old["metadata"]["uid"], resourceVersion=str(next(self._rv)))
        self.objects[key] = new
        self.created.append(copy.deepcopy(obj))
        return copy.deepcopy(new)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self._call("delete", kind, name)
        self.objects.pop((kind, namespace, name), None)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        self._call("scale", "StatefulSet", name)
        obj = self.objects.get(("StatefulSet", namespace, name))
        if obj is None:
            raise KubeApiError("not found", 404)
        obj["spec"]["replicas"] = replicas
        obj["metadata"]["resourceVersion"] = str(next(self._rv))

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[PodInfo]:
        self._call("list", "Pod", namespace)
        out = [c for c in self.clients if c.namespace == namespace and selector.items() <= c.labels.items()]
        for (kind, ns, name), obj in self.objects.items():
            if kind != "StatefulSet" or ns != namespace:
                continue
            labels = obj["spec"]["template"]["metadata"]["labels"]
            if not selector.items() <= labels.items():
                continue
            for i in range(int(obj["spec"].get("replicas") or 0)):
                pod = f"{name}-{i}"
                url = f"http://{pod}.fake:9090/metrics"
                out.append(PodInfo(pod, ns, f"node-{i}", pod not in self.not_ready, False, url, labels))
        return out

    def list_objects(
        self, kind: str, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> list[Obj]:
        self._call("list", kind, namespace or "")
        out = []
        for (k, ns, _), obj in sorted(self.objects.items()):
            if k != kind or namespace not in (None, ns):
                continue
            if not selector_matches(obj["metadata"].get("labels") or {}, label_selector):
                continue
            if not _fields_match(obj, field_selector):
                continue
            out.append(copy.deepcopy(obj))
        return out

    def patch(self, kind: str, namespace: str, name: str, patch: Obj, subresource: str = "") -> Obj:
        self._call("patch", f"{kind}/{subresource}" if subresource else kind, name)
        key = (kind, "" if kind in CLUSTER_SCOPED else namespace, name)
        old = self.objects.get(key)
        if old is None:
            raise KubeApiError("not found", 404)
        rv = (patch.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != old["metadata"]["resourceVersion"]:
            raise KubeApiError("the object has been modified", 409)
        if subresource == "status":  # the status subresource changes status only
            new = {**copy.deepcopy(old), "status": merge_patch(old.get("status") or {}, patch.get("status") or {})}
        else:
            new = merge_patch(old, {k: v for k, v in patch.items() if k != "status"})
        new["metadata"]["resourceVersion"] = str(next(self._rv))
        self.objects[key] = new
        self.patches.append((f"{kind}/{subresource}" if subresource else kind, namespace, name, copy.deepcopy(patch)))
        return copy.deepcopy(new)

    def scrape(self, url: str, timeout: float) -> str:
        self._call("scrape", "Pod", url)
        source: Any = self.texts.get(url)
        text = source() if callable(source) else source
        if text is None:
            raise ScrapeError(f"{url}: connection refused")
        return str(text)

    def emit(self, event: Obj) -> None:
        self._call("create", "Event", event["reason"])
        self.events.append(copy.deepcopy(event))


def _fields_match(obj: Obj, selector: str) -> bool:
    """``a.b=v`` / ``a.b!=v`` terms of a field selector."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        neg = "!=" in term
        path, value = term.split("!=" if neg else "=", 1)
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (str(node) == value) == neg:
            return False
    return True
