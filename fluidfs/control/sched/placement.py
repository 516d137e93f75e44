"""Cache-affinity placement: the node affinity that draws a pod to the nodes holding its datasets.

A pod reading fluidfs datasets gets *preferred* node affinity terms over the cache labels
(``cache.fluidfs.io/<key>``, see ``locations``): for each dataset, ``levels`` terms
``<label> Gt <threshold>`` at 1/levels, 2/levels, ... of the largest amount any node holds, each
weighing ``100/levels`` (scaled down for a dataset with less cached than the pod's largest one).
A node's NodeAffinity score is then the sum of the terms it matches: about 100 x (bytes it
holds / most bytes any node holds), in steps of 1/levels, so the scheduler prefers the nodes
holding most, without ever keeping a pod Pending (fluid issues 467, 1729).

With the pod annotation ``fluidfs.io/cache-affinity: required`` the pod also gets a *required*
term: the node must hold some of every dataset the pod reads (``Exists`` on each label) —
unless no node holds them all (the pod would never schedule) or the user wrote required terms of
their own (a new term would be ORed with theirs and widen them). ``disabled`` (or ``none``)
leaves the pod alone.

The terms name labels, not nodes: a pod that waits keeps following the cache as labels change,
and the patch stays small however many nodes hold a dataset.

Merging never replaces anything the user wrote: the JSONPatch only adds (the affinity, the node
affinity, or terms appended to the preferred list), and a pod that already has a
``cache.fluidfs.io/`` term is left as it is (a second webhook call adds nothing).

``preferred_score`` and ``required_matches`` evaluate node affinity against a node's labels the
way kube-scheduler's NodeAffinity plugin does; the simulator places pods with them.

Caveats: the score is a lower bound in steps (labels are bucketed, thresholds are coarse); the
scheduler weighs it against its other scores (NodeAffinity has weight 2 in the default profile),
so a busy node holding the cache may still lose to an idle one — as intended for *preferred*.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .locations import CacheLocations, bucket_mib, label_name

log = logging.getLogger(__name__)

ANNOTATION = "fluidfs.io/cache-affinity"
DEFAULT_LEVELS = 4
_PREFIX = "cache.fluidfs.io/"
_PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"
_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


class Mode(str, Enum):
    PREFERRED = "preferred"
    REQUIRED = "required"
    DISABLED = "disabled"


def parse_mode(annotations: Mapping[str, Any] | None) -> tuple[Mode, str | None]:
    """The affinity mode a pod asks for, and a warning when its annotation is not understood."""
    raw = (annotations or {}).get(ANNOTATION)
    if raw is None:
        return Mode.PREFERRED, None
    value = str(raw).strip().lower()
    if value in ("", "preferred"):
        return Mode.PREFERRED, None
    if value == "required":
        return Mode.REQUIRED, None
    if value in ("disabled", "none", "false", "off"):
        return Mode.DISABLED, None
    return Mode.PREFERRED, f"{ANNOTATION}: {str(raw)!r} is not one of preferred, required, disabled; using preferred"


@dataclass(frozen=True)
class CacheAffinity:
    """What a pod should get: preferred terms, an optional required term, and warnings."""

    preferred: tuple[dict[str, Any], ...] = ()
    required: dict[str, Any] | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def cache_affinity(
    keys: Sequence[str],
    locations: CacheLocations,
    *,
    mode: Mode = Mode.PREFERRED,
    levels: int = DEFAULT_LEVELS,
) -> CacheAffinity:
    """The affinity towards the nodes holding datasets ``keys`` (see the module docstring)."""
    if mode is Mode.DISABLED or not keys:
        return CacheAffinity()
    if levels < 1:
        raise ValueError(f"levels must be >= 1, not {levels}")
    top = {k: max((bucket_mib(b) for b in locations.nodes(k).values()), default=0) for k in dict.fromkeys(keys)}
    overall = max(top.values(), default=0)
    warnings: list[str] = []
    terms: list[dict[str, Any]] = []
    for key, vmax in top.items():
        if vmax <= 0:
            continue
        scale = vmax / overall
        weights: dict[int, int] = {}
        for i in range(1, levels + 1):
            threshold = max(1, math.ceil(vmax * i / levels))
            weights[threshold] = weights.get(threshold, 0) + max(1, round(100 / levels * scale))
        for threshold, weight in sorted(weights.items()):
            expr = {"key": label_name(key), "operator": "Gt", "values": [str(threshold - 1)]}
            terms.append({"weight": min(100, weight), "preference": {"matchExpressions": [expr]}})
    required = None
    if mode is Mode.REQUIRED:
        holders: set[str] | None = None
        for key in top:
            nodes = set(locations.nodes(key))
            holders = nodes if holders is None else holders & nodes
        if holders:
            exprs = [{"key": label_name(k), "operator": "Exists"} for k in top]
            required = {"matchExpressions": exprs}
        else:
            warnings.append(
                f"{ANNOTATION}: required, but no node holds the cache of every dataset of this pod; "
                "using preferred affinity only"
            )
    return CacheAffinity(tuple(terms), required, tuple(warnings))


def _has_cache_terms(node_affinity: Mapping[str, Any]) -> bool:
    def exprs_of(term: Any) -> list[Any]:
        if not isinstance(term, Mapping):
            return []
        got = term.get("matchExpressions")
        return list(got) if isinstance(got, list) else []

    found: list[Any] = []
    for pref in node_affinity.get(_PREFERRED) or []:
        if isinstance(pref, Mapping):
            found += exprs_of(pref.get("preference"))
    req = node_affinity.get(_REQUIRED)
    if isinstance(req, Mapping):
        for term in req.get("nodeSelectorTerms") or []:
            found += exprs_of(term)
    return any(isinstance(e, Mapping) and str(e.get("key", "")).startswith(_PREFIX) for e in found)


def merge_patch(pod: Mapping[str, Any], aff: CacheAffinity) -> tuple[list[dict[str, Any]], list[str]]:
    """JSONPatch operations (RFC 6902) adding ``aff`` to ``pod`` without replacing anything the
    user wrote, and the warnings to return with them."""
    warnings = list(aff.warnings)
    spec = pod.get("spec")
    if not isinstance(spec, Mapping) or (not aff.preferred and aff.required is None):
        return [], warnings
    affinity = spec.get("affinity")
    node_aff = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
    required = aff.required
    if isinstance(node_aff, Mapping):
        if _has_cache_terms(node_aff):
            return [], warnings
        if required is not None and node_aff.get(_REQUIRED) is not None:
            warnings.append(
                f"{ANNOTATION}: required, but the pod has required node affinity of its own; "
                "left as written, cache affinity added as preferred only"
            )
            required = None
    new_node_aff: dict[str, Any] = {}
    if aff.preferred:
        new_node_aff[_PREFERRED] = [dict(t) for t in aff.preferred]
    if required is not None:
        new_node_aff[_REQUIRED] = {"nodeSelectorTerms": [required]}
    if not new_node_aff:
        return [], warnings
    if not isinstance(affinity, Mapping):
        return [{"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": new_node_aff}}], warnings
    if not isinstance(node_aff, Mapping):
        return [{"op": "add", "path": "/spec/affinity/nodeAffinity", "value": new_node_aff}], warnings
    ops: list[dict[str, Any]] = []
    base = "/spec/affinity/nodeAffinity"
    if aff.preferred:
        if isinstance(node_aff.get(_PREFERRED), list):
            ops += [{"op": "add", "path": f"{base}/{_PREFERRED}/-", "value": dict(t)} for t in aff.preferred]
        else:
            ops.append({"op": "add", "path": f"{base}/{_PREFERRED}", "value": new_node_aff[_PREFERRED]})
    if required is not None:
        ops.append({"op": "add", "path": f"{base}/{_REQUIRED}", "value": new_node_aff[_REQUIRED]})
    return ops, warnings


# ---------------------------------------------------------------------------- evaluation


def _int(text: Any) -> int | None:
    try:
        return int(str(text))
    except ValueError:
        return None


def expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """One NodeSelectorRequirement against a node's labels (kube-scheduler semantics)."""
    key = str(expr.get("key", ""))
    op = expr.get("operator")
    values = [str(v) for v in expr.get("values") or []]
    present = key in labels
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op == "In":
        return present and labels[key] in values
    if op == "NotIn":
        return not present or labels[key] not in values
    if op in ("Gt", "Lt") and present and len(values) == 1:
        have, want = _int(labels[key]), _int(values[0])
        if have is None or want is None:
            return False
        return have > want if op == "Gt" else have < want
    return False


