"""The Dataset custom resource's ``spec`` as pydantic models: the Dataset document's spec plus the cache workers.

The resource's ``spec`` is the spec of a fluidfs Dataset document, so its models are those of
``fluidfs.spec.schema``: the ``spec.<section>`` models built from the settings table (``cache``,
``metadata``, ``permissions``, ``sources``, and any section a new row adds), and a mount that
also takes Fluid's ``encryptOptions`` (``sharedOptions`` / ``sharedEncryptOptions`` at the spec
level; Fluid's other spec fields are accepted and ignored).  ``spec.cache`` is extended with
what only a resource has: ``minWorkers``, ``maxWorkers``, ``replicas``, ``worker`` and
``autoscaling``.  Values are checked by the kinds of ``fluidfs.config.kinds``, as the table's are.

The same models give the CRD's schema (``fluidfs.control.crd`` turns their JSON Schema into a
structural OpenAPI schema), so a setting added to the table reaches the CRD, the controller's
parser and the workers' document with no other change.  :func:`validate_resource` reports the
first mistake as ``SpecError("Dataset ns/name", "spec.cache.maxWorkers", problem)``, with
"did you mean" for unknown keys.

Caveats: credentials in a resource are ``secretKeyRef``s only (the controller hands them to the
workers as environment variables); option values are strings in the CRD's schema (quote
``"true"``), although the controller would accept numbers and booleans as a document does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PlainValidator, WithJsonSchema, create_model, model_validator

from fluidfs.config.kinds import Kind, choice, count, duration, kind_of, size
from fluidfs.control import autoscaler
from fluidfs.spec.fields import CREDENTIAL_NAMES, Problem, mount_list
from fluidfs.spec.fluid import FluidEncryptOption, RawOptions
from fluidfs.spec.schema import (
    CredentialName,
    Doc,
    Lenient,
    MountBase,
    MountName,
    MountPath,
    MountPoint,
    ReadOnly,
    SecretKeyRefDoc,
    SectionDoc,
    section_models,
    validate,
)

#: what the API server checks of a mountPoint (the controller checks the rest)
MOUNT_POINT_PATTERN = r"^((s3|https?|local|file)://.+|/.*)$"
MAX_WORKERS = 1000
INT_OR_STRING: dict[str, Any] = {"x-kubernetes-int-or-string": True}
#: Fluid spec fields accepted for compatibility and ignored (each gives a warning)
IGNORED_FLUID_FIELDS = ("accessModes", "nodeAffinity", "placement", "tolerations", "runtimes", "owner",
                        "dataRestoreLocation")  # fmt: skip
FLUID_SPEC_FIELDS = ("sharedOptions", "sharedEncryptOptions")


def _parser(kind: Kind[Any]) -> Any:
    """The validator of a value of ``kind`` (its ValueError is reported at the field)."""

    def check(raw: object) -> Any:
        return kind.parse(raw)

    return check


def _number_check(lo: float, hi: float = math.inf) -> Any:
    """The validator of a number within ``lo..hi`` (an integer is a number)."""
    span = f"from {lo:g} to {hi:g}" if hi != math.inf else f">= {lo:g}"

    def check(raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise Problem(f"must be a number {span}, got {kind_of(raw)}")
        if not lo <= raw <= hi:
            raise Problem(f"must be a number {span}, got {raw!r}")
        return float(raw)

    return check


def _number_schema(lo: float, hi: float = math.inf) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number", "minimum": lo}
    if hi != math.inf:
        schema["maximum"] = hi
    return schema


def _exact_check(*values: str) -> Any:
    """The validator of one of ``values``, exactly (Kubernetes enums are case-sensitive)."""

    def check(raw: object) -> str:
        if raw not in values:
            shown = repr(raw) if isinstance(raw, str) else kind_of(raw)
            raise Problem(f"must be one of {', '.join(values)}, got {shown}")
        return str(raw)

    return check


def _quantity(raw: object) -> str:
    """A Kubernetes quantity (``500m``, ``2Gi``, ``4``) as its text; the API server checks its form."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)) or (isinstance(raw, str) and not raw.strip()):
        raise Problem(f"must be a quantity such as 500m or 2Gi, got {kind_of(raw)}")
    return str(raw)


