"""The one adapter between fluidfs-controller and a cluster: every call the controller makes.

``KubeApi`` is a Protocol with two backends in the package — ``fluidfs.control.kube.KubeClient``
(the Kubernetes API, through the official client) and ``fluidfs.control.local.LocalCluster``
(cache workers as local processes) — and an in-memory fake in the tests.  Objects are plain
JSON-like dicts as the API serves them; a missing object is ``None`` from ``get``, every other
failure a ``KubeApiError`` (``status`` 409 for a conflict, 404 for not found on update).

Kinds handled by ``get``/``create``/``replace``/``delete``: ``ConfigMap``, ``Service``,
``ServiceAccount``, ``Role``, ``RoleBinding``, ``StatefulSet``, ``EndpointSlice``, ``Lease``, ``Job``.  The
StatefulSet's replica count is changed only through ``scale`` (its scale subresource).

For cache-aware scheduling the adapter also reads (``list_objects``, ``get``) PersistentVolumeClaims,
PersistentVolumes, StorageClasses, Nodes, Pods and Jobs, and merge-patches (``patch``) Jobs (to
admit them) and Nodes (their ``cache.fluidfs.io/`` labels).  Cluster-scoped kinds
(:data:`CLUSTER_SCOPED`) take ``namespace=""``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Obj = dict[str, Any]

#: kind -> apiVersion of the objects the controller creates
API_VERSIONS = {
    "ConfigMap": "v1",
    "Service": "v1",
    "ServiceAccount": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "StatefulSet": "apps/v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "Lease": "coordination.k8s.io/v1",
    "Job": "batch/v1",
    "Pod": "v1",
    "PersistentVolumeClaim": "v1",
    "PersistentVolume": "v1",
    "StorageClass": "storage.k8s.io/v1",
    "Node": "v1",
    "Workload": "kueue.x-k8s.io/v1beta1",
    "AdmissionCheck": "kueue.x-k8s.io/v1beta1",
}
#: kinds without a namespace
CLUSTER_SCOPED = frozenset({"PersistentVolume", "StorageClass", "Node", "AdmissionCheck"})


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with a JSON merge patch (RFC 7386) applied: mappings merge, ``None`` deletes,
    anything else replaces.  Neither argument is modified."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def selector_matches(labels: Mapping[str, str], selector: str) -> bool:
    """Whether ``labels`` match an equality/existence label selector (``a=b,c!=d,e,!f``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.strip().rstrip("=")) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass(frozen=True)
class PodInfo:
    """What the controller needs of a pod (a cache worker or a mount supervisor holding mounts)."""

    name: str
    namespace: str
    node: str = ""
    ready: bool = False
    deleting: bool = False
    metrics_url: str = ""  # http://IP:PORT/metrics of its container port named "metrics"; "" if none
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""  # the pod's IP ("" if it has none yet)


class KubeApi(Protocol):
    """Every cluster operation of fluidfs-controller."""

    def list_datasets(self, namespace: str | None) -> list[Obj]:
        """All Dataset resources (of one namespace, or all with None)."""
        ...

    def patch_dataset(self, namespace: str, name: str, patch: Obj) -> Obj:
        """JSON merge patch of a Dataset's metadata/spec (finalizers); a ``metadata.resourceVersion``
        in the patch makes it conditional (409 if the resource changed)."""
        ...

    def patch_dataset_status(self, namespace: str, name: str, status: Obj) -> None:
        """Merge ``status`` into the Dataset's status subresource."""
        ...

    def get(self, kind: str, namespace: str, name: str) -> Obj | None: ...

    def create(self, obj: Obj) -> Obj: ...

    def replace(self, obj: Obj) -> Obj:
        """Replace an object; ``metadata.resourceVersion`` must be the one read (else 409)."""
        ...

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete an object (background propagation); absent objects are not an error."""
        ...

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set a StatefulSet's replicas through its scale subresource."""
        ...

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[PodInfo]: ...

    def list_objects(
        self, kind: str, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> list[Obj]:
        """Objects of ``kind`` (of one namespace, or all with None), as the API serves them;
        ``label_selector``/``field_selector`` in the API's syntax."""
        ...

    def patch(self, kind: str, namespace: str, name: str, patch: Obj, subresource: str = "") -> Obj:
        """JSON merge patch of an object (``namespace=""`` for cluster-scoped kinds), or of its
        ``subresource`` (``"status"``); 404 if absent; a ``metadata.resourceVersion`` in the
        patch makes it conditional (409 if the object changed)."""
        ...

    def scrape(self, url: str, timeout: float) -> str:
        """The text of a Prometheus endpoint; ``ScrapeError`` if it cannot be read."""
        ...

    def emit(self, event: Obj) -> None:
        """Record an ``events.k8s.io/v1`` Event (best effort: failures are logged, not raised)."""
        ...
