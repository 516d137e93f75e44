"""The ``Dataset`` custom resource definition (``fluidfs.io/v1alpha1``): its OpenAPI schema.

:func:`crd` returns the CustomResourceDefinition object; ``tools/gen_crd.py`` writes it into
the chart (``helm/fluidfs/templates/dataset-crd.yaml``), and a test keeps the two equal.

``spec`` is derived from the pydantic models the controller parses a resource with
(``fluidfs.control.schema``: the fluidfs Dataset document's spec, its settings sections built
from the settings table, plus the cache workers and ``autoscaling``): :func:`structural` turns
their JSON Schema into the structural OpenAPI schema the API server wants (references inlined,
"or null" dropped, string-or-number values as ``x-kubernetes-int-or-string``, pydantic's titles
and defaults left out).  So a setting added to the table is in the CRD after
``python -m tools.gen_crd``, with no line here.  ``status`` is written by fluidfs-controller
and declared here.  The scale subresource maps ``spec.cache.replicas`` (what an HPA or KEDA
sets, used by the ``manual`` policy) and ``status.replicas``.

The API server checks types, enums, ranges of the workers' numbers, unknown fields (with the
field path) and ``minWorkers <= maxWorkers``; what a schema cannot express (a size or a duration
that does not parse, unique mount names, non-overlapping paths, option values) is checked by
the controller (``fluidfs.control.resource``), which reports it in the status.

Caveats: a fractional number where a size or duration is expected must be quoted (``"1.5"``):
the schema's int-or-string takes whole numbers and strings only.  A value accepted by a union
the API server cannot express otherwise (e.g. a boolean or a string) is not checked by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fluidfs.control import schema as resource_schema
from fluidfs.spec.fields import FLUID_API_VERSION

GROUP, VERSION, KIND, PLURAL, SINGULAR = "fluidfs.io", "v1alpha1", "Dataset", "datasets", "dataset"
API_VERSION = f"{GROUP}/{VERSION}"
NAME = f"{PLURAL}.{GROUP}"

Schema = dict[str, Any]

#: JSON Schema keywords a structural schema keeps as they are
_KEEP = frozenset({"type", "description", "enum", "pattern", "minimum", "maximum", "minItems", "maxItems",
                   "minLength", "maxLength", "required", "format", "x-kubernetes-int-or-string",
                   "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations"})  # fmt: skip
_SCALARS = frozenset({"string", "integer", "number"})


def _obj(description: str, properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "description": description, "properties": properties, **extra}
    if required:
        out["required"] = required
    return out


def structural(json_schema: Mapping[str, Any]) -> Schema:
    """A pydantic JSON Schema made structural: ``$ref`` inlined, ``X or null`` -> X, a union of
    scalars -> ``x-kubernetes-int-or-string``, any other union -> any value (checked by the
    controller), ``additionalProperties: false`` left to the API server's pruning."""
    defs: Mapping[str, Any] = json_schema.get("$defs") or {}

    def convert(node: Mapping[str, Any]) -> Schema:
        node = dict(node)
        ref = node.pop("$ref", None)
        if isinstance(ref, str):
            node = {**defs[ref.rsplit("/", 1)[-1]], **node}
        union = node.pop("anyOf", None)
        if union is not None:
            options = [o for o in union if o.get("type") != "null"]
            if len(options) == 1:
                node = {**options[0], **node}
                return convert(node)
            if all(set(o) == {"type"} and o["type"] in _SCALARS for o in options):
                node["x-kubernetes-int-or-string"] = True
            else:
                node["x-kubernetes-preserve-unknown-fields"] = True
        out: Schema = {}
        for key, value in node.items():
            if key == "properties":
                out[key] = {name: convert(child) for name, child in value.items()}
            elif key == "items":
                out[key] = convert(value)
            elif key == "additionalProperties":
                if isinstance(value, Mapping):
                    out[key] = convert(value)
            elif key in _KEEP:
                out[key] = value
        if "properties" in out and "additionalProperties" in out:
            del out["additionalProperties"]  # a structural schema has one or the other
        if node.get("additionalProperties") is True and "properties" in out:
            out["x-kubernetes-preserve-unknown-fields"] = True  # lenient (Fluid) objects keep the rest
        first: Schema = {k: out.pop(k) for k in ("type", "description") if k in out}
        return {**first, **out}

    return convert(json_schema)


