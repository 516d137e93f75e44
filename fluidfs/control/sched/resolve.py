"""Which fluidfs datasets a pod reads: its volumes resolved to dataset keys through Kubernetes reads.

A pod reads a fluidfs dataset through one of three kinds of volume:

- an inline CSI volume (``volumes[].csi`` with ``driver: csi.fluidfs.io``): the dataset is in its
  ``volumeAttributes``, no lookup needed;
- a PersistentVolumeClaim (``volumes[].persistentVolumeClaim``): a bound claim leads to its PV,
  whose ``spec.csi.volumeAttributes`` name the dataset; a claim not bound yet (the usual case
  with ``volumeBindingMode: WaitForFirstConsumer``: it binds when its first pod is scheduled)
  leads to its StorageClass, whose ``parameters`` name it;
- a generic ephemeral volume (``volumes[].ephemeral.volumeClaimTemplate``): its StorageClass.

The lookups go through ``VolumeLookups``, a Protocol the controller's Kubernetes adapter
implements (from its informer caches: an admission webhook has a few seconds at most) and that
tests implement in memory. Objects are JSON-shaped dicts as the API server returns them.

Caveats: a generic ephemeral volume without ``storageClassName`` (the cluster default class) is
not resolved; neither is a claim whose class is absent. A lookup that raises is the caller's to
handle (the webhook turns it into a warning and admits the pod unchanged).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fluidfs.spec.identity import dataset_key

log = logging.getLogger(__name__)

DRIVER = "csi.fluidfs.io"


class VolumeLookups(Protocol):
    """The Kubernetes reads needed to resolve a pod's volumes; each returns the object as JSON
    (camelCase keys, as ``ApiClient.sanitize_for_serialization`` gives), or None when it does not
    exist. Any other failure may raise."""

    def get_pvc(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def get_pv(self, name: str) -> Mapping[str, Any] | None: ...

    def get_storage_class(self, name: str) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class DatasetVolume:
    """One volume of a pod that reads a fluidfs dataset."""

    volume: str
    key: str
    via: str  # "inline" | "pv" | "storageclass"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value).items()}


def _from_storage_class(name: str, lookups: VolumeLookups, driver: str) -> str | None:
    sc = lookups.get_storage_class(name)
    if sc is None or sc.get("provisioner") != driver:
        return None
    return dataset_key(_str_map(sc.get("parameters")))


def _from_pv(pv: Mapping[str, Any], driver: str) -> str | None:
    csi = _mapping(_mapping(pv.get("spec")).get("csi"))
    if csi.get("driver") != driver:
        return None
    return dataset_key(_str_map(csi.get("volumeAttributes")))


def _from_claim(namespace: str, claim: str, lookups: VolumeLookups, driver: str) -> tuple[str, str] | None:
    pvc = lookups.get_pvc(namespace, claim)
    if pvc is None:
        return None
    spec = _mapping(pvc.get("spec"))
    volume_name = spec.get("volumeName")
    if isinstance(volume_name, str) and volume_name:
        pv = lookups.get_pv(volume_name)
        if pv is not None:
            key = _from_pv(pv, driver)
            return (key, "pv") if key else None
    sc_name = spec.get("storageClassName")
    if isinstance(sc_name, str) and sc_name:
        key = _from_storage_class(sc_name, lookups, driver)
        return (key, "storageclass") if key else None
    return None


def pod_datasets(
    pod_spec: Mapping[str, Any],
    namespace: str,
    lookups: VolumeLookups,
    *,
    pod_name: str = "",
    driver: str = DRIVER,
) -> list[DatasetVolume]:
    """The fluidfs volumes of a pod spec (or a Job's ``spec.template.spec``), in volume order,
    one entry per volume (two volumes of one dataset give two entries with the same key).
    ``pod_name`` is needed for generic ephemeral volumes only when they are already bound."""
    volumes = pod_spec.get("volumes")
    out: list[DatasetVolume] = []
    if not isinstance(volumes, Sequence):
        return out
    for vol in volumes:
        if not isinstance(vol, Mapping):
            continue
        name = str(vol.get("name", ""))
        csi = vol.get("csi")
        if isinstance(csi, Mapping):
            if csi.get("driver") == driver:
                key = dataset_key(_str_map(csi.get("volumeAttributes")))
                if key:
                    out.append(DatasetVolume(name, key, "inline"))
            continue
        pvc = vol.get("persistentVolumeClaim")
        if isinstance(pvc, Mapping):
            claim = pvc.get("claimName")
            if isinstance(claim, str) and claim:
                found = _from_claim(namespace, claim, lookups, driver)
                if found:
                    out.append(DatasetVolume(name, found[0], found[1]))
            continue
        eph = vol.get("ephemeral")
        if isinstance(eph, Mapping):
            template = _mapping(_mapping(eph.get("volumeClaimTemplate")).get("spec"))
            sc_name = template.get("storageClassName")
            key = None
            if isinstance(sc_name, str) and sc_name:
                key = _from_storage_class(sc_name, lookups, driver)
            if key:
                out.append(DatasetVolume(name, key, "storageclass"))
            elif pod_name:
                found = _from_claim(namespace, f"{pod_name}-{name}", lookups, driver)
                if found:
                    out.append(DatasetVolume(name, found[0], found[1]))
    return out


def dataset_keys(volumes: Sequence[DatasetVolume]) -> list[str]:
    """The distinct dataset keys of ``volumes``, in first-seen order."""
    seen: dict[str, None] = {}
    for v in volumes:
        seen.setdefault(v.key, None)
    return list(seen)
