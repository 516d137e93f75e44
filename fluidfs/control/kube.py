"""The Kubernetes backend of ``KubeApi``: the official ``kubernetes`` client, JSON in and out.

Every call is one REST request made with the client's ``ApiClient.call_api`` (its
configuration, authentication and TLS), reading the response as JSON rather than the client's
generated models, so objects stay the plain dicts the rest of the controller works with.
Configuration: in-cluster (the pod's ServiceAccount) when available, else a kubeconfig.
Metrics endpoints are read with urllib3 (a pool of its own, bounded timeouts).

The ``kubernetes`` package is an optional dependency (``pip install fluidfs[kubernetes]``);
importing this module without it raises ``ControlError`` with that hint.

Caveats: Dataset and worker-pod lists are not paginated (their counts per selector are small);
``list_objects`` (cluster-wide Pods, Jobs, Nodes...) is, 500 objects per request.  No watch:
the controller polls every few seconds (``fluidfs.control.informer`` bounds how often each kind
is listed), which bounds its reaction time.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import urllib3

from fluidfs.control import crd
from fluidfs.control.adapter import API_VERSIONS, CLUSTER_SCOPED, Obj, PodInfo
from fluidfs.errors import ControlError, KubeApiError, ScrapeError

try:
    import kubernetes
    from kubernetes.client.exceptions import ApiException
except ImportError as exc:  # pragma: no cover - depends on the install
    hint = "the Kubernetes backend needs the 'kubernetes' package: pip install 'fluidfs[kubernetes]'"
    raise ControlError(hint) from exc

log = logging.getLogger(__name__)

_PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "StatefulSet": "statefulsets",
    "EndpointSlice": "endpointslices",
    "Lease": "leases",
    "Job": "jobs",
    "Pod": "pods",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "PersistentVolume": "persistentvolumes",
    "StorageClass": "storageclasses",
    "Node": "nodes",
    "Workload": "workloads",
    "AdmissionCheck": "admissionchecks",
}
MERGE_PATCH = "application/merge-patch+json"
PAGE = 500


def _base(api_version: str) -> str:
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


def _path(kind: str, namespace: str | None, name: str = "") -> str:
    """The REST path of a kind (all namespaces with ``namespace`` None or a cluster-scoped kind)."""
    if kind in CLUSTER_SCOPED or namespace is None:
        p = f"{_base(API_VERSIONS[kind])}/{_PLURALS[kind]}"
    else:
        p = f"{_base(API_VERSIONS[kind])}/namespaces/{quote(namespace)}/{_PLURALS[kind]}"
    return f"{p}/{quote(name)}" if name else p


def _datasets(namespace: str | None, name: str = "") -> str:
    base = _base(crd.API_VERSION)
    p = f"{base}/namespaces/{quote(namespace)}/{crd.PLURAL}" if namespace else f"{base}/{crd.PLURAL}"
    return f"{p}/{quote(name)}" if name else p


def _metrics_port(pod: Mapping[str, Any]) -> int | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for port in c.get("ports") or []:
            if port.get("name") == "metrics" and port.get("containerPort"):
                return int(port["containerPort"])
    return None


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """A pod as the controller sees it (also used by tests on recorded pods)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    ip = status.get("podIP") or ""
    port = _metrics_port(pod)
    host = f"[{ip}]" if ":" in ip else ip
    return PodInfo(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        node=str((pod.get("spec") or {}).get("nodeName") or ""),
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        metrics_url=f"http://{host}:{port}/metrics" if ip and port else "",
        labels=dict(meta.get("labels") or {}),
        ip=ip,
    )