def spec_schema() -> Schema:
    """``spec``: the resource models' schema, made structural."""
    out = structural(resource_schema.json_schema())
    out["description"] = (
        "The Dataset: its sources (as in a fluidfs Dataset document or a Fluid Dataset), its settings and its cache."
    )
    cache = out["properties"]["cache"]
    cache["x-kubernetes-validations"] = [
        {
            "rule": "!has(self.minWorkers) || !has(self.maxWorkers) || self.minWorkers <= self.maxWorkers",
            "message": "minWorkers must not exceed maxWorkers",
        }
    ]
    return out


def status_schema() -> Schema:
    integer = {"type": "integer", "format": "int64", "minimum": 0}
    number = {"type": "number"}
    condition = _obj(
        "A condition (Ready, Scaling, SpecValid, SignalsComplete).",
        {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": integer,
        },
        ["type", "status"],
    )
    node = _obj(
        "Cache held on one node by one member.",
        {
            "node": {"type": "string"},
            "member": {"type": "string", "description": "Pod of the mount daemon or worker."},
            "role": {"type": "string", "enum": ["mount", "worker"]},
            "cachedBytes": integer,
            "capacityBytes": integer,
        },
    )
    scaling = _obj(
        "The last scaling change.",
        {
            "time": {"type": "string", "format": "date-time"},
            "from": integer,
            "to": integer,
            "direction": {"type": "string", "enum": ["up", "down"]},
            "action": {"type": "string"},
            "reason": {"type": "string"},
        },
    )
    return _obj(
        "Written by fluidfs-controller.",
        {
            "phase": {"type": "string", "enum": ["Pending", "Ready", "Scaling", "Failed", "Terminating"]},
            "message": {"type": "string"},
            "observedGeneration": integer,
            "policy": {"type": "string"},
            "replicas": {**integer, "description": "Cache workers the StatefulSet asks for."},
            "readyReplicas": integer,
            "recommendedReplicas": {**integer, "description": "What the autoscaler recommends now."},
            "selector": {"type": "string", "description": "Label selector of the worker pods (scale subresource)."},
            "workers": {"type": "string", "description": "ready/desired, e.g. 2/3."},
            "cachedBytes": integer,
            "capacityBytes": integer,
            "datasetBytes": {**integer, "description": "The dataset's size, when a member has listed all of it."},
            "datasetBytesSeen": {**integer, "description": "Bytes of the files the members have seen (a lower bound)."},
            "cachedPercentage": {
                "type": "string",
                "description": "Bytes cached / dataset size, e.g. 42%; <=42% while the size is only a lower bound.",
            },
            "members": _obj(
                "Members whose metrics were read in the last sample: node mounts and cache workers.",
                {"mounts": integer, "workers": integer},
            ),
            "inputRate": {"type": "string", "description": "Bytes delivered to training processes, e.g. 310MiB/s."},
            "input": _obj(
                "The signals of the last interval.",
                {
                    "bytesPerSecond": number,
                    "readsPerSecond": number,
                    "stallSecondsPerSecond": number,
                    "stallShare": number,
                    "hitRatio": number,
                    "lookupHitRatio": number,
                    "sourceBytesPerSecond": number,
                    "cacheFill": number,
                    "sampledAt": {"type": "string", "format": "date-time"},
                    "complete": {"type": "boolean"},
                    "problems": {"type": "array", "items": {"type": "string"}},
                },
            ),
            "nodes": {"type": "array", "description": "Per-node cache (at most 100 entries).", "items": node},
            "lastScaling": scaling,
            "lastDecision": {"type": "string", "description": "Why the worker count is what it is."},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        },
    )


def openapi_schema() -> Schema:
    return _obj(
        f"A dataset served by fluidfs, with its elastic cache. Mounts of a Fluid {FLUID_API_VERSION} Dataset "
        f"carry over by changing apiVersion.",
        {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        ["spec"],
    )


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Cached", "type": "string", "jsonPath": ".status.cachedPercentage"},
    {"name": "Workers", "type": "string", "jsonPath": ".status.workers"},
    {"name": "Input", "type": "string", "jsonPath": ".status.inputRate"},
    {"name": "Decision", "type": "string", "jsonPath": ".status.lastDecision"},
    {"name": "Policy", "type": "string", "jsonPath": ".spec.cache.autoscaling.policy", "priority": 1},
    {"name": "Recommended", "type": "integer", "jsonPath": ".status.recommendedReplicas", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object (without the chart's labels)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": ["fds"],
                "categories": ["fluidfs"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.cache.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }
