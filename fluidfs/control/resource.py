"""A ``Dataset`` custom resource (a dict from the API) parsed into what the controller needs.

:func:`parse` validates the resource with the models of ``fluidfs.control.schema`` (the fluidfs
Dataset document's pydantic models, extended with the cache workers and the autoscaler; the
CRD's schema is derived from the same models), then with the parser of ``fluidfs mount``
(``fluidfs.spec``: unique mount names, non-overlapping paths, option values), and returns a
:class:`DatasetResource`: identity (namespace, name, uid, generation), the fluidfs Dataset, the
Dataset *document* handed to the cache workers, the worker shape, the autoscaler's bounds and
parameters.  Mistakes raise ``SpecError`` whose document is ``Dataset <namespace>/<name>`` and
whose field path is the resource's (``spec.cache.maxWorkers``), with "did you mean" for an
unknown key.

Mounts in Fluid's form (``encryptOptions``, ``sharedOptions``, Alluxio/Hadoop option names)
are translated by ``fluidfs.spec.fluid``; ignored Fluid fields become ``warnings``.  Every
settings section of the table (``spec.cache`` settings, ``spec.metadata``, ``spec.permissions``,
...) is handed to the workers' document as written.

Credentials: each ``secretKeyRef`` becomes an environment variable of the worker pods
(``valueFrom.secretKeyRef``, so the controller never reads a Secret) and the workers' document
names that variable (``{env: FLUIDFS_M0_SECRET_ACCESS_KEY}``).

Caveats: the controller trusts the API server for what the schema checks; resources read from
files (the local actuator) get the same checks here, except the Kubernetes metadata.  Settings
the worker's command line sets (``spec.cache.directory``, ``spec.cache.metricsAddr``) are
overridden by it in the workers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from fluidfs.control import autoscaler, schema
from fluidfs.control.crd import API_VERSION as CR_API_VERSION
from fluidfs.control.schema import (
    FLUID_SPEC_FIELDS,
    IGNORED_FLUID_FIELDS,
    TABLE_CACHE_KEYS,
    AutoscalingDoc,
    ResourceCacheDoc,
    WorkerDoc,
)
from fluidfs.errors import SpecError
from fluidfs.spec.fields import API_VERSION, CREDENTIAL_NAMES, FLUID_API_VERSION
from fluidfs.spec.model import Dataset
from fluidfs.spec.parse import parse_dataset
from fluidfs.spec.schema import section_models

log = logging.getLogger(__name__)

#: the fields of ``spec.cache.autoscaling`` (model field names, which are Params' too)
PARAM_FIELDS = tuple(AutoscalingDoc.model_fields)
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


def _worker(doc: WorkerDoc | None) -> WorkerSpec:
    if doc is None:
        return WorkerSpec()
    resources = {
        part: dict(given)
        for part, given in (("requests", doc.resources.requests if doc.resources else None),
                            ("limits", doc.resources.limits if doc.resources else None))
        if given
    }  # fmt: skip
    return WorkerSpec(
        quota=DEFAULT_QUOTA if doc.quota is None else int(doc.quota),
        memory_size=DEFAULT_MEMORY if doc.memory_size is None else int(doc.memory_size),
        storage_class=doc.storage_class_name or "",
        resources=resources,
        node_selector=dict(doc.node_selector or {}),
        tolerations=tuple(t.model_dump(by_alias=True, exclude_none=True) for t in doc.tolerations or ()),
        drain_timeout=DEFAULT_DRAIN if doc.drain_timeout is None else float(doc.drain_timeout),
    )


def _params(doc: AutoscalingDoc | None) -> autoscaler.Params:
    d = autoscaler.Params()
    if doc is None:
        return d
    given = {field: getattr(doc, field) for field in PARAM_FIELDS if getattr(doc, field) is not None}
    if "idle_rate" in given:
        given["idle_rate"] = float(given["idle_rate"])
    return replace(d, **given)


def _bounds(cache: ResourceCacheDoc | None) -> autoscaler.Bounds:
    d = autoscaler.Bounds()
    if cache is None:
        return d
    return autoscaler.Bounds(
        min_workers=d.min_workers if cache.min_workers is None else int(cache.min_workers),
        max_workers=d.max_workers if cache.max_workers is None else int(cache.max_workers),
        replicas=None if cache.replicas is None else int(cache.replicas),
    )


def _fluid_mounts(name: str, spec: Mapping[str, Any], document: str) -> tuple[list[Any], list[str]]:
    """Translate Fluid-form mounts into fluidfs-form mounts; returns (mounts, warnings)."""
    fluid_spec = {k: spec[k] for k in ("mounts", *FLUID_SPEC_FIELDS) if spec.get(k) is not None}
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
    if obj.get("apiVersion") != CR_API_VERSION or obj.get("kind") != "Dataset":
        got = f"{obj.get('apiVersion')} {obj.get('kind')}"
        raise SpecError(document, "apiVersion", f"expected {CR_API_VERSION} Dataset, got {got}")
    model = schema.validate_resource(obj, document)
    spec: Mapping[str, Any] = obj["spec"]
    warnings = [f"{document}: spec.{k}: ignored (not used by fluidfs)" for k in IGNORED_FLUID_FIELDS
                if spec.get(k) is not None]  # fmt: skip
    raw_mounts: list[Any] = list(spec["mounts"])
    fluid = any(spec.get(k) is not None for k in FLUID_SPEC_FIELDS) or any(
        m.get("encryptOptions") is not None for m in raw_mounts
    )
    mounts: list[Any]
    if fluid:
        for i, m in enumerate(raw_mounts):
            if m.get("credentials") is not None:
                raise SpecError(document, f"spec.mounts[{i}].credentials", "use encryptOptions (Fluid's form) in "
                                "every mount, or credentials in every mount, not both")  # fmt: skip
        mounts, fluid_warnings = _fluid_mounts(meta.name, spec, document)
        warnings += fluid_warnings
    else:
        mounts = raw_mounts
    cache_raw: Mapping[str, Any] = spec.get("cache") or {}
    doc_cache = {k: cache_raw[k] for k in TABLE_CACHE_KEYS if cache_raw.get(k) is not None}
    doc_spec: dict[str, Any] = {"mounts": mounts}
    if doc_cache:
        doc_spec["cache"] = doc_cache
    for section in section_models():  # every other settings section goes to the document as written
        if section != "cache" and spec.get(section) is not None:
            doc_spec[section] = spec[section]
    doc = {"apiVersion": API_VERSION, "kind": "Dataset", "metadata": {"name": meta.name}, "spec": doc_spec}
    dataset = parse_dataset(yaml.safe_dump(doc, sort_keys=False), document)
    cache_doc = getattr(model, "cache", None)
    cache = cache_doc if isinstance(cache_doc, ResourceCacheDoc) else None
    worker = _worker(cache.worker if cache is not None else None)
    bounds = _bounds(cache)
    params = _params(cache.autoscaling if cache is not None else None)
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
