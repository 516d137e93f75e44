"""A ``Dataset`` custom resource (a dict from the API) parsed into what the controller needs.

:func:`parse` validates the resource beyond its OpenAPI schema with the same parser as
``fluidfs mount`` (``fluidfs.spec``: unique mount names, non-overlapping paths, option values),
and returns a :class:`DatasetResource`: identity (namespace, name, uid, generation), the
fluidfs Dataset, the Dataset *document* handed to the cache workers, the worker shape, the
autoscaler's bounds and parameters.  Mistakes raise ``SpecError`` whose document is
``Dataset <namespace>/<name>`` and whose field path is the resource's (``spec.cache.maxWorkers``).

Mounts in Fluid's form (``encryptOptions``, ``sharedOptions``, Alluxio/Hadoop option names)
are translated by ``fluidfs.spec.fluid``; ignored Fluid fields become ``warnings``.

Credentials: each ``secretKeyRef`` becomes an environment variable of the worker pods
(``valueFrom.secretKeyRef``, so the controller never reads a Secret) and the workers' document
names that variable (``{env: FLUIDFS_M0_SECRET_ACCESS_KEY}``).

Caveats: the controller trusts the API server for the schema; when resources come from files
(the local actuator), unknown fields in ``spec.cache`` are rejected here, but type errors deep
in Fluid-only fields are only warned about.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml

from fluidfs.config.kinds import kind_of
from fluidfs.control import autoscaler
from fluidfs.control.crd import API_VERSION as CR_API_VERSION
from fluidfs.errors import SpecError
from fluidfs.spec.fields import API_VERSION, CREDENTIAL_NAMES, FLUID_API_VERSION, sub, unknown_field
from fluidfs.spec.model import Dataset
from fluidfs.spec.parse import parse_dataset
from fluidfs.util import sizes

log = logging.getLogger(__name__)

#: fluidfs Dataset-document fields of spec.cache (node mounts and workers alike)
DOCUMENT_CACHE_FIELDS = (
    "size", "memorySize", "blockSize", "eviction", "readahead", "freeSpaceFloor", "prefetchSiblings"
)  # fmt: skip
CACHE_FIELDS = (*DOCUMENT_CACHE_FIELDS, "minWorkers", "maxWorkers", "replicas", "worker", "autoscaling")
WORKER_FIELDS = ("quota", "memorySize", "storageClassName", "resources", "nodeSelector", "tolerations", "drainTimeout")
#: fluidfs Dataset-document fields of spec.cluster a Dataset resource may set (the controller sets
#: listen, kubeService, portName, secretFile and handoffTimeout on the workers' command line)
CLUSTER_FIELDS = ("replicas", "peerCopy", "connectTimeout", "readTimeout", "fetchTimeout", "transfers", "maxSkew")
AUTOSCALING_FIELDS = {
    "policy": "policy",
    "interval": "interval",
    "window": "window",
    "cooldown": "cooldown",
    "minGain": "min_gain",
    "stallThreshold": "stall_threshold",
    "fullThreshold": "full_threshold",
    "coldHitRatio": "cold_hit_ratio",
    "idleRate": "idle_rate",
    "idleAfter": "idle_after",
}
_FLUID_SPEC = ("sharedOptions", "sharedEncryptOptions")
_IGNORED_FLUID_SPEC = ("accessModes", "nodeAffinity", "placement", "tolerations", "runtimes", "owner",
                       "dataRestoreLocation")  # fmt: skip
_CAMEL = {v: k for k, v in CREDENTIAL_NAMES.items()}
DEFAULT_QUOTA, DEFAULT_MEMORY, DEFAULT_DRAIN = 10 << 30, 1 << 30, 120.0


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable of the worker pods taken from a Secret key."""

    env: str
    secret: str
    key: str


@dataclass(frozen=True)
class WorkerSpec:
    """``spec.cache.worker``: the shape of each cache worker."""

    quota: int = DEFAULT_QUOTA
    memory_size: int = DEFAULT_MEMORY
    storage_class: str = ""
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    drain_timeout: float = DEFAULT_DRAIN