class KubeClient:
    """``KubeApi`` over the Kubernetes API."""

    def __init__(self, kubeconfig: str | None = None, request_timeout: float = 30.0) -> None:
        try:
            if kubeconfig:
                kubernetes.config.load_kube_config(config_file=kubeconfig)
            else:
                try:
                    kubernetes.config.load_incluster_config()
                except kubernetes.config.ConfigException:
                    kubernetes.config.load_kube_config()
        except (kubernetes.config.ConfigException, OSError) as exc:
            raise ControlError(f"no Kubernetes configuration: {exc}") from None
        self.client = kubernetes.client.ApiClient()
        self.timeout = request_timeout
        self._http = urllib3.PoolManager(num_pools=64, maxsize=4, retries=False)

    def with_timeout(self, request_timeout: float) -> KubeClient:
        """The same client (connection pool, credentials) with another request timeout: the
        admission webhook's lookups of objects its caches do not hold yet must be quick."""
        other = copy.copy(self)
        other.timeout = request_timeout
        return other

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Obj | None:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            resp = self.client.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            if exc.status == 404 and method in ("GET", "DELETE"):
                return None
            reason = exc.reason or ""
            try:
                reason = json.loads(exc.body or "{}").get("message") or reason
            except (ValueError, AttributeError):
                pass
            raise KubeApiError(f"{method} {path}: {exc.status} {reason}", int(exc.status or 0)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(f"{method} {path}: {exc}") from None
        data = resp[0].data if isinstance(resp, tuple) else resp.data
        return json.loads(data) if data else {}

    # --- Datasets ------------------------------------------------------------------------

    def list_datasets(self, namespace: str | None) -> list[Obj]:
        out = self._call("GET", _datasets(namespace))
        if out is None:
            raise KubeApiError(f"the {crd.NAME} CustomResourceDefinition is not installed", 404)
        return list(out.get("items") or [])

    def patch_dataset(self, namespace: str, name: str, patch: Obj) -> Obj:
        return self._call("PATCH", _datasets(namespace, name), patch, content_type=MERGE_PATCH) or {}

    def patch_dataset_status(self, namespace: str, name: str, status: Obj) -> None:
        self._call("PATCH", _datasets(namespace, name) + "/status", {"status": status}, content_type=MERGE_PATCH)

    # --- owned objects -------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._call("GET", _path(kind, namespace, name))

    def create(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return self._call("POST", _path(obj["kind"], meta["namespace"]), obj) or {}

    def replace(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return self._call("PUT", _path(obj["kind"], meta["namespace"], meta["name"]), obj) or {}

    def delete(self, kind: str, namespace: str, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        self._call("DELETE", _path(kind, namespace, name), body)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        path = _path("StatefulSet", namespace, name) + "/scale"
        self._call("PATCH", path, {"spec": {"replicas": replicas}}, content_type=MERGE_PATCH)

    def list_objects(
        self, kind: str, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> list[Obj]:
        items: list[Obj] = []
        token = ""
        while True:
            query = [("limit", str(PAGE))]
            for key, value in (
                ("labelSelector", label_selector),
                ("fieldSelector", field_selector),
                ("continue", token),
            ):
                if value:
                    query.append((key, value))
            out = self._call("GET", _path(kind, namespace), query=query) or {}
            for item in out.get("items") or []:  # list items come without apiVersion and kind
                items.append({"apiVersion": API_VERSIONS[kind], "kind": kind, **item})
            token = str((out.get("metadata") or {}).get("continue") or "")
            if not token:
                return items

    def patch(self, kind: str, namespace: str, name: str, patch: Obj, subresource: str = "") -> Obj:
        path = _path(kind, namespace, name) + (f"/{subresource}" if subresource else "")
        return self._call("PATCH", path, patch, content_type=MERGE_PATCH) or {}

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[PodInfo]:
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(selector.items())))]
        out = self._call("GET", f"/api/v1/namespaces/{quote(namespace)}/pods", query=query) or {}
        return [pod_info(p) for p in out.get("items") or []]

    def emit(self, event: Obj) -> None:
        path = f"/apis/events.k8s.io/v1/namespaces/{quote(event['metadata']['namespace'])}/events"
        try:
            self._call("POST", path, event)
        except KubeApiError as exc:
            log.warning("could not record event %s: %s", event.get("reason"), exc)

    # --- metrics -------------------------------------------------------------------------

    def scrape(self, url: str, timeout: float) -> str:
        try:
            resp = self._http.request("GET", url, timeout=urllib3.Timeout(total=timeout), preload_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ScrapeError(f"{url}: {exc}") from None
        if resp.status != 200:
            raise ScrapeError(f"{url}: HTTP {resp.status}")
        return resp.data.decode("utf-8", "replace")