_OPERATORS = ("Exists", "Equal")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
Size = Annotated[Any, PlainValidator(_parser(size())), WithJsonSchema(INT_OR_STRING)]
FiniteDuration = Annotated[Any, PlainValidator(_parser(duration(indefinite=False))), WithJsonSchema(INT_OR_STRING)]
Workers = Annotated[
    Any,
    PlainValidator(_parser(count(0, MAX_WORKERS))),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_WORKERS}),
]
Policy = Annotated[
    Any,
    PlainValidator(_parser(choice(*autoscaler.POLICIES))),
    WithJsonSchema({"type": "string", "enum": list(autoscaler.POLICIES)}),
]
Gain = Annotated[float, PlainValidator(_number_check(0, 10)), WithJsonSchema(_number_schema(0, 10))]
NonNegative = Annotated[float, PlainValidator(_number_check(0)), WithJsonSchema(_number_schema(0))]
Ratio = Annotated[float, PlainValidator(_number_check(0, 1)), WithJsonSchema(_number_schema(0, 1))]
Operator = Annotated[
    str, PlainValidator(_exact_check(*_OPERATORS)), WithJsonSchema({"type": "string", "enum": list(_OPERATORS)})
]
Effect = Annotated[
    str, PlainValidator(_exact_check(*_EFFECTS)), WithJsonSchema({"type": "string", "enum": list(_EFFECTS)})
]
Quantity = Annotated[str, PlainValidator(_quantity), WithJsonSchema(INT_OR_STRING)]
StringMap = Annotated[dict[str, str], WithJsonSchema({"type": "object", "additionalProperties": {"type": "string"}})]
Preserved = Annotated[Any, WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]
PreservedList = Annotated[
    Any,
    WithJsonSchema({"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}),
]
OptionMap = Annotated[RawOptions, WithJsonSchema({"type": "object", "additionalProperties": {"type": "string"}})]


# ----------------------------------------------------------------------------- the workers


class ResourcesDoc(Doc):
    requests: Annotated[dict[str, Quantity], Field(description="Resource requests.")] | None = None
    limits: Annotated[dict[str, Quantity], Field(description="Resource limits.")] | None = None


class TolerationDoc(Doc):
    key: str | None = None
    operator: Operator | None = None
    value: str | None = None
    effect: Effect | None = None
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds")


class WorkerDoc(Doc):
    """``spec.cache.worker``: what each cache worker (a pod running ``fluidfs worker``) looks like."""

    quota: Size = Field(None, description="SSD tier of each worker (default 10Gi).")
    memory_size: Size = Field(None, alias="memorySize", description="Memory tier of each worker (default 1Gi).")
    storage_class_name: str | None = Field(
        None,
        alias="storageClassName",
        description="StorageClass of a PVC per worker for its cache; empty: an emptyDir of the quota's size.",
    )
    resources: ResourcesDoc | None = Field(
        None, description="Compute resources of the worker container; memory defaults to the memory tier plus 512Mi."
    )
    node_selector: StringMap | None = Field(None, alias="nodeSelector", description="Node labels the workers need.")
    tolerations: list[TolerationDoc] | None = Field(None, description="Tolerations of the worker pods.")
    drain_timeout: FiniteDuration = Field(
        None,
        alias="drainTimeout",
        description="How long a leaving worker may take to hand its blocks over before it is killed (default 2m).",
    )


_P = autoscaler.Params()


class AutoscalingDoc(Doc):
    """``spec.cache.autoscaling``: how the number of workers follows the training jobs (docs/autoscaling.md)."""

    policy: Policy = Field(
        None,
        description="training-speed (default): add workers while readers stall on misses and more workers raise "
        "the input rate, back to minWorkers when idle; capacity: Fluid's rule, +1 worker at fullThreshold, never "
        "fewer; manual: spec.cache.replicas (by hand, or an HPA/KEDA through the scale subresource).",
    )
    interval: FiniteDuration = Field(None, description=f"Time between two samples (default {_P.interval:g}s).")
    window: FiniteDuration = Field(
        None, description=f"Evaluation window of a step, and its baseline (default {_P.window:g}s)."
    )
    cooldown: FiniteDuration = Field(None, description=f"Least time between two changes (default {_P.cooldown:g}s).")
    min_gain: Gain | None = Field(
        None, alias="minGain", description=f"A step is kept if the input rate rose this much (default {_P.min_gain:g})."
    )
    stall_threshold: NonNegative | None = Field(
        None,
        alias="stallThreshold",
        description=f"Read stall (s/s) that counts as stalling (default {_P.stall_threshold:g}).",
    )
    full_threshold: Ratio | None = Field(
        None,
        alias="fullThreshold",
        description=f"Cache fill that counts as full (default {_P.full_threshold:g}).",
    )
    cold_hit_ratio: Ratio | None = Field(
        None,
        alias="coldHitRatio",
        description=(
            f"Share of the input not fetched from the source below which readers miss the cache "
            f"(default {_P.cold_hit_ratio:g})."
        ),
    )
    idle_rate: Size = Field(None, alias="idleRate", description="Input per second below which it is idle (1Mi).")
    idle_after: FiniteDuration = Field(
        None, alias="idleAfter", description=f"Idle this long: scale in to minWorkers (default {_P.idle_after:g}s)."
    )

    @model_validator(mode="after")
    def _positive_interval(self) -> AutoscalingDoc:
        if self.interval is not None and self.interval <= 0:
            raise Problem("must be more than 0", at=("interval",))
        return self


_TableCache: type[SectionDoc] = section_models()["cache"]
#: the aliases of spec.cache that are settings of the table (the node mounts' and workers' tiers)
TABLE_CACHE_KEYS = tuple(f.alias or name for name, f in _TableCache.model_fields.items())


class ResourceCacheDoc(_TableCache):  # type: ignore[misc,valid-type]
    """``spec.cache``: the table's cache settings, and the cache workers."""

    min_workers: Workers = Field(
        None, alias="minWorkers", description=f"Fewest cache workers (default {autoscaler.Bounds.min_workers})."
    )
    max_workers: Workers = Field(
        None, alias="maxWorkers", description=f"Most cache workers (default {autoscaler.Bounds.max_workers})."
    )
    replicas: Workers = Field(
        None, description="Cache workers under the manual policy (the scale subresource's replicas)."
    )
    worker: WorkerDoc | None = Field(
        None, description="What each cache worker (a pod of the Dataset's StatefulSet running fluidfs worker) is like."
    )
    autoscaling: AutoscalingDoc | None = Field(
        None, description="How the number of cache workers follows the training jobs (docs/autoscaling.md)."
    )

    def values(self) -> dict[str, Any]:
        """{setting name: typed value} of the table's settings the resource sets."""
        table = _TableCache.model_fields
        return {name: getattr(self, name) for name in table if name in self.model_fields_set}

    @model_validator(mode="after")
    def _bounds(self) -> ResourceCacheDoc:
        lo, hi = self.min_workers, self.max_workers
        if lo is not None and hi is not None and lo > hi:
            raise Problem(f"minWorkers ({lo}) must not exceed maxWorkers ({hi})", at=("minWorkers",))
        return self


# ----------------------------------------------------------------------------- mounts and spec


class ResourceCredentialDoc(Doc):
    secret_key_ref: SecretKeyRefDoc = Field(alias="secretKeyRef", description="A key of a Secret in the namespace.")


_CREDENTIALS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Credentials from Secrets in the Dataset's namespace.",
    "properties": {
        name: {
            "type": "object",
            "description": f"Where {name} comes from.",
            "properties": {
                "secretKeyRef": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "key": {"type": "string", "minLength": 1},
                    },
                    "required": ["name", "key"],
                }
            },
            "required": ["secretKeyRef"],
        }
        for name in CREDENTIAL_NAMES
    },
}


