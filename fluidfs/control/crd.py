"""The ``Dataset`` custom resource definition (``fluidfs.io/v1alpha1``): its OpenAPI schema.

:func:`crd` returns the CustomResourceDefinition object; ``tools/gen_crd.py`` writes it into
the chart (``helm/fluidfs/templates/dataset-crd.yaml``), and a test keeps the two equal.

``spec`` is the spec of a fluidfs Dataset document (``docs/dataset.md``: ``mounts``,
``cache``, ``metadata``), so a Fluid ``data.fluid.io`` Dataset's ``mounts`` (with
``encryptOptions``) carry over by changing ``apiVersion``; Fluid's other spec fields are
accepted and ignored.  ``spec.cache`` adds the cache workers (``minWorkers``, ``maxWorkers``,
``replicas``, ``worker``) and ``autoscaling``; ``spec.cluster`` the workers' cluster protocol
settings (the document's ``spec.cluster`` without what the controller sets).  ``status`` is
written by fluidfs-controller.  The scale subresource maps ``spec.cache.replicas`` (what an HPA
or KEDA sets, used by the ``manual`` policy) and ``status.replicas``.

The schema is structural (every field typed, no unknown fields except in the Fluid fields kept
for compatibility), so the API server rejects malformed Datasets with the field path; checks the
schema cannot express (mount names unique, paths not overlapping, ``minWorkers <= maxWorkers``)
are made by the controller (``fluidfs.control.resource``), which reports them in the status.

Caveats: credentials in a Dataset resource must be ``secretKeyRef``s (the controller hands them
to the workers as environment variables from the Secret, in the Dataset's namespace); ``env``
and ``file`` references only make sense in a document given to ``fluidfs mount``.  Option
values are strings (as in Fluid): quote ``"true"``.
"""

from __future__ import annotations

from typing import Any

from fluidfs.control import autoscaler
from fluidfs.spec.fields import CREDENTIAL_NAMES, FLUID_API_VERSION

GROUP, VERSION, KIND, PLURAL, SINGULAR = "fluidfs.io", "v1alpha1", "Dataset", "datasets", "dataset"
API_VERSION = f"{GROUP}/{VERSION}"
NAME = f"{PLURAL}.{GROUP}"

Schema = dict[str, Any]

#: a byte size as fluidfs parses it (docs/dataset.md)
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?([kKmMgGtTpP]i?)?[bB]?$"
#: seconds, or a number with units ms/s/m/h/d, or indefinite
DURATION_PATTERN = r"^(([0-9]+(\.[0-9]+)?)|(([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+)|indefinite|inf|infinity|forever|never)$"
FINITE_DURATION_PATTERN = r"^(([0-9]+(\.[0-9]+)?)|(([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+))$"
MOUNT_POINT_PATTERN = r"^((s3|https?|local|file)://.+|/.*)$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _str(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _size(description: str) -> Schema:
    return _str(description + " A size: 512Mi, 10Gi, 1.5Ti, 10G.", pattern=SIZE_PATTERN)


def _duration(description: str, finite: bool = True) -> Schema:
    return _str(
        description + " A duration: 30s, 5m, 1h30m" + ("." if finite else ", or indefinite."),
        pattern=FINITE_DURATION_PATTERN if finite else DURATION_PATTERN,
    )


def _obj(description: str, properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "description": description, "properties": properties, **extra}
    if required:
        out["required"] = required
    return out


def _secret_key_ref() -> Schema:
    return _obj(
        "A key of a Secret in the Dataset's namespace.",
        {"name": _str("Secret name.", minLength=1), "key": _str("Key in the Secret.", minLength=1)},
        ["name", "key"],
    )


