"""Field-level validation shared by the Dataset parsers (``fluidfs.spec.parse``, ``fluidfs.spec.fluid``).

Each helper checks one value and raises ``SpecError`` through ``Ctx.fail`` with the field path
it was given; type errors never echo the offending value (it might be a secret).  ``assemble``
does the cross-mount checks (unique names, one ``/`` mount, non-overlapping paths).  Not a
public API: use ``fluidfs.spec.parse``.

Caveats: local paths and URLs are taken literally (no percent-decoding); a normalised local
mount's ``url`` is ``"file://" + absolute_path``.  http(s) URLs are kept as given (only the
scheme is lower-cased); s3 URLs lose empty prefix components and any trailing slash.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from fluidfs.errors import SpecError
from fluidfs.spec.model import MountSpec, SecretRef

log = logging.getLogger("fluidfs.spec")  # the package: one logger for all parse warnings

API_VERSION = "fluidfs.io/v1alpha1"
FLUID_API_VERSION = "data.fluid.io/v1alpha1"
COMMAND_LINE = "<command line>"
SUPPORTED_SCHEMES = "s3, http, https, local, file"
#: Document credential name -> MountSpec.credentials key.
CREDENTIAL_NAMES: dict[str, str] = {
    "accessKeyId": "access_key_id",
    "secretAccessKey": "secret_access_key",
    "sessionToken": "session_token",
    "username": "username",
    "password": "password",
    "bearerToken": "bearer_token",
}
KNOWN_OPTIONS = ("endpoint", "region", "addressing_style", "anonymous", "verify_ssl", "manifest")
_SECRET_OPTION_NAMES = frozenset(CREDENTIAL_NAMES) | frozenset(CREDENTIAL_NAMES.values())
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 1 << 20, 64 << 20
_OBJECT_META = ("name", "namespace", "labels", "annotations")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEME_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class Ctx:
    """Parsing context: the document name and the warnings collected so far."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.warnings: list[str] = []

    def fail(self, field: str, problem: str) -> NoReturn:
        raise SpecError(self.document, field, problem)

    def warn(self, field: str, why: str = "ignored (not used by fluidfs)") -> None:
        """Collect a warning line; the caller shows ``Dataset.warnings`` (the CLI prints each once)."""
        self.warnings.append(f"{self.document}: {field}: {why}")


@dataclass
class PendingMount:
    """A mount whose fields are validated one by one, before the cross-mount checks."""

    field: str  # e.g. "spec.mounts[1]"
    url: str
    scheme: str
    name: str
    path: str | None  # None: default "/<name>"
    options: dict[str, str]
    credentials: dict[str, SecretRef]


def sub(parent: str, key: object) -> str:
    """Field path of ``key`` under ``parent``; keys with dots are quoted (``options['a.b']``)."""
    k = str(key)
    if re.fullmatch(r"[A-Za-z0-9_-]+", k) is None:
        return f"{parent}[{k!r}]"
    return f"{parent}.{k}" if parent else k


def kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def mapping(ctx: Ctx, value: object, field: str) -> dict[Any, Any]:
    if value is None:
        ctx.fail(field, "required field is missing")
    if not isinstance(value, dict):
        ctx.fail(field, f"must be a mapping, got {kind_of(value)}")
    return value


def string(ctx: Ctx, value: object, field: str) -> str:
    """A required non-empty string (the value is never echoed: it might be a secret)."""
    if value is None:
        ctx.fail(field, "required field is missing")
    if not isinstance(value, str):
        ctx.fail(field, f"must be a string, got {kind_of(value)}")
    if not value.strip():
        ctx.fail(field, "must not be empty")
    return value


