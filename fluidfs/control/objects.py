"""The Kubernetes objects of one Dataset's cache workers, built from the parsed resource.

Per Dataset, in its namespace, all named ``<dataset>-cache`` (shortened with a digest when the
dataset name is long) and owned by the Dataset (``ownerReferences``, so deleting the Dataset
garbage-collects them):

- ConfigMap: ``dataset.yaml``, the fluidfs Dataset document the workers read;
- ServiceAccount, Role, RoleBinding: the workers may get/list/watch EndpointSlices of their
  namespace (peer discovery, ``--peers-from kubernetes``) and nothing else;
- Service: headless, selecting the worker pods (peer and metrics ports);
- StatefulSet: ``fluidfs worker`` pods; a PVC per worker of ``worker.storageClassName`` (deleted
  on scale-in and with the set: a leaving worker has handed its blocks over) or an emptyDir.

Each object carries ``fluidfs.io/spec-hash`` (what the controller last wanted) so that drift
is found without comparing API-server-defaulted fields; the StatefulSet also carries
``fluidfs.io/immutable-hash`` over the fields Kubernetes will not update (selector,
serviceName, volumeClaimTemplates, podManagementPolicy): when that changes it is recreated.

Caveats: the worker command line follows the ``fluidfs worker`` interface of the cluster-cache
design (``--listen``, ``--peers-from kubernetes``, ``--peer-secret-file``, ``--metrics-addr``);
the peer Secret (``WorkerConfig.peer_secret``) must exist in the Dataset's namespace.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fluidfs.control import crd
from fluidfs.control.adapter import API_VERSIONS, Obj
from fluidfs.control.resource import DatasetResource, document_yaml

SPEC_HASH = "fluidfs.io/spec-hash"
IMMUTABLE_HASH = "fluidfs.io/immutable-hash"
DOCUMENT_HASH = "fluidfs.io/dataset-hash"
DATASET_LABEL = "fluidfs.io/dataset"
COMPONENT = "cache-worker"
MANAGER = "fluidfs-controller"
REPORTING_CONTROLLER = "fluidfs.io/fluidfs-controller"
DOCUMENT_DIR, PEER_SECRET_DIR, CACHE_DIR = "/etc/fluidfs/dataset", "/etc/fluidfs/peer", "/var/cache/fluidfs"
#: created in this order, deleted in the reverse order
KINDS = ("ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Service", "StatefulSet")
_MAX_BASE = 46  # <base>-<ordinal> pod names and the controller-revision-hash label fit in 63


@dataclass(frozen=True)
class WorkerConfig:
    """Controller-wide settings of the worker pods (flags of fluidfs-controller)."""

    image: str = "fluidfs/fluidfs:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    command: tuple[str, ...] = ("fluidfs",)
    peer_port: int = 7070
    metrics_port: int = 9090
    peer_secret: str = "fluidfs-peer"
    peer_secret_key: str = "secret"
    log_level: str = "info"


def base_name(dataset: str) -> str:
    """Name of every object of ``dataset``'s workers."""
    name = f"{dataset}-cache"
    if len(name) <= _MAX_BASE:
        return name
    digest = hashlib.sha256(dataset.encode()).hexdigest()[:8]
    return f"{dataset[: _MAX_BASE - 15].rstrip('-')}-{digest}-cache"


def selector(res: DatasetResource) -> dict[str, str]:
    return {DATASET_LABEL: res.name, "app.kubernetes.io/component": COMPONENT}


def labels(res: DatasetResource) -> dict[str, str]:
    return {
        **selector(res),
        "app.kubernetes.io/name": "fluidfs",
        "app.kubernetes.io/instance": res.name,
        "app.kubernetes.io/managed-by": MANAGER,
        "app.kubernetes.io/part-of": "fluidfs",
    }


def selector_string(res: DatasetResource) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector(res).items()))


def owner_reference(res: DatasetResource) -> Obj:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": res.name,
        "uid": res.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _object(kind: str, res: DatasetResource, body: Obj, annotations: Mapping[str, str] | None = None) -> Obj:
    obj: Obj = {
        "apiVersion": API_VERSIONS[kind],
        "kind": kind,
        "metadata": {
            "name": base_name(res.name),
            "namespace": res.namespace,
            "labels": labels(res),
            "ownerReferences": [owner_reference(res)],
        },
        **body,
    }
    obj["metadata"]["annotations"] = {**(annotations or {}), SPEC_HASH: digest(body)}
    return obj


def config_map(res: DatasetResource) -> Obj:
    return _object("ConfigMap", res, {"data": {"dataset.yaml": document_yaml(res)}})


def service_account(res: DatasetResource) -> Obj:
    return _object("ServiceAccount", res, {})


def role(res: DatasetResource) -> Obj:
    rules = [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}]
    return _object("Role", res, {"rules": rules})


def role_binding(res: DatasetResource) -> Obj:
    name = base_name(res.name)
    body = {
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": res.namespace}],
    }
    return _object("RoleBinding", res, body)


def service(res: DatasetResource, cfg: WorkerConfig) -> Obj:
    body = {
        "spec": {
            "clusterIP": "None",
            "selector": selector(res),
            "publishNotReadyAddresses": False,
            "ports": [
                {"name": "peer", "port": cfg.peer_port, "targetPort": "peer", "protocol": "TCP"},
                {"name": "metrics", "port": cfg.metrics_port, "targetPort": "metrics", "protocol": "TCP"},
            ],
        }
    }
    return _object("Service", res, body)


