"""An in-memory ``VolumeLookups`` (fluidfs.control.sched.resolve): PVCs, PVs and StorageClasses
as JSON objects, with a switch that makes every lookup fail like an unreachable API server."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class LookupFailed(RuntimeError):
    """What the fake raises when told to fail (stands for any adapter error)."""


class FakeVolumeLookups:
    def __init__(self, objects: Iterable[Mapping[str, Any]] = ()) -> None:
        self.pvcs: dict[tuple[str, str], Mapping[str, Any]] = {}
        self.pvs: dict[str, Mapping[str, Any]] = {}
        self.classes: dict[str, Mapping[str, Any]] = {}
        self.fail = False
        self.calls = 0
        for obj in objects:
            self.add(obj)

    def add(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        kind = obj.get("kind")
        if kind == "PersistentVolumeClaim":
            self.pvcs[(meta.get("namespace") or "default", meta["name"])] = obj
        elif kind == "PersistentVolume":
            self.pvs[meta["name"]] = obj
        elif kind == "StorageClass":
            self.classes[meta["name"]] = obj
        else:
            raise ValueError(f"FakeVolumeLookups keeps PVCs, PVs and StorageClasses, not {kind}")

    def _call(self) -> None:
        self.calls += 1
        if self.fail:
            raise LookupFailed("API server unreachable")

    def get_pvc(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self._call()
        return self.pvcs.get((namespace, name))

    def get_pv(self, name: str) -> Mapping[str, Any] | None:
        self._call()
        return self.pvs.get(name)

    def get_storage_class(self, name: str) -> Mapping[str, Any] | None:
        self._call()
        return self.classes.get(name)