def check_keys(ctx: Ctx, m: Mapping[Any, Any], field: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in m:
        if key not in allowed:
            lower = {a.lower(): a for a in allowed}
            close = difflib.get_close_matches(str(key).lower(), lower, n=1)
            hint = f"did you mean {lower[close[0]]!r}?" if close else "expected one of: " + ", ".join(allowed)
            ctx.fail(sub(field, key), f"unknown field; {hint}")


def check_components(ctx: Ctx, field: str, parts: Iterable[str], where: str) -> None:
    for part in parts:
        if part in (".", ".."):
            ctx.fail(field, f"{part!r} components are not allowed in {where}")


def safe_component(raw: str, fallback: str = "mount") -> str:
    """``raw`` turned into a safe path component (default mount names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip(".-") or fallback


def dns_label(raw: str) -> str:
    """``raw`` turned into a valid dataset name (lowercase alnum and ``-``, at most 63)."""
    return re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")[:63].strip("-") or "dataset"


def dataset_name(ctx: Ctx, value: object, field: str) -> str:
    name = string(ctx, value, field)
    if _DNS_LABEL.fullmatch(name) is None:
        ctx.fail(
            field,
            f"invalid name {name!r}: use lowercase letters, digits and '-' "
            "(at most 63, starting and ending with a letter or digit)",
        )
    return name


def metadata_name(ctx: Ctx, doc: Mapping[str, Any], fluid: bool) -> str:
    meta = doc.get("metadata")
    if meta is None:
        ctx.fail("metadata.name", "required field is missing")
    meta = mapping(ctx, meta, "metadata")
    for key in meta:
        if key not in _OBJECT_META and not fluid:
            check_keys(ctx, {key: None}, "metadata", _OBJECT_META)
        elif key != "name" and fluid:
            ctx.warn(sub("metadata", key))
    return dataset_name(ctx, meta.get("name"), "metadata.name")


def mount_list(ctx: Ctx, value: object, field: str) -> list[Any]:
    if value is None:
        ctx.fail(field, "required field is missing")
    if not isinstance(value, list):
        ctx.fail(field, f"must be a list, got {kind_of(value)}")
    if not value:
        ctx.fail(field, "must list at least one mount")
    return value


def parse_mount_point(ctx: Ctx, value: object, field: str) -> tuple[str, str, str]:
    """Validate a mountPoint; return (normalised url, scheme, default mount name)."""
    text = string(ctx, value, field).strip()
    if "\0" in text:
        ctx.fail(field, "contains a NUL character")
    if text.startswith("/"):
        return _local(ctx, text, field)
    scheme, sep, rest = text.partition("://")
    if not sep:
        m = _SCHEME_PREFIX.match(text)
        if m is None:
            ctx.fail(field, f"relative local path {text!r}: must be absolute")
        scheme = m.group(1)
    scheme = scheme.lower()
    if scheme not in SUPPORTED_SCHEMES.split(", "):
        ctx.fail(field, f"unknown scheme {scheme!r} (supported: {SUPPORTED_SCHEMES})")
    if not sep:
        ctx.fail(field, f"malformed URL {text!r}: expected {scheme}://...")
    authority = rest.split("/", 1)[0]
    if "@" in authority:  # never echo: it may hold a password
        ctx.fail(field, "credentials in the URL are not allowed; use the credentials field")
    if scheme in ("local", "file"):
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest.startswith("/"):
            ctx.fail(field, f"relative local path {text!r}: must be absolute ({scheme}:///abs/path)")
        return _local(ctx, rest, field)
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            ctx.fail(field, f"s3 URL {text!r} has no bucket")
        if _BUCKET.fullmatch(bucket) is None:
            ctx.fail(field, f"invalid bucket name {bucket!r}")
        parts = [p for p in prefix.split("/") if p]
        check_components(ctx, field, parts, "the URL prefix")
        return f"s3://{bucket}" + "".join("/" + p for p in parts), "s3", safe_component(bucket)
    split = urlsplit(f"{scheme}://{rest}")
    if not split.hostname:
        ctx.fail(field, f"{scheme} URL {text!r} has no host")
    try:
        _ = split.port  # parsing the port raises for a bad one
    except ValueError:
        ctx.fail(field, f"{scheme} URL {text!r} has an invalid port")
    check_components(ctx, field, split.path.split("/"), "the URL path")
    return f"{scheme}://{rest}", scheme, safe_component(split.netloc)


def _local(ctx: Ctx, path: str, field: str) -> tuple[str, str, str]:
    parts = [p for p in path.split("/") if p]
    check_components(ctx, field, parts, "a local path")
    norm = "/" + "/".join(parts)
    return "file://" + norm, "file", safe_component(parts[-1] if parts else "root")


def mount_name(ctx: Ctx, value: object, field: str) -> str:
    name = string(ctx, value, field)
    if (
        name in (".", "..")
        or "/" in name
        or any(ord(c) < 32 for c in name)
        or len(name.encode()) > 255
        or name != name.strip()
    ):
        ctx.fail(field, f"invalid mount name {name!r}: must be a single path component (no '/', not '.' or '..')")
    return name


def mount_path(ctx: Ctx, value: object, field: str) -> str:
    if value == "":
        ctx.fail(field, "must not be empty")
    path = string(ctx, value, field)
    if "\0" in path:
        ctx.fail(field, "contains a NUL character")
    if not path.startswith("/"):
        ctx.fail(field, f"must be absolute (start with '/'), got {path!r}")
    if path == "/":
        return path
    parts = path.rstrip("/")[1:].split("/")
    if "" in parts:
        ctx.fail(field, f"empty path component in {path!r}")
    check_components(ctx, field, parts, "a mount path")
    return "/" + "/".join(parts)


def option_value(ctx: Ctx, key: str, value: object, field: str) -> str:
    """Coerce one option value to a string and validate the known keys."""
    if key in _SECRET_OPTION_NAMES:  # never echo the value
        ctx.fail(field, "credentials belong under 'credentials' (env, file or secretKeyRef), not in options")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float, str)):
        text = str(value)
    else:
        ctx.fail(field, f"must be a string, number or boolean, got {kind_of(value)}")
    if key == "addressing_style":
        if text.lower() not in ("path", "virtual", "auto"):
            ctx.fail(field, f"must be one of path, virtual, auto, got {text!r}")
        return text.lower()
    if key in ("anonymous", "verify_ssl"):
        if text.lower() in _TRUE + _FALSE:
            return "true" if text.lower() in _TRUE else "false"
        ctx.fail(field, f"must be true or false, got {text!r}")
    if key == "endpoint" and not re.match(r"(?i)https?://[^/]", text):
        ctx.fail(field, f"must be an http:// or https:// URL, got {text!r}")
    return text


def parse_options(ctx: Ctx, value: object, field: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, raw in mapping(ctx, value, field).items():
        if not isinstance(key, str) or not key:
            ctx.fail(sub(field, key), "option names must be non-empty strings")
        out[key] = option_value(ctx, key, raw, sub(field, key))
    return out


def secret_ref(ctx: Ctx, value: object, field: str) -> SecretRef:
    m = mapping(ctx, value, field)
    forms = ("env", "file", "secretKeyRef")
    check_keys(ctx, m, field, forms)
    given = [f for f in forms if f in m]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        ctx.fail(field, f"must set exactly one of env, file, secretKeyRef{got}")
    if "env" in m:
        var = string(ctx, m["env"], f"{field}.env")
        if _ENV_NAME.fullmatch(var) is None:
            ctx.fail(f"{field}.env", f"invalid environment variable name {var!r}")
        return SecretRef(env=var)
    if "file" in m:
        path = string(ctx, m["file"], f"{field}.file")
        if not path.startswith("/"):
            ctx.fail(f"{field}.file", f"must be an absolute path, got {path!r}")
        return SecretRef(file=path)
    ref = mapping(ctx, m["secretKeyRef"], f"{field}.secretKeyRef")
    check_keys(ctx, ref, f"{field}.secretKeyRef", ("name", "key"))
    return SecretRef(
        secret_name=string(ctx, ref.get("name"), f"{field}.secretKeyRef.name"),
        secret_key=string(ctx, ref.get("key"), f"{field}.secretKeyRef.key"),
    )


def credentials(ctx: Ctx, value: object, field: str) -> dict[str, SecretRef]:
    out: dict[str, SecretRef] = {}
    for key, raw in mapping(ctx, value, field).items():
        if key not in CREDENTIAL_NAMES:
            check_keys(ctx, {key: None}, field, CREDENTIAL_NAMES)
        out[CREDENTIAL_NAMES[key]] = secret_ref(ctx, raw, sub(field, key))
    return out


def assemble(ctx: Ctx, pending: list[PendingMount]) -> tuple[MountSpec, ...]:
    """Cross-mount checks (unique names, non-overlapping paths); build the MountSpecs."""
    names: dict[str, str] = {}
    for p in pending:
        if p.name in names:
            ctx.fail(
                f"{p.field}.name",
                f"duplicate mount name {p.name!r} (also used by {names[p.name]}); give each mount a distinct name",
            )
        names[p.name] = p.field
    placed: list[tuple[str, str]] = []
    out = []
    for p in pending:
        path = p.path if p.path is not None else "/" + p.name
        if path == "/" and len(pending) > 1:
            ctx.fail(f"{p.field}.path", "'/' is only allowed when the dataset has a single mount")
        for other, other_field in placed:
            if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                ctx.fail(f"{p.field}.path", f"{path!r} overlaps {other!r} of {other_field}")
        placed.append((path, p.field))
        out.append(
            MountSpec(name=p.name, url=p.url, scheme=p.scheme, path=path, options=p.options, credentials=p.credentials)
        )
    return tuple(out)
