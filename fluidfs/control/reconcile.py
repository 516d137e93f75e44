"""Plain reconcile functions: desired vs observed objects → actions, and the Dataset's status.

``plan`` compares the objects a Dataset should have (``fluidfs.control.objects.desired``) with
what the cluster holds and returns the :class:`Action` list that makes them equal: create what
is missing, replace what drifted (by the ``fluidfs.io/spec-hash`` annotation, keeping the
StatefulSet's replica count, which only the autoscaler changes through the scale subresource),
recreate a StatefulSet whose immutable fields changed, and refuse to touch an object of the same
name that this Dataset does not own.  ``status`` builds the status subresource from the
observed StatefulSet, the latest signal sample and the autoscaler's decision.

Nothing here calls the API: ``fluidfs.control.controller`` executes the actions.

Caveats: drift is detected from the annotation, not by a field-by-field comparison: a manual
edit of a managed object that leaves the annotation alone is not reverted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fluidfs.control.adapter import Obj
from fluidfs.control.autoscaler import Decision
from fluidfs.control.objects import IMMUTABLE_HASH, SPEC_HASH
from fluidfs.control.signals import Sample
from fluidfs.util.sizes import format_size

MAX_NODES = 100  # entries of status.nodes


@dataclass(frozen=True)
class Action:
    verb: str  # create | replace | recreate | conflict
    obj: Obj
    why: str = ""


def _annotation(obj: Mapping[str, Any], key: str) -> str:
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(key, ""))


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def plan(desired: Sequence[Obj], observed: Mapping[str, Obj | None], uid: str) -> list[Action]:
    """Actions that turn ``observed`` (kind -> object or None) into ``desired``."""
    actions: list[Action] = []
    for want in desired:
        kind, name = want["kind"], want["metadata"]["name"]
        have = observed.get(kind)
        if have is None:
            actions.append(Action("create", want, f"{kind} {name} is missing"))
            continue
        if not owned_by(have, uid):
            actions.append(Action("conflict", want, f"{kind} {name} exists and is not owned by this Dataset"))
            continue
        if kind == "StatefulSet" and _annotation(have, IMMUTABLE_HASH) != _annotation(want, IMMUTABLE_HASH):
            actions.append(Action("recreate", want, f"{kind} {name}: selector, service or volumes changed"))
            continue
        if _annotation(have, SPEC_HASH) != _annotation(want, SPEC_HASH):
            new = copy.deepcopy(want)
            new["metadata"]["resourceVersion"] = have["metadata"].get("resourceVersion", "")
            if kind == "StatefulSet":
                new["spec"]["replicas"] = (have.get("spec") or {}).get("replicas", want["spec"]["replicas"])
            actions.append(Action("replace", new, f"{kind} {name} drifted from the Dataset"))
    return actions


def _rate_text(bps: float | None) -> str:
    return "" if bps is None else f"{format_size(int(bps)).replace(' ', '')}/s"


def condition(ctype: str, ok: bool, reason: str, message: str, generation: int, now: str) -> Obj:
    return {
        "type": ctype,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": now,
        "observedGeneration": generation,
    }


def merge_conditions(old: Sequence[Mapping[str, Any]], new: Sequence[Obj]) -> list[Obj]:
    """``new`` conditions, keeping ``lastTransitionTime`` of those whose status did not change."""
    before = {c.get("type"): c for c in old}
    out = []
    for c in new:
        prev = before.get(c["type"])
        if prev is not None and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
            c = {**c, "lastTransitionTime": prev["lastTransitionTime"]}
        out.append(c)
    return out


def phase(want: int, ready: int, current: int) -> str:
    """Ready when the workers asked for are all ready; Pending while none of them is."""
    if ready >= current == want:
        return "Ready"
    if ready == 0 and current > 0:
        return "Pending"
    return "Scaling"


def status(
    *,
    generation: int,
    policy: str,
    selector: str,
    sts: Mapping[str, Any] | None,
    decision: Decision | None,
    sample: Sample | None,
    recommended: int | None = None,
    last_scaling: Obj | None,
    warnings: Sequence[str],
    old_conditions: Sequence[Mapping[str, Any]],
    now: str,
) -> Obj:
    """The status subresource of a valid Dataset."""
    sts_spec = (sts or {}).get("spec") or {}
    sts_status = (sts or {}).get("status") or {}
    current = int(sts_spec.get("replicas") or 0)
    ready = int(sts_status.get("readyReplicas") or 0)
    want = decision.replicas if decision is not None else current
    out: Obj = {
        "observedGeneration": generation,
        "policy": policy,
        "replicas": current,
        "readyReplicas": ready,
        "recommendedReplicas": want if recommended is None else recommended,
        "selector": selector,
        "workers": f"{ready}/{current}",
        "phase": phase(want, ready, current),
        "warnings": list(warnings)[:20],
    }
    if decision is not None:
        out["lastDecision"] = decision.reason[:1000]
    if last_scaling is not None:
        out["lastScaling"] = last_scaling
    signals_ok = sample is not None and not sample.partial
    if sample is not None:
        out["input"] = _input(sample, now)
        if sample.delivered_bps is not None:
            out["inputRate"] = _rate_text(sample.delivered_bps)
        if sample.used_bytes is not None:
            out["cachedBytes"] = sample.used_bytes
            out["capacityBytes"] = sample.capacity_bytes or 0
        out["members"] = {"mounts": sample.clients, "workers": sample.workers}
        if sample.dataset_bytes:
            out["datasetBytes"] = sample.dataset_bytes
        elif sample.dataset_bytes_seen:
            out["datasetBytesSeen"] = sample.dataset_bytes_seen
        if sample.cached_fraction is not None:
            out["cachedPercentage"] = f"{sample.cached_fraction * 100:.0f}%"
        elif sample.used_bytes is not None and sample.dataset_bytes_seen:
            # the size seen is a lower bound of the dataset's: this is an upper bound of the share
            out["cachedPercentage"] = f"<={min(1.0, sample.used_bytes / sample.dataset_bytes_seen) * 100:.0f}%"
        nodes = [
            {
                "node": m.node,
                "member": m.name,
                "role": m.role,
                "cachedBytes": m.used_bytes,
                "capacityBytes": m.quota_bytes,
            }
            for m in sorted(sample.members, key=lambda m: (-m.used_bytes, m.name))[:MAX_NODES]
        ]
        out["nodes"] = nodes
    why = "; ".join(sample.problems[:5]) if sample is not None and sample.problems else "no sample yet"
    conds = [
        condition("SpecValid", True, "Valid", "the Dataset is valid", generation, now),
        condition(
            "Ready",
            out["phase"] == "Ready",
            out["phase"],
            f"{ready} of {current} workers ready",
            generation,
            now,
        ),
        condition(
            "SignalsComplete",
            signals_ok,
            "Complete" if signals_ok else "Partial",
            "every member's metrics were read" if signals_ok else why,
            generation,
            now,
        ),
    ]
    out["conditions"] = merge_conditions(old_conditions, conds)
    out["message"] = "" if out["phase"] == "Ready" else f"{ready} of {current} workers ready"
    return out


def _input(s: Sample, now: str) -> Obj:
    out: Obj = {"sampledAt": now, "complete": not s.partial}
    for key, value in (
        ("bytesPerSecond", s.delivered_bps),
        ("readsPerSecond", s.reads_per_s),
        ("stallSecondsPerSecond", s.stall),
        ("stallShare", s.stall_share),
        ("hitRatio", s.hit_ratio),
        ("lookupHitRatio", s.lookup_hit_ratio),
        ("sourceBytesPerSecond", s.source_bps),
        ("cacheFill", s.fill),
    ):
        if value is not None:
            out[key] = round(float(value), 4)
    if s.problems:
        out["problems"] = list(s.problems[:10])
    return out


def failed_status(generation: int, message: str, old_conditions: Sequence[Mapping[str, Any]], now: str) -> Obj:
    """The status of a Dataset whose spec the controller cannot act on."""
    cond = condition("SpecValid", False, "Invalid", message, generation, now)
    return {
        "observedGeneration": generation,
        "phase": "Failed",
        "message": message[:1000],
        "conditions": merge_conditions(old_conditions, [cond]),
    }


def scaling_record(decision: Decision, before: int, now: str) -> Obj:
    return {
        "time": now,
        "from": before,
        "to": decision.replicas,
        "direction": decision.direction,
        "action": decision.action,
        "reason": decision.reason[:1000],
    }