class ResourceMountDoc(MountBase):
    """One source: a fluidfs mount (``credentials``) or a Fluid one (``encryptOptions``)."""

    mount_point: MountPoint = Field(
        alias="mountPoint",
        description="Where the data lives: s3://bucket[/prefix], http(s)://host/path, local:///abs/path or /abs/path.",
        json_schema_extra={"pattern": MOUNT_POINT_PATTERN},
    )
    name: MountName | None = Field(
        None,
        description="Unique name of the mount, a single path component.",
        json_schema_extra={"pattern": r"^[^/]+$", "maxLength": 255},
    )
    path: MountPath | None = Field(
        None, description="Where the mount appears in the tree; default /<name>.", json_schema_extra={"pattern": r"^/"}
    )
    options: OptionMap | None = Field(None, description="Source options (endpoint, region, ...); values are strings.")
    credentials: Annotated[dict[CredentialName, ResourceCredentialDoc], WithJsonSchema(_CREDENTIALS_SCHEMA)] | None = (
        None
    )
    encrypt_options: list[FluidEncryptOption] | None = Field(
        None, alias="encryptOptions", description="Credentials in Fluid's form (data.fluid.io Datasets)."
    )
    read_only: ReadOnly | None = Field(None, alias="readOnly", description="fluidfs mounts are always read-only.")


