"""Translate a Fluid ``data.fluid.io/v1alpha1`` Dataset into fluidfs mounts.

Fluid Datasets are written for Alluxio/JindoFS/JuiceFS runtimes.  We use ``metadata.name``,
``spec.mounts[]`` (``mountPoint``, ``name``, ``path``, ``options``, ``encryptOptions``,
``readOnly``) and ``spec.sharedOptions`` / ``spec.sharedEncryptOptions`` (merged into every
mount; the mount's own entries win; shared S3 settings skip http mounts).  Runtime option
names are mapped to ours (``fs.s3a.endpoint`` -> ``endpoint`` ...); ``encryptOptions`` become
``secretKeyRef`` credentials for the CSI plugin.

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

from collections.abc import Mapping
from typing import Any

from fluidfs.spec.fields import (
    CREDENTIAL_NAMES,
    KNOWN_OPTIONS,
    Ctx,
    PendingMount,
    kind_of,
    mapping,
    metadata_name,
    mount_list,
    mount_name,
    mount_path,
    option_value,
    parse_mount_point,
    string,
    sub,
)
from fluidfs.spec.model import SecretRef

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


def translate(ctx: Ctx, doc: Mapping[str, Any]) -> tuple[str, list[PendingMount]]:
    """Return (dataset name, mounts) for a Fluid Dataset; warnings are added to ``ctx``."""
    for key in doc:
        if key not in ("apiVersion", "kind", "metadata", "spec"):
            ctx.warn(sub("", key), _IGNORED)
    name = metadata_name(ctx, doc, fluid=True)
    spec = mapping(ctx, doc.get("spec"), "spec")
    for key in spec:
        if key not in ("mounts", "sharedOptions", "sharedEncryptOptions"):
            ctx.warn(sub("spec", key), _IGNORED)
    shared_opts = _options(ctx, spec.get("sharedOptions"), "spec.sharedOptions")
    shared_creds = _encrypt_options(ctx, spec.get("sharedEncryptOptions"), "spec.sharedEncryptOptions")
    mounts = mount_list(ctx, spec.get("mounts"), "spec.mounts")
    return name, [_mount(ctx, raw, f"spec.mounts[{i}]", shared_opts, shared_creds) for i, raw in enumerate(mounts)]


def _mount(
    ctx: Ctx, value: object, field: str, shared_opts: dict[str, str], shared_creds: dict[str, SecretRef]
) -> PendingMount:
    m = mapping(ctx, value, field)
    for key in m:
        if key not in ("mountPoint", "name", "path", "options", "encryptOptions", "readOnly"):
            ctx.warn(sub(field, key), _IGNORED)
    url, scheme, default_name = parse_mount_point(ctx, m.get("mountPoint"), f"{field}.mountPoint")
    read_only = m.get("readOnly")
    if read_only is not None and not isinstance(read_only, bool):
        ctx.fail(f"{field}.readOnly", f"must be true or false, got {kind_of(read_only)}")
    if read_only is False:
        ctx.warn(f"{field}.readOnly", "ignored (fluidfs mounts are read-only)")
    name = default_name if m.get("name") is None else mount_name(ctx, m["name"], f"{field}.name")
    path = None if m.get("path") is None else mount_path(ctx, m["path"], f"{field}.path")
    if scheme != "s3":  # shared S3 settings are for the S3 mounts among several
        shared_opts = {k: v for k, v in shared_opts.items() if k not in _S3_ONLY}
    opts = {**shared_opts, **_options(ctx, m.get("options"), f"{field}.options")}
    creds = {**shared_creds, **_encrypt_options(ctx, m.get("encryptOptions"), f"{field}.encryptOptions")}
    return PendingMount(field, url, scheme, name, path, opts, creds)


def _options(ctx: Ctx, value: object, field: str) -> dict[str, str]:
    if value is None:
        return {}
    raw = mapping(ctx, value, field)
    out: dict[str, str] = {}
    for key, val in raw.items():
        f = sub(field, key)
        if key in _SSL_FLAGS:
            continue
        if key in FLUID_CREDENTIALS:  # never echo the value
            ctx.warn(f, "ignored (credentials must come from encryptOptions)")
            continue
        target = FLUID_OPTIONS.get(key, key if key in KNOWN_OPTIONS else None)
        if target is None:
            ctx.warn(f, _IGNORED)
            continue
        text = option_value(ctx, "", val, f)  # coerce to str first
        if key == "fs.s3a.aws.credentials.provider":
            if not text.endswith("AnonymousAWSCredentialsProvider"):
                ctx.warn(f, _IGNORED)
                continue
            text = "true"
        elif target == "addressing_style" and key != target:
            text = "path" if option_value(ctx, "anonymous", val, f) == "true" else "virtual"
        elif target == "endpoint" and "://" not in text:
            flag = next(k for k in _SSL_FLAGS if k.split(".")[0] == key.split(".")[0])
            secure = option_value(ctx, "anonymous", raw.get(flag, _SSL_FLAGS[flag]), sub(field, flag))
            text = ("https://" if secure == "true" else "http://") + text
        out[target] = option_value(ctx, target, text, f)
    return out


def _encrypt_options(ctx: Ctx, value: object, field: str) -> dict[str, SecretRef]:
    if value is None:
        return {}
    if not isinstance(value, list):
        ctx.fail(field, f"must be a list, got {kind_of(value)}")
    out: dict[str, SecretRef] = {}
    for i, item in enumerate(value):
        f = f"{field}[{i}]"
        m = mapping(ctx, item, f)
        for key in m:
            if key not in ("name", "valueFrom"):
                ctx.warn(sub(f, key), _IGNORED)
        name = string(ctx, m.get("name"), f"{f}.name")
        value_from = mapping(ctx, m.get("valueFrom"), f"{f}.valueFrom")
        for key in value_from:
            if key != "secretKeyRef":
                ctx.warn(sub(f"{f}.valueFrom", key), _IGNORED)
        ref = mapping(ctx, value_from.get("secretKeyRef"), f"{f}.valueFrom.secretKeyRef")
        for key in ref:
            if key not in ("name", "key"):
                ctx.warn(sub(f"{f}.valueFrom.secretKeyRef", key), _IGNORED)
        secret = string(ctx, ref.get("name"), f"{f}.valueFrom.secretKeyRef.name")
        secret_key = string(ctx, ref.get("key"), f"{f}.valueFrom.secretKeyRef.key")
        target = FLUID_CREDENTIALS.get(name)
        if target is None:
            ctx.warn(f, f"ignored (credential {name!r} is not used by fluidfs)")
            continue
        out[target] = SecretRef(secret_name=secret, secret_key=secret_key)
    return out