@dataclass(frozen=True)
class DatasetResource:
    """A parsed Dataset resource."""

    namespace: str
    name: str
    uid: str
    generation: int
    dataset: Dataset
    document: Mapping[str, Any]  # the fluidfs.io document the workers get
    secret_env: tuple[SecretEnv, ...]
    worker: WorkerSpec
    bounds: autoscaler.Bounds
    params: autoscaler.Params
    warnings: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Meta:
    """The metadata of a resource that the controller acts on even when its spec is invalid."""

    namespace: str
    name: str
    uid: str
    generation: int
    deleting: bool
    finalizers: tuple[str, ...]
    resource_version: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def meta_of(obj: Mapping[str, Any]) -> Meta:
    m = obj.get("metadata") or {}
    return Meta(
        namespace=str(m.get("namespace") or "default"),
        name=str(m.get("name") or ""),
        uid=str(m.get("uid") or ""),
        generation=int(m.get("generation") or 0),
        deleting=bool(m.get("deletionTimestamp")),
        finalizers=tuple(m.get("finalizers") or ()),
        resource_version=str(m.get("resourceVersion") or ""),
    )


class Ctx:
    """Where a resource's mistakes are reported: ``fail`` raises ``SpecError(document, field, problem)``."""

    def __init__(self, document: str) -> None:
        self.document = document

    def fail(self, field: str, problem: str) -> NoReturn:
        raise SpecError(self.document, field, problem)