class ResourceSpecBase(Doc):
    mounts: Annotated[list[ResourceMountDoc], AfterValidator(mount_list)] = Field(
        description="The sources, unioned into one tree.", json_schema_extra={"minItems": 1}
    )
    shared_options: OptionMap | None = Field(
        None, alias="sharedOptions", description="Options merged into every mount (Fluid's form)."
    )
    shared_encrypt_options: list[FluidEncryptOption] | None = Field(
        None, alias="sharedEncryptOptions", description="Credentials merged into every mount (Fluid's form)."
    )
    access_modes: Annotated[Any, WithJsonSchema({"type": "array", "items": {"type": "string"}})] = Field(
        None, alias="accessModes", description="Fluid compatibility; ignored."
    )
    node_affinity: Preserved = Field(None, alias="nodeAffinity", description="Fluid compatibility; ignored.")
    placement: Annotated[Any, WithJsonSchema({"type": "string"})] = Field(
        None, description="Fluid compatibility; ignored."
    )
    tolerations: PreservedList = Field(None, description="Fluid compatibility; ignored.")
    runtimes: PreservedList = Field(None, description="Fluid compatibility; ignored.")
    owner: Preserved = Field(None, description="Fluid compatibility; ignored.")
    data_restore_location: Preserved = Field(
        None, alias="dataRestoreLocation", description="Fluid compatibility; ignored."
    )

    def sections(self) -> dict[str, SectionDoc]:
        """The settings sections the resource gives (``cache``, ``metadata``, ...)."""
        out: dict[str, SectionDoc] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SectionDoc):
                out[name] = value
        return out


#: the ``spec.cluster`` settings a resource may give; the controller sets the others (membership,
#: addresses, ports, secret, weight and handoff time) on the workers' command line
RESOURCE_CLUSTER_FIELDS = ("replicas", "peerCopy", "connectTimeout", "readTimeout", "fetchTimeout", "transfers",
                           "maxSkew")  # fmt: skip


def _resource_section(name: str, model: type[SectionDoc]) -> type[SectionDoc]:
    """The section model as a resource takes it (``cluster`` without what the controller sets)."""
    if name != "cluster":
        return model
    keep = {k: (f.annotation, f) for k, f in model.model_fields.items() if f.alias in RESOURCE_CLUSTER_FIELDS}
    return create_model("ResourceClusterDoc", __base__=SectionDoc, **keep)  # type: ignore[call-overload,no-any-return]


def _spec_model() -> type[ResourceSpecBase]:
    sections: dict[str, Any] = {
        name: (
            _resource_section(name, model) | None,
            Field(None, description=f"Settings of spec.{name} (docs/configuration.md)."),
        )
        for name, model in section_models().items()
        if name != "cache"
    }
    sections["cache"] = (
        ResourceCacheDoc | None,
        Field(None, description="Cache settings: the node mounts' tiers (as in a document) and the cache workers."),
    )
    return create_model("ResourceSpecDoc", __base__=ResourceSpecBase, **sections)


ResourceSpecDoc = _spec_model()


class ResourceDoc(Lenient):
    """A Dataset resource; only its ``spec`` is checked here (the API server owns the rest)."""

    spec: ResourceSpecDoc  # type: ignore[valid-type]


def validate_resource(obj: Mapping[str, Any], document: str) -> ResourceSpecBase:
    """The resource's validated spec; ``SpecError(document, "spec....", problem)`` for the first mistake."""
    model: ResourceDoc = validate(ResourceDoc, obj, document)
    spec: ResourceSpecBase = model.spec
    return spec


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``spec`` (pydantic's, with ``$defs``; ``crd`` makes it structural)."""
    return ResourceSpecDoc.model_json_schema(by_alias=True)
