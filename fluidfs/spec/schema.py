"""The schema of a fluidfs Dataset document as pydantic models, its settings sections derived from the settings table.

Why pydantic (v2) rather than jsonschema: the Dataset is parsed *into* values (sizes, durations,
normalised URLs, credential references), not only checked, and pydantic does both in one pass
with the field checks of ``fluidfs.spec.fields`` plugged in as validators; its errors are
structured (location, type, the exception our check raised), so every message is ours and none
quotes pydantic's input -- jsonschema's messages quote the offending value, which may be a
secret, and it would leave all the conversion to hand-written code.  The models can also emit a
JSON Schema (``model_json_schema``), which the Dataset custom resource will need.

:class:`Doc` is the base of every model: ``null`` means "not set", an unknown key is an error
with a "did you mean" (lenient subclasses, the Fluid ones, keep unknown keys as warnings
instead), and values are strict (no silent coercion of ``yes`` to ``true``).  :func:`first_error`
turns a ``ValidationError`` into ``SpecError(document, "spec.mounts[0].path", problem)``.

The ``spec.<section>`` models (``cache``, ``metadata``, ``permissions``) are built from the
settings table (``fluidfs.config.SETTINGS``): a row with ``dataset="spec.cache.blockSize"`` is
the field ``blockSize`` of ``spec.cache``, parsed and range-checked by the row's kind.

Caveats: only the first error is reported (one line); an unknown key is found before the other
mistakes of the same mapping.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from functools import cache, reduce
from typing import Annotated, Any, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import ErrorDetails

from fluidfs.config import SETTINGS, Setting
from fluidfs.config.kinds import kind_of
from fluidfs.errors import SpecError
from fluidfs.spec import fields
from fluidfs.spec.fields import CREDENTIAL_NAMES, Location, PendingMount, Problem, sub, unknown_field
from fluidfs.spec.model import SecretRef

# ----------------------------------------------------------------------------- base


class Doc(BaseModel):
    """A mapping of a Dataset document: null = unset, unknown keys are errors, strict values."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # pydantic says "must be a mapping"
        data = {k: v for k, v in data.items() if v is not None}
        if cls.model_config.get("extra") == "forbid":
            allowed = [f.alias or name for name, f in cls.model_fields.items()]
            for key in data:
                if key not in allowed:
                    raise Problem(unknown_field(key, allowed), at=(str(key),))
        return data


class Lenient(Doc):
    """A mapping whose unknown keys are kept (``model_extra``) for the caller to warn about."""

    model_config = ConfigDict(extra="allow")


def _must_be_true(value: object) -> bool:
    if not fields.read_only(value):
        raise Problem("fluidfs mounts are read-only")
    return True


def _credential_name(value: object) -> str:
    if value not in CREDENTIAL_NAMES:
        raise Problem(unknown_field(value, CREDENTIAL_NAMES))
    return CREDENTIAL_NAMES[str(value)]


Scalar = str | int | float | bool
Text = Annotated[str, PlainValidator(fields.string, json_schema_input_type=str)]
DatasetName = Annotated[str, PlainValidator(fields.dataset_name, json_schema_input_type=str)]
MountPoint = Annotated[Location, PlainValidator(fields.location, json_schema_input_type=str)]
MountName = Annotated[str, PlainValidator(fields.mount_name, json_schema_input_type=str)]
MountPath = Annotated[str, PlainValidator(fields.mount_path, json_schema_input_type=str)]
Options = Annotated[dict[str, str], PlainValidator(fields.options, json_schema_input_type=dict[str, Scalar])]
ReadOnly = Annotated[bool, PlainValidator(fields.read_only, json_schema_input_type=bool)]
CredentialName = Annotated[str, PlainValidator(_credential_name, json_schema_input_type=str)]

# ----------------------------------------------------------------------------- models


class SecretKeyRefDoc(Doc):
    name: Text
    key: Text


class SecretRefDoc(Doc):
    """Where one credential comes from: exactly one of ``env``, ``file``, ``secretKeyRef``."""

    env: Annotated[str, PlainValidator(fields.env_name, json_schema_input_type=str)] | None = None
    file: Annotated[str, PlainValidator(fields.absolute_file, json_schema_input_type=str)] | None = None
    secret_key_ref: SecretKeyRefDoc | None = Field(None, alias="secretKeyRef")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRefDoc:
        given = [type(self).model_fields[f].alias or f for f in type(self).model_fields if f in self.model_fields_set]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise Problem(f"must set exactly one of env, file, secretKeyRef{got}")
        return self

    def ref(self) -> SecretRef:
        if self.secret_key_ref is not None:
            return SecretRef(secret_name=self.secret_key_ref.name, secret_key=self.secret_key_ref.key)
        return SecretRef(env=self.env or "", file=self.file or "")