def mapping(ctx: Ctx, value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        ctx.fail(field, f"must be a mapping, got {kind_of(value)}")
    return value


def check_keys(ctx: Ctx, m: Mapping[Any, Any], field: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in m:
        if key not in allowed:
            ctx.fail(sub(field, key), unknown_field(key, allowed))


def _int(ctx: Ctx, value: object, field: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        ctx.fail(field, f"must be a whole number >= 0, got {value!r}")
    return value


def _num(ctx: Ctx, value: object, field: str, default: float, maximum: float = math.inf) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= maximum:
        bound = f" and <= {maximum:g}" if maximum != math.inf else ""
        ctx.fail(field, f"must be a number >= 0{bound}, got {value!r}")
    return float(value)


def _size(ctx: Ctx, value: object, field: str, default: int) -> int:
    if value is None:
        return default
    try:
        return sizes.parse_size(value)  # type: ignore[arg-type]
    except ValueError as e:
        ctx.fail(field, str(e))


def _duration(ctx: Ctx, value: object, field: str, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = sizes.parse_duration(value)  # type: ignore[arg-type]
    except ValueError as e:
        ctx.fail(field, str(e))
    if math.isinf(seconds):
        ctx.fail(field, "must be finite")
    return seconds


def _params(ctx: Ctx, raw: object) -> autoscaler.Params:
    if raw is None:
        return autoscaler.Params()
    m = mapping(ctx, raw, "spec.cache.autoscaling")
    check_keys(ctx, m, "spec.cache.autoscaling", AUTOSCALING_FIELDS)
    d = autoscaler.Params()
    f = "spec.cache.autoscaling."
    policy = m.get("policy", d.policy)
    if policy not in autoscaler.POLICIES:
        ctx.fail(f + "policy", f"must be one of {', '.join(autoscaler.POLICIES)}, got {policy!r}")
    params = autoscaler.Params(
        policy=policy,
        interval=_duration(ctx, m.get("interval"), f + "interval", d.interval),
        window=_duration(ctx, m.get("window"), f + "window", d.window),
        cooldown=_duration(ctx, m.get("cooldown"), f + "cooldown", d.cooldown),
        min_gain=_num(ctx, m.get("minGain"), f + "minGain", d.min_gain, 10),
        stall_threshold=_num(ctx, m.get("stallThreshold"), f + "stallThreshold", d.stall_threshold),
        full_threshold=_num(ctx, m.get("fullThreshold"), f + "fullThreshold", d.full_threshold, 1),
        cold_hit_ratio=_num(ctx, m.get("coldHitRatio"), f + "coldHitRatio", d.cold_hit_ratio, 1),
        idle_rate=float(_size(ctx, m.get("idleRate"), f + "idleRate", int(d.idle_rate))),
        idle_after=_duration(ctx, m.get("idleAfter"), f + "idleAfter", d.idle_after),
    )
    if params.interval <= 0:
        ctx.fail(f + "interval", "must be more than 0")
    return params


def _worker(ctx: Ctx, raw: object) -> WorkerSpec:
    if raw is None:
        return WorkerSpec()
    f = "spec.cache.worker"
    m = mapping(ctx, raw, f)
    check_keys(ctx, m, f, WORKER_FIELDS)
    storage_class = m.get("storageClassName") or ""
    if not isinstance(storage_class, str):
        ctx.fail(f + ".storageClassName", f"must be a string, got {kind_of(storage_class)}")
    resources = m.get("resources") or {}
    node_selector = m.get("nodeSelector") or {}
    tolerations = m.get("tolerations") or []
    for key, value, want in (("resources", resources, dict), ("nodeSelector", node_selector, dict),
                             ("tolerations", tolerations, list)):  # fmt: skip
        if not isinstance(value, want):
            ctx.fail(f"{f}.{key}", f"must be a {'mapping' if want is dict else 'list'}, got {kind_of(value)}")
    return WorkerSpec(
        quota=_size(ctx, m.get("quota"), f + ".quota", DEFAULT_QUOTA),
        memory_size=_size(ctx, m.get("memorySize"), f + ".memorySize", DEFAULT_MEMORY),
        storage_class=storage_class,
        resources=resources,
        node_selector={str(k): str(v) for k, v in node_selector.items()},
        tolerations=tuple(tolerations),
        drain_timeout=_duration(ctx, m.get("drainTimeout"), f + ".drainTimeout", DEFAULT_DRAIN),
    )


def _fluid_mounts(ctx: Ctx, name: str, spec: Mapping[str, Any], document: str) -> tuple[list[Any], list[str]]:
    """Translate Fluid-form mounts into fluidfs-form mounts; returns (mounts, warnings)."""
    fluid_spec = {k: spec[k] for k in ("mounts", *_FLUID_SPEC) if k in spec}
    doc = {"apiVersion": FLUID_API_VERSION, "kind": "Dataset", "metadata": {"name": name}, "spec": fluid_spec}
    ds = parse_dataset(yaml.safe_dump(doc), document)
    mounts: list[Any] = []
    for m in ds.mounts:
        creds = {
            _CAMEL.get(k, k): {"secretKeyRef": {"name": ref.secret_name, "key": ref.secret_key}}
            for k, ref in m.credentials.items()
        }
        mount: dict[str, Any] = {"mountPoint": m.url, "name": m.name, "path": m.path}
        if m.options:
            mount["options"] = dict(m.options)
        if creds:
            mount["credentials"] = creds
        mounts.append(mount)
    return mounts, list(ds.warnings)


def _secret_env(mounts: list[Any]) -> tuple[list[Any], tuple[SecretEnv, ...]]:
    """Replace every secretKeyRef by an env reference; returns (mounts, env vars)."""
    out: list[Any] = []
    env: list[SecretEnv] = []
    for i, raw in enumerate(mounts):
        m = dict(raw)
        creds = m.get("credentials")
        if isinstance(creds, Mapping):
            new: dict[str, Any] = {}
            for cname, ref in creds.items():
                skr = ref.get("secretKeyRef") if isinstance(ref, Mapping) else None
                if isinstance(skr, Mapping):
                    var = f"FLUIDFS_M{i}_{CREDENTIAL_NAMES.get(str(cname), str(cname)).upper()}"
                    env.append(SecretEnv(var, str(skr.get("name")), str(skr.get("key"))))
                    new[cname] = {"env": var}
                else:
                    new[cname] = ref
            m["credentials"] = new
        out.append(m)
    return out, tuple(env)


def parse(obj: Mapping[str, Any]) -> DatasetResource:
    """Parse a Dataset resource; raises ``SpecError`` naming the resource and the field."""
    meta = meta_of(obj)
    document = f"Dataset {meta.key}"
    ctx = Ctx(document)
    if obj.get("apiVersion") != CR_API_VERSION or obj.get("kind") != "Dataset":
        ctx.fail("apiVersion", f"expected {CR_API_VERSION} Dataset, got {obj.get('apiVersion')} {obj.get('kind')}")
    spec = mapping(ctx, obj.get("spec"), "spec")
    check_keys(ctx, spec, "spec", ("mounts", "cache", "cluster", "metadata", *_FLUID_SPEC, *_IGNORED_FLUID_SPEC))
    warnings = [f"{document}: spec.{k}: ignored (not used by fluidfs)" for k in _IGNORED_FLUID_SPEC if k in spec]
    raw_mounts = spec.get("mounts")
    fluid = any(k in spec for k in _FLUID_SPEC) or (
        isinstance(raw_mounts, list) and any(isinstance(m, Mapping) and "encryptOptions" in m for m in raw_mounts)
    )
    if fluid:
        for i, m in enumerate(raw_mounts if isinstance(raw_mounts, list) else []):
            if isinstance(m, Mapping) and "credentials" in m:
                ctx.fail(f"spec.mounts[{i}].credentials", "use encryptOptions (Fluid's form) in every mount, or "
                         "credentials in every mount, not both")  # fmt: skip
        mounts, fluid_warnings = _fluid_mounts(ctx, meta.name, spec, document)
        warnings += fluid_warnings
    else:
        mounts = raw_mounts  # type: ignore[assignment]
    cache_raw = spec.get("cache")
    cache = {} if cache_raw is None else mapping(ctx, cache_raw, "spec.cache")
    check_keys(ctx, cache, "spec.cache", CACHE_FIELDS)
    doc_cache = {k: cache[k] for k in DOCUMENT_CACHE_FIELDS if cache.get(k) is not None}
    doc_spec: dict[str, Any] = {"mounts": mounts}
    if doc_cache:
        doc_spec["cache"] = doc_cache
    if spec.get("metadata") is not None:
        doc_spec["metadata"] = spec["metadata"]
    if spec.get("cluster") is not None:
        cluster = mapping(ctx, spec["cluster"], "spec.cluster")
        check_keys(ctx, cluster, "spec.cluster", CLUSTER_FIELDS)
        if cluster:
            doc_spec["cluster"] = dict(cluster)
    doc = {"apiVersion": API_VERSION, "kind": "Dataset", "metadata": {"name": meta.name}, "spec": doc_spec}
    dataset = parse_dataset(yaml.safe_dump(doc, sort_keys=False), document)
    worker = _worker(ctx, cache.get("worker"))
    bounds = autoscaler.Bounds(
        min_workers=_int(ctx, cache.get("minWorkers"), "spec.cache.minWorkers", autoscaler.Bounds.min_workers),
        max_workers=_int(ctx, cache.get("maxWorkers"), "spec.cache.maxWorkers", autoscaler.Bounds.max_workers),
        replicas=None if cache.get("replicas") is None else _int(ctx, cache["replicas"], "spec.cache.replicas", 0),
    )
    if bounds.min_workers > bounds.max_workers:
        ctx.fail("spec.cache.minWorkers", f"minWorkers ({bounds.min_workers}) must not exceed maxWorkers "
                 f"({bounds.max_workers})")  # fmt: skip
    params = _params(ctx, cache.get("autoscaling"))
    worker_mounts, env = _secret_env(list(mounts))
    worker_cache = {**doc_cache, "size": str(worker.quota), "memorySize": str(worker.memory_size)}
    worker_doc = {
        "apiVersion": API_VERSION,
        "kind": "Dataset",
        "metadata": {"name": meta.name},
        "spec": {**doc_spec, "mounts": worker_mounts, "cache": worker_cache},
    }
    parse_dataset(yaml.safe_dump(worker_doc, sort_keys=False), document)  # what the workers will read
    for w in warnings:
        log.debug("%s", w)
    return DatasetResource(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        generation=meta.generation,
        dataset=dataset,
        document=worker_doc,
        secret_env=env,
        worker=worker,
        bounds=bounds,
        params=params,
        warnings=tuple(dict.fromkeys(warnings + list(dataset.warnings))),
    )


def document_yaml(res: DatasetResource) -> str:
    """The workers' Dataset document as YAML (the ConfigMap's ``dataset.yaml``)."""
    return yaml.safe_dump(dict(res.document), sort_keys=False)


__all__ = ["DatasetResource", "Meta", "SecretEnv", "WorkerSpec", "document_yaml", "meta_of", "parse", "SpecError"]
