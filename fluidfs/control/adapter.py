"""The one adapter between fluidfs-controller and a cluster: every call the controller makes.

``KubeApi`` is a Protocol with two backends in the package — ``fluidfs.control.kube.KubeClient``
(the Kubernetes API, through the official client) and ``fluidfs.control.local.LocalCluster``
(cache workers as local processes) — and an in-memory fake in the tests.  Objects are plain
JSON-like dicts as the API serves them; a missing object is ``None`` from ``get``, every other
failure a ``KubeApiError`` (``status`` 409 for a conflict, 404 for not found on update).

Kinds handled by ``get``/``create``/``replace``/``delete``: ``ConfigMap``, ``Service``,
``ServiceAccount``, ``Role``, ``RoleBinding``, ``StatefulSet``, ``Lease``.  The StatefulSet's
replica count is changed only through ``scale`` (its scale subresource).
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
    "Lease": "coordination.k8s.io/v1",
}


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

    def scrape(self, url: str, timeout: float) -> str:
        """The text of a Prometheus endpoint; ``ScrapeError`` if it cannot be read."""
        ...

    def emit(self, event: Obj) -> None:
        """Record an ``events.k8s.io/v1`` Event (best effort: failures are logged, not raised)."""
        ...