def _resources(res: DatasetResource) -> Obj:
    memory = str(res.worker.memory_size + (512 << 20))
    out: Obj = {"requests": {"cpu": "250m", "memory": memory}, "limits": {"memory": memory}}
    for part in ("requests", "limits"):
        given = res.worker.resources.get(part)
        if isinstance(given, Mapping):
            out[part] = {**out[part], **{str(k): str(v) for k, v in given.items()}}
    return out


def _env(res: DatasetResource) -> list[Obj]:
    env: list[Obj] = [
        {"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}}
        for n, p in (
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"),
            ("NODE_NAME", "spec.nodeName"),
        )
    ]
    env.append({"name": "FLUIDFS_PEERS_SERVICE", "value": base_name(res.name)})
    for s in res.secret_env:
        env.append({"name": s.env, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": s.key}}})
    return env


def worker_args(res: DatasetResource, cfg: WorkerConfig) -> list[str]:
    return [
        "worker",
        f"{DOCUMENT_DIR}/dataset.yaml",
        "--cache-dir",
        CACHE_DIR,
        "--listen",
        f"0.0.0.0:{cfg.peer_port}",
        "--peers-from",
        "kubernetes",
        "--peer-secret-file",
        f"{PEER_SECRET_DIR}/{cfg.peer_secret_key}",
        "--metrics-addr",
        f"0.0.0.0:{cfg.metrics_port}",
        "--log-level",
        cfg.log_level,
    ]


def stateful_set(res: DatasetResource, cfg: WorkerConfig, replicas: int) -> Obj:
    """The workers' StatefulSet; ``replicas`` is used only when it is created."""
    name = base_name(res.name)
    w = res.worker
    cache_bytes = str(w.quota + w.quota // 10)  # the quota plus room for the index and temp files
    volumes: list[Obj] = [
        {"name": "dataset", "configMap": {"name": name}},
        {"name": "peer-secret", "secret": {"secretName": cfg.peer_secret, "defaultMode": 0o400}},
        {"name": "tmp", "emptyDir": {}},
    ]
    claims: list[Obj] = []
    if w.storage_class:
        claims.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "cache"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": w.storage_class,
                    "resources": {"requests": {"storage": cache_bytes}},
                },
            }
        )
    else:
        volumes.append({"name": "cache", "emptyDir": {"sizeLimit": cache_bytes}})
    container: Obj = {
        "name": "worker",
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": list(cfg.command),
        "args": worker_args(res, cfg),
        "env": _env(res),
        "ports": [
            {"name": "peer", "containerPort": cfg.peer_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": cfg.metrics_port, "protocol": "TCP"},
        ],
        "readinessProbe": {"tcpSocket": {"port": "peer"}, "periodSeconds": 5, "failureThreshold": 2},
        "resources": _resources(res),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "dataset", "mountPath": DOCUMENT_DIR, "readOnly": True},
            {"name": "peer-secret", "mountPath": PEER_SECRET_DIR, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: Obj = {
        "serviceAccountName": name,
        "enableServiceLinks": False,
        # a leaving worker hands its blocks to their new owners first (scale-in loses no cache)
        "terminationGracePeriodSeconds": int(w.drain_timeout) + 30,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if w.node_selector:
        pod_spec["nodeSelector"] = dict(w.node_selector)
    if w.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in w.tolerations]
    if cfg.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in cfg.image_pull_secrets]
    immutable: Obj = {
        "serviceName": name,
        "selector": {"matchLabels": selector(res)},
        "podManagementPolicy": "Parallel",  # scale by several at once; ordinals need no order
    }
    if claims:
        immutable["volumeClaimTemplates"] = claims
    spec: Obj = {
        **immutable,
        "updateStrategy": {"type": "RollingUpdate"},
        "template": {
            "metadata": {"labels": labels(res), "annotations": {DOCUMENT_HASH: digest(res.document)}},
            "spec": pod_spec,
        },
    }
    if claims:
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete", "whenScaled": "Delete"}
    obj = _object("StatefulSet", res, {"spec": spec}, {IMMUTABLE_HASH: digest(immutable)})
    obj["spec"]["replicas"] = replicas  # not part of the hash: the autoscaler owns it
    return obj


def desired(res: DatasetResource, cfg: WorkerConfig, replicas: int) -> list[Obj]:
    """Every object of the Dataset's workers, in creation order."""
    return [
        config_map(res),
        service_account(res),
        role(res),
        role_binding(res),
        service(res, cfg),
        stateful_set(res, cfg, replicas),
    ]


def micro_time(when: datetime | None = None) -> str:
    """A Kubernetes MicroTime (``2024-05-01T12:00:00.000000Z``)."""
    return (when or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(when: datetime | None = None) -> str:
    return (when or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def event(
    res_ref: Mapping[str, str],
    reason: str,
    note: str,
    action: str,
    instance: str,
    warning: bool = False,
    kind: str = crd.KIND,
    api_version: str = crd.API_VERSION,
) -> Obj:
    """An ``events.k8s.io/v1`` Event about a Dataset, or another ``kind`` (``res_ref``: namespace,
    name, uid)."""
    name = res_ref["name"]
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{name[:200]}.{secrets.token_hex(8)}", "namespace": res_ref["namespace"]},
        "eventTime": micro_time(),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128] or MANAGER,
        "action": action,
        "reason": reason,
        "note": note[:1000],
        "type": "Warning" if warning else "Normal",
        "regarding": {
            "apiVersion": api_version,
            "kind": kind,
            "name": name,
            "namespace": res_ref["namespace"],
            "uid": res_ref.get("uid", ""),
        },
    }
