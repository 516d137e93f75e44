"""Warm-up Jobs: a dataset's cache filled before the queued Job that needs it starts.

The Job queue emits a warm intent (``WarmIntent(dataset key, job)``) for the next Job in line
whose datasets are cold.  The controller carries it out with a ``batch/v1`` Job of its own, in
the queued Job's namespace, that mounts the queued Job's *own* volumes of that dataset (the same
PersistentVolumeClaim, generic ephemeral template or inline CSI volume with its secret
reference, so the same data and credentials) and reads every file once through the mount: the
node's fluidfs mount of the dataset fetches every block from the source and keeps it in its
tiers -- the SSD tier keeps it after the warm-up pod is gone, for the next mount on that node
(``unstageGrace`` keeps the mount itself), and it is labelled there like any cached dataset, so
the queued Job's pods are drawn to it by the webhook's cache affinity.  It is what
``fluidfs load MOUNTPOINT`` does on a node, done from a pod, needing nothing but the image.

Why a Job rather than an annotation the cache workers act on: the queued Job's volumes may
belong to no Dataset resource (a StorageClass with a ``url``), the credentials stay where the
user put them (the controller never reads a Secret), and Kubernetes does the scheduling, the
retries, the deadline and the clean-up.

One warm-up Job per dataset key and namespace, named ``fluidfs-warm-<key>``: it is kept for
``ttl`` seconds after it ends (``ttlSecondsAfterFinished``), during which the queue does not warm
that dataset again (the create answers 409).  It copies the queued pod template's node
selector, tolerations, affinity and pod security context (so it may run where the job may, and
reads the files as the job would), requests no GPU, and is owned by the queued Job (deleting the
queued Job deletes its warm-up).

Caveats: the warm-up runs on one node (the scheduler's choice, drawn by cache affinity to where
the dataset already is); the queued Job's pods may start elsewhere and read from the source or
from peers.  ``find | xargs cat`` needs ``sh``, ``find`` and ``xargs`` in the image (the fluidfs
image has them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fluidfs.control.adapter import Obj
from fluidfs.control.informer import WARM_LABEL
from fluidfs.control.objects import MANAGER
from fluidfs.control.sched.resolve import VolumeLookups, pod_datasets

WARM_FOR = "fluidfs.io/warm-for"
MOUNT_ROOT = "/warm"


@dataclass(frozen=True)
class WarmConfig:
    image: str = "fluidfs/fluidfs:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    ttl: int = 3600  # seconds a finished warm-up is kept (and its dataset not warmed again)
    deadline: int = 3600  # activeDeadlineSeconds of one warm-up
    parallel: int = 8  # files read at once


def job_name(key: str) -> str:
    return f"fluidfs-warm-{key}"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def dataset_volumes(job: Mapping[str, Any], key: str, lookups: VolumeLookups) -> list[Obj]:
    """The volumes of the Job's pod template that read dataset ``key``."""
    meta = _mapping(job.get("metadata"))
    template = _mapping(_mapping(_mapping(job.get("spec")).get("template")).get("spec"))
    names = {v.volume for v in pod_datasets(template, str(meta.get("namespace") or "default"), lookups) if v.key == key}
    return [dict(v) for v in template.get("volumes") or [] if isinstance(v, Mapping) and v.get("name") in names]


def warm_job(job: Mapping[str, Any], key: str, volumes: Sequence[Obj], cfg: WarmConfig) -> Obj:
    """The warm-up Job of dataset ``key`` for the queued ``job``, reading through ``volumes``."""
    meta = _mapping(job.get("metadata"))
    template = _mapping(_mapping(_mapping(job.get("spec")).get("template")).get("spec"))
    labels = {
        WARM_LABEL: key,
        "app.kubernetes.io/name": "fluidfs",
        "app.kubernetes.io/component": "cache-warmup",
        "app.kubernetes.io/managed-by": MANAGER,
    }
    mounts = [
        {"name": v["name"], "mountPath": f"{MOUNT_ROOT}/{v['name']}", "readOnly": True,
         "mountPropagation": "HostToContainer"}
        for v in volumes
    ]  # fmt: skip
    script = f"find {MOUNT_ROOT} -type f -print0 | xargs -0 -r -n 64 -P {cfg.parallel} cat > /dev/null"
    pod: Obj = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": dict(_mapping(template.get("securityContext")))
        or {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "warm",
                "image": cfg.image,
                "imagePullPolicy": cfg.image_pull_policy,
                "command": ["sh", "-c", script],
                "volumeMounts": mounts,
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [dict(v) for v in volumes],
    }
    for field in ("nodeSelector", "tolerations", "affinity"):
        if template.get(field):
            pod[field] = template[field]
    if cfg.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in cfg.image_pull_secrets]
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": str(meta.get("name") or ""),
        "uid": str(meta.get("uid") or ""),
        "controller": False,
        "blockOwnerDeletion": False,
    }
    out: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(key),
            "namespace": str(meta.get("namespace") or "default"),
            "labels": labels,
            "annotations": {WARM_FOR: str(meta.get("name") or "")},
        },
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": cfg.deadline,
            "ttlSecondsAfterFinished": cfg.ttl,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }
    if owner["uid"]:
        out["metadata"]["ownerReferences"] = [owner]
    return out


def active(job: Mapping[str, Any]) -> bool:
    """Whether a (warm-up) Job has not finished."""
    for cond in _mapping(job.get("status")).get("conditions") or []:
        c = _mapping(cond)
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return False
    return True