class MountBase(Doc):
    """What every mount has, in both formats: where the data is, and where it appears."""

    mount_point: MountPoint = Field(alias="mountPoint")
    name: MountName | None = None
    path: MountPath | None = None

    def pending(self, field: str, options: dict[str, str], credentials: dict[str, SecretRef]) -> PendingMount:
        loc = self.mount_point
        return PendingMount(field, loc.url, loc.scheme, self.name or loc.default_name, self.path, options, credentials)


class MountDoc(MountBase):
    """One entry of ``spec.mounts`` of a fluidfs Dataset."""

    options: Options | None = None
    credentials: dict[CredentialName, SecretRefDoc] | None = None
    read_only: Annotated[bool, PlainValidator(_must_be_true, json_schema_input_type=bool)] | None = Field(
        None, alias="readOnly"
    )

    def to_pending(self, field: str) -> PendingMount:
        creds = {k: ref.ref() for k, ref in (self.credentials or {}).items()}
        return self.pending(field, dict(self.options or {}), creds)


Mounts = Annotated[list[MountDoc], AfterValidator(fields.mount_list)]


class ObjectMetaDoc(Doc):
    name: DatasetName
    namespace: Any = None
    labels: Any = None
    annotations: Any = None


class SectionDoc(Doc):
    """A ``spec.<section>`` of settings; its fields come from the settings table."""

    def values(self) -> dict[str, Any]:
        """{setting name: typed value} of the fields the document sets."""
        return {name: getattr(self, name) for name in type(self).model_fields if name in self.model_fields_set}


class SpecBase(Doc):
    mounts: Mounts

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            section = getattr(self, name)
            if isinstance(section, SectionDoc):
                out.update(section.values())
        return out


class DatasetBase(Doc):
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMetaDoc = Field(default_factory=dict, validate_default=True)
    spec: SpecBase  # the model built from the table (dataset_model) replaces it


def _row_field(row: Setting) -> tuple[Any, Any]:
    def check(value: object) -> Any:
        return row.parse(value)  # ValueError(problem): reported at the field

    validator = PlainValidator(check, json_schema_input_type=reduce(operator.or_, row.kind.accepts))
    return Annotated[Any, validator], Field(None, alias=row.key, description=f"{row.help} ({row.kind.name})")


@cache
def section_models() -> dict[str, type[SectionDoc]]:
    """The ``spec.<section>`` models (``cache``, ``metadata``, ...), built from the settings table;
    the Dataset custom resource (``fluidfs.control``) extends them."""
    by_section: dict[str, dict[str, Any]] = {}
    for row in SETTINGS:
        if row.dataset:
            by_section.setdefault(row.section, {})[row.name] = _row_field(row)
    return {
        section: create_model(f"{section.title()}Doc", __base__=SectionDoc, **defs)
        for section, defs in by_section.items()
    }


@cache
def dataset_model() -> type[DatasetBase]:
    """The fluidfs Dataset document model, with ``spec.<section>`` built from the settings table."""
    sections = {section: (model | None, None) for section, model in section_models().items()}
    spec = create_model("SpecDoc", __base__=SpecBase, **sections)  # type: ignore[call-overload]
    return create_model("DatasetDoc", __base__=DatasetBase, spec=(spec, ...))


# ----------------------------------------------------------------------------- errors

_MAPPING = ("model_type", "dict_type", "model_attributes_type", "dataclass_type")
_TYPES = {"list_type": "a list", "string_type": "a string", "bool_type": "true or false"}


def describe(error: ErrorDetails) -> tuple[str, str]:
    """(field path, problem) of one pydantic error; the input is described by its type only."""
    loc: list[int | str] = [p for p in error["loc"] if p != "[key]"]
    kind = error["type"]
    if kind == "value_error":
        exc = error.get("ctx", {}).get("error")
        loc += list(getattr(exc, "at", ()))
        problem = str(exc)
    elif kind == "missing":
        problem = "required field is missing"
    elif kind in _MAPPING:
        problem = f"must be a mapping, got {kind_of(error.get('input'))}"
    elif kind in _TYPES:
        problem = f"must be {_TYPES[kind]}, got {kind_of(error.get('input'))}"
    else:  # not reached by our models; pydantic's own text never quotes the input for these
        problem = error["msg"]
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else sub(path, part)
    return path, problem


def first_error(document: str, exc: ValidationError) -> NoReturn:
    """Raise the SpecError of the first error (no chained exception: pydantic's text quotes values)."""
    field, problem = describe(exc.errors(include_url=False)[0])
    raise SpecError(document, field, problem) from None


def validate(model: type[Doc], data: Mapping[str, Any], document: str) -> Any:
    """``model.model_validate(data)``, a SpecError for the first mistake."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first_error(document, exc)
