"""Translate a Fluid ``data.fluid.io/v1alpha1`` Dataset into fluidfs mounts, on the schema of ``fluidfs.spec.schema``.

Fluid Datasets are written for Alluxio/JindoFS/JuiceFS runtimes.  We use ``metadata.name``,
``spec.mounts[]`` (``mountPoint``, ``name``, ``path``, ``options``, ``encryptOptions``,
``readOnly``) and ``spec.sharedOptions`` / ``spec.sharedEncryptOptions`` (merged into every
mount; the mount's own entries win; shared S3 settings skip http mounts).  Runtime option
names are mapped to ours (``fs.s3a.endpoint`` -> ``endpoint`` ...); ``encryptOptions`` become
``secretKeyRef`` credentials for the CSI plugin.  A Fluid mount shares its ``mountPoint``,
``name`` and ``path`` fields and their checks with a fluidfs mount (``schema.MountBase``).

Everything else -- ``spec.runtimes``, ``spec.nodeAffinity``, ``spec.placement``, unknown mount
fields, runtime options we have no use for, ``status`` -- is not an error: each produces exactly
one warning line ``<doc>: <field>: ignored (...)`` in ``Dataset.warnings`` (not logged: the command
that parsed the document prints each line once).
Malformed values of the fields we *do* use are errors, as in a fluidfs document.

Caveats: an endpoint without a scheme gets ``https://`` for ``fs.s3a.*`` (Hadoop's default)
and ``http://`` for ``alluxio.*`` (Alluxio's default), unless ``fs.s3a.connection.ssl.enabled``
/ ``alluxio.underfs.s3.secure.http.enabled`` say otherwise.  ``readOnly: false`` is ignored
with a warning (fluidfs is always read-only).  Schemes we cannot serve (``oss://``, ``pvc://``,
``hdfs://`` ...) are errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator

from fluidfs.errors import SpecError
from fluidfs.spec.fields import (
    CREDENTIAL_NAMES,
    KNOWN_OPTIONS,
    PendingMount,
    Problem,
    mapping,
    mount_list,
    option_value,
    sub,
)
from fluidfs.spec.model import SecretRef
from fluidfs.spec.schema import DatasetName, Lenient, MountBase, ReadOnly, Text, validate

__all__ = ["translate", "FLUID_OPTIONS", "FLUID_CREDENTIALS"]

#: Fluid/Alluxio/Hadoop option name -> fluidfs option name.
FLUID_OPTIONS: dict[str, str] = {
    "fs.s3a.endpoint": "endpoint",
    "alluxio.underfs.s3.endpoint": "endpoint",
    "fs.s3a.endpoint.region": "region",
    "alluxio.underfs.s3.endpoint.region": "region",
    "aws.region": "region",
    "fs.s3a.path.style.access": "addressing_style",  # true -> path, false -> virtual
    "alluxio.underfs.s3.disable.dns.buckets": "addressing_style",  # idem
    "fs.s3a.aws.credentials.provider": "anonymous",  # *AnonymousAWSCredentialsProvider -> true
}
#: Options that only modify how a scheme-less endpoint is read.
_SSL_FLAGS = {"fs.s3a.connection.ssl.enabled": "true", "alluxio.underfs.s3.secure.http.enabled": "false"}
#: Fluid encryptOptions name -> MountSpec.credentials key.
FLUID_CREDENTIALS: dict[str, str] = {
    "fs.s3a.access.key": "access_key_id",
    "fs.s3a.secret.key": "secret_access_key",
    "fs.s3a.session.token": "session_token",
    "aws.accessKeyId": "access_key_id",
    "aws.secretKey": "secret_access_key",
    "aws.secretAccessKey": "secret_access_key",
    "aws.sessionToken": "session_token",
    "access-key": "access_key_id",  # JuiceFS runtime
    "secret-key": "secret_access_key",
    **CREDENTIAL_NAMES,
}
_S3_ONLY = frozenset({"endpoint", "region", "addressing_style", "anonymous"})
_IGNORED = "ignored (not used by fluidfs)"

RawOptions = Annotated[dict[Any, Any], PlainValidator(mapping)]


class FluidSecretKeyRef(Lenient):
    name: Text
    key: Text


class FluidValueFrom(Lenient):
    secret_key_ref: FluidSecretKeyRef = Field(alias="secretKeyRef")


class FluidEncryptOption(Lenient):
    name: Text
    value_from: FluidValueFrom = Field(alias="valueFrom")


class FluidMount(MountBase):
    model_config = ConfigDict(extra="allow")

    options: RawOptions | None = None
    encrypt_options: list[FluidEncryptOption] | None = Field(None, alias="encryptOptions")
    read_only: ReadOnly | None = Field(None, alias="readOnly")


class FluidSpec(Lenient):
    mounts: Annotated[list[FluidMount], AfterValidator(mount_list)]
    shared_options: RawOptions | None = Field(None, alias="sharedOptions")
    shared_encrypt_options: list[FluidEncryptOption] | None = Field(None, alias="sharedEncryptOptions")


class FluidObjectMeta(Lenient):
    name: DatasetName


class FluidDataset(Lenient):
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: FluidObjectMeta = Field(default_factory=dict, validate_default=True)
    spec: FluidSpec


def translate(doc: Mapping[str, Any], document: str) -> tuple[str, list[PendingMount], list[tuple[str, str]]]:
    """(dataset name, mounts, warnings as (field, why)) of a Fluid Dataset; SpecError for a mistake."""
    model: FluidDataset = validate(FluidDataset, doc, document)
    warnings = [(field, _IGNORED) for field in _ignored(model, "")]
    spec = model.spec
    try:
        shared_opts = _options(spec.shared_options, "spec.sharedOptions", warnings)
    except Problem as exc:
        raise SpecError(document, _at("spec.sharedOptions", exc), str(exc)) from None
    shared_creds = _credentials(spec.shared_encrypt_options, "spec.sharedEncryptOptions", warnings)
    mounts = []
    for i, m in enumerate(spec.mounts):
        field = f"spec.mounts[{i}]"
        if m.read_only is False:
            warnings.append((f"{field}.readOnly", "ignored (fluidfs mounts are read-only)"))
        opts = (
            shared_opts if m.mount_point.scheme == "s3" else {k: v for k, v in shared_opts.items() if k not in _S3_ONLY}
        )
        try:
            opts = {**opts, **_options(m.options, f"{field}.options", warnings)}
        except Problem as exc:
            raise SpecError(document, _at(f"{field}.options", exc), str(exc)) from None
        creds = {**shared_creds, **_credentials(m.encrypt_options, f"{field}.encryptOptions", warnings)}
        mounts.append(m.pending(field, opts, creds))
    return model.metadata.name, mounts, warnings


def _at(field: str, exc: Problem) -> str:
    for part in exc.at:
        field = sub(field, part)
    return field


def _ignored(model: BaseModel, path: str) -> Iterator[str]:
    """Field paths of every unknown key in ``model`` and the models inside it."""
    for key in model.model_extra or {}:
        yield sub(path, key)
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        here = sub(path, info.alias or name)
        if isinstance(value, BaseModel):
            yield from _ignored(value, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _ignored(item, f"{here}[{i}]")


def _options(raw: Mapping[Any, Any] | None, field: str, warnings: list[tuple[str, str]]) -> dict[str, str]:
    """Fluid options -> fluidfs options; Problem(at=(key,)) for a bad value of an option we use."""
    out: dict[str, str] = {}
    for key, val in (raw or {}).items():
        f = sub(field, key)
        if key in _SSL_FLAGS:
            continue
        if key in FLUID_CREDENTIALS:  # never echo the value
            warnings.append((f, "ignored (credentials must come from encryptOptions)"))
            continue
        target = FLUID_OPTIONS.get(key, key if key in KNOWN_OPTIONS else None)
        if target is None:
            warnings.append((f, _IGNORED))
            continue
        try:
            text = option_value("", val)  # coerce to str first
            if key == "fs.s3a.aws.credentials.provider":
                if not text.endswith("AnonymousAWSCredentialsProvider"):
                    warnings.append((f, _IGNORED))
                    continue
                text = "true"
            elif target == "addressing_style" and key != target:
                text = "path" if option_value("anonymous", val) == "true" else "virtual"
            elif target == "endpoint" and "://" not in text:
                flag = next(k for k in _SSL_FLAGS if k.split(".")[0] == key.split(".")[0])
                try:
                    secure = option_value("anonymous", raw.get(flag, _SSL_FLAGS[flag]))  # type: ignore[union-attr]
                except Problem as exc:
                    raise Problem(str(exc), at=(flag,)) from None
                text = ("https://" if secure == "true" else "http://") + text
            out[target] = option_value(target, text)
        except Problem as exc:
            raise Problem(str(exc), at=exc.at or (key,)) from None
    return out


def _credentials(
    items: list[FluidEncryptOption] | None, field: str, warnings: list[tuple[str, str]]
) -> dict[str, SecretRef]:
    out: dict[str, SecretRef] = {}
    for i, item in enumerate(items or ()):
        target = FLUID_CREDENTIALS.get(item.name)
        if target is None:
            warnings.append((f"{field}[{i}]", f"ignored (credential {item.name!r} is not used by fluidfs)"))
            continue
        ref = item.value_from.secret_key_ref
        out[target] = SecretRef(secret_name=ref.name, secret_key=ref.key)
    return out