def _preserved(description: str, kind: str = "object") -> Schema:
    """A Fluid field accepted for compatibility and ignored (kept as written)."""
    base: Schema = {"description": description + " (Fluid compatibility; ignored by fluidfs.)"}
    if kind == "array":
        return {**base, "type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    if kind == "string":
        return {**base, "type": "string"}
    if kind == "strings":
        return {**base, "type": "array", "items": {"type": "string"}}
    return {**base, "type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _encrypt_options(description: str) -> Schema:
    item = _obj(
        "One credential from a Secret (Fluid's form).",
        {
            "name": _str("Credential name: aws.accessKeyId, fs.s3a.secret.key, accessKeyId, ...", minLength=1),
            "valueFrom": _obj("Where the value comes from.", {"secretKeyRef": _secret_key_ref()}, ["secretKeyRef"]),
        },
        ["name", "valueFrom"],
    )
    return {"type": "array", "description": description, "items": item}


def _options(description: str) -> Schema:
    return {"type": "object", "description": description, "additionalProperties": {"type": "string"}}


def mount_schema() -> Schema:
    creds = {
        name: _obj(f"Where {name} comes from.", {"secretKeyRef": _secret_key_ref()}, ["secretKeyRef"])
        for name in CREDENTIAL_NAMES
    }
    return _obj(
        "One source, and where it appears in the tree (docs/dataset.md, spec.mounts[]).",
        {
            "mountPoint": _str(
                "Where the data lives: s3://bucket[/prefix], http(s)://host/path, local:///abs/path or /abs/path.",
                pattern=MOUNT_POINT_PATTERN,
            ),
            "name": _str("Unique name of the mount, a single path component.", pattern=r"^[^/]+$", maxLength=255),
            "path": _str("Where the mount appears in the tree (absolute); default /<name>.", pattern=r"^/"),
            "options": _options("Source options (endpoint, region, addressing_style, ...); values are strings."),
            "credentials": _obj("Credentials from Secrets in the Dataset's namespace.", creds),
            "encryptOptions": _encrypt_options("Credentials in Fluid's form (data.fluid.io Datasets)."),
            "readOnly": {"type": "boolean", "description": "Must be true if set: fluidfs mounts are read-only."},
        },
        ["mountPoint"],
    )


def cache_schema() -> Schema:
    p = autoscaler.Params()
    b = autoscaler.Bounds()
    autoscaling = _obj(
        "How the number of cache workers follows the training jobs (docs/autoscaling.md).",
        {
            "policy": _str(
                "training-speed (default): add workers while readers stall on misses and more workers raise "
                "the input rate, back to minWorkers when idle; capacity: Fluid's rule, +1 worker at "
                "fullThreshold, never fewer; manual: spec.cache.replicas (set it by hand, or by an HPA/KEDA "
                "through the scale subresource).",
                enum=list(autoscaler.POLICIES),
            ),
            "interval": _duration(f"Time between two samples of the signals (default {p.interval:g}s)."),
            "window": _duration(f"Evaluation window of a step, and the baseline before it (default {p.window:g}s)."),
            "cooldown": _duration(f"Minimum time between two scaling changes (default {p.cooldown:g}s)."),
            "minGain": {
                "type": "number",
                "minimum": 0,
                "maximum": 10,
                "description": f"A step is kept if the input rate rose by this fraction (default {p.min_gain:g}).",
            },
            "stallThreshold": {
                "type": "number",
                "minimum": 0,
                "description": f"Read stall (s/s) that counts as stalling (default {p.stall_threshold:g}).",
            },
            "fullThreshold": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": f"Cluster cache fill that counts as full (default {p.full_threshold:g}).",
            },
            "coldHitRatio": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": f"Block hit ratio below which the cache counts as cold (default {p.cold_hit_ratio:g}).",
            },
            "idleRate": _size("Input rate per second below which the dataset counts as idle (default 1Mi)."),
            "idleAfter": _duration(f"Idle this long ends a job phase: scale in (default {p.idle_after:g}s)."),
        },
    )
    worker = _obj(
        "What each cache worker (a pod of the Dataset's StatefulSet running `fluidfs worker`) looks like.",
        {
            "quota": _size("SSD tier of each worker (default 10Gi)."),
            "memorySize": _size("Memory tier of each worker (default 1Gi)."),
            "storageClassName": _str(
                "StorageClass of each worker's cache volume (a PVC per worker); empty: an emptyDir of the quota's size."
            ),
            "resources": _obj(
                "Compute resources of the worker container; memory defaults to the memory tier plus 512Mi.",
                {
                    "requests": {
                        "type": "object",
                        "additionalProperties": {"x-kubernetes-int-or-string": True},
                    },
                    "limits": {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": True}},
                },
            ),
            "nodeSelector": {
                "type": "object",
                "description": "Node labels the workers must run on.",
                "additionalProperties": {"type": "string"},
            },
            "tolerations": {
                "type": "array",
                "description": "Tolerations of the worker pods.",
                "items": _obj(
                    "A toleration.",
                    {
                        "key": {"type": "string"},
                        "operator": {"type": "string", "enum": ["Exists", "Equal"]},
                        "value": {"type": "string"},
                        "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                        "tolerationSeconds": {"type": "integer", "format": "int64"},
                    },
                ),
            },
            "drainTimeout": _duration(
                "How long a leaving worker may take to hand its blocks over before it is killed (default 2m)."
            ),
        },
    )
    cache = _obj(
        "Cache settings: the node mounts' tiers (as in a Dataset document) and the cache workers.",
        {
            "size": _size("SSD tier quota of each node mount."),
            "memorySize": _size("Memory tier quota of each node mount."),
            "blockSize": _size("Cache block size, 1Mi to 64Mi."),
            "eviction": _str("lru or none (stop caching once full).", enum=["lru", "none"]),
            "readahead": _size("Maximum readahead window."),
            "freeSpaceFloor": _size("Never fill a cache disk below this much free space."),
            "prefetchSiblings": {
                "type": "integer",
                "minimum": 0,
                "description": "Small sibling files prefetched per small-file open (0 disables).",
            },
            "minWorkers": {
                "type": "integer",
                "minimum": 0,
                "maximum": 1000,
                "description": f"Fewest cache workers (default {b.min_workers}).",
            },
            "maxWorkers": {
                "type": "integer",
                "minimum": 0,
                "maximum": 1000,
                "description": f"Most cache workers (default {b.max_workers}).",
            },
            "replicas": {
                "type": "integer",
                "minimum": 0,
                "maximum": 1000,
                "description": "Desired cache workers under the manual policy (the scale subresource's replicas).",
            },
            "worker": worker,
            "autoscaling": autoscaling,
        },
    )
    cache["x-kubernetes-validations"] = [
        {
            "rule": "!has(self.minWorkers) || !has(self.maxWorkers) || self.minWorkers <= self.maxWorkers",
            "message": "minWorkers must not exceed maxWorkers",
        }
    ]
    return cache


def cluster_schema() -> Schema:
    """``spec.cluster``: the cluster protocol settings the controller passes on to the workers."""
    return _obj(
        "The cluster cache of the workers and the node daemons (docs/cluster.md); the controller sets the "
        "membership, addresses, secret and handoff time itself. Give node volumes the same replicas "
        "(CSI clusterReplicas).",
        {
            "replicas": {
                "type": "integer",
                "minimum": 1,
                "maximum": 8,
                "description": "Owners per block, the same on every member (default 1).",
            },
            "peerCopy": _str(
                "Where a worker keeps a block it got from a peer (default memory).", enum=["memory", "ssd", "none"]
            ),
            "connectTimeout": _duration("Connecting to a peer (default 1s)."),
            "readTimeout": _duration("Each socket read of a peer's answer (default 5s)."),
            "fetchTimeout": _duration("An owner fetching a block from the source for a peer (default 15s)."),
            "transfers": {
                "type": "integer",
                "minimum": 1,
                "maximum": 1024,
                "description": "Block transfers served, and requested, at once per worker (default 16).",
            },
            "maxSkew": _duration("Allowed clock difference between members (default 30s)."),
        },
    )


def spec_schema() -> Schema:
    return _obj(
        "The Dataset: its sources (as in a fluidfs Dataset document or a Fluid Dataset) and its cache.",
        {
            "mounts": {"type": "array", "minItems": 1, "description": "The sources, unioned.", "items": mount_schema()},
            "cache": cache_schema(),
            "cluster": cluster_schema(),
            "metadata": _obj(
                "Metadata cache TTLs.",
                {
                    "ttl": _duration("How long listings and attributes are trusted.", finite=False),
                    "negativeTtl": _duration('How long "does not exist" is trusted.', finite=False),
                },
            ),
            "sharedOptions": _options("Options merged into every mount (Fluid's form)."),
            "sharedEncryptOptions": _encrypt_options("Credentials merged into every mount (Fluid's form)."),
            "accessModes": _preserved("Access modes", "strings"),
            "nodeAffinity": _preserved("Node affinity"),
            "placement": _preserved("Placement", "string"),
            "tolerations": _preserved("Tolerations", "array"),
            "runtimes": _preserved("Runtimes", "array"),
            "owner": _preserved("Owner"),
            "dataRestoreLocation": _preserved("Data restore location"),
        },
        ["mounts"],
    )


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
            "datasetBytes": integer,
            "cachedPercentage": {"type": "string", "description": "Bytes cached / dataset size, e.g. 42%."},
            "inputRate": {"type": "string", "description": "Bytes delivered to training processes, e.g. 310MiB/s."},
            "input": _obj(
                "The signals of the last interval.",
                {
                    "bytesPerSecond": number,
                    "readsPerSecond": number,
                    "stallSecondsPerSecond": number,
                    "stallShare": number,
                    "hitRatio": number,
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
    {"name": "Policy", "type": "string", "jsonPath": ".spec.cache.autoscaling.policy", "priority": 1},
    {"name": "Decision", "type": "string", "jsonPath": ".status.lastDecision", "priority": 1},
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