def term_matches(term: Mapping[str, Any], labels: Mapping[str, str], node_name: str = "") -> bool:
    """A NodeSelectorTerm: all its expressions and fields match (an empty term matches nothing)."""
    exprs = list(term.get("matchExpressions") or [])
    fields = list(term.get("matchFields") or [])
    if not exprs and not fields:
        return False
    if not all(expression_matches(e, labels) for e in exprs):
        return False
    return all(expression_matches(f, {"metadata.name": node_name}) for f in fields)


def required_matches(node_affinity: Mapping[str, Any] | None, labels: Mapping[str, str], node_name: str = "") -> bool:
    """Whether a node passes the required node affinity (terms ORed; none means any node)."""
    req = (node_affinity or {}).get(_REQUIRED)
    if not isinstance(req, Mapping):
        return True
    return any(term_matches(t, labels, node_name) for t in req.get("nodeSelectorTerms") or [])


def preferred_score(node_affinity: Mapping[str, Any] | None, labels: Mapping[str, str], node_name: str = "") -> int:
    """kube-scheduler's raw NodeAffinity score: the sum of the weights of matching preferred terms."""
    total = 0
    for pref in (node_affinity or {}).get(_PREFERRED) or []:
        if term_matches(pref.get("preference") or {}, labels, node_name):
            total += int(pref.get("weight", 0))
    return total


def as_node_affinity(aff: CacheAffinity) -> dict[str, Any]:
    """``aff`` as a ``nodeAffinity`` object (for a pod that has none)."""
    out: dict[str, Any] = {}
    if aff.preferred:
        out[_PREFERRED] = [dict(t) for t in aff.preferred]
    if aff.required is not None:
        out[_REQUIRED] = {"nodeSelectorTerms": [aff.required]}
    return out
