"""Value checks of the Dataset documents: one function per kind of field, shared by both formats and the command line.

Each function takes a raw value (a YAML scalar or mapping, or a command-line string) and returns
the normalised value, or raises :class:`Problem` with the problem alone; the caller knows the
field path (``fluidfs.spec.schema`` turns a Problem into ``SpecError(document, field, problem)``).
A Problem may point below the field it was raised for (``at=("region",)`` for one option).  Type
mistakes never echo the value: it might be a secret.  :func:`assemble` does the checks across
mounts (unique names, one ``/`` mount, non-overlapping paths).

Caveats: local paths and URLs are taken literally (no percent-decoding); a normalised local
mount's ``url`` is ``"file://" + absolute_path``.  http(s) URLs are kept as given (only the
scheme is lower-cased); s3 URLs lose empty prefix components and any trailing slash.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from fluidfs.config.kinds import kind_of, text
from fluidfs.errors import SpecError
from fluidfs.spec.model import MountSpec, SecretRef

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
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEME_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
T = TypeVar("T")


class Problem(ValueError):
    """What is wrong with a value; ``at`` is a path below the field it was raised for."""

    def __init__(self, problem: str, at: tuple[str, ...] = ()) -> None:
        super().__init__(problem)
        self.at = at


@dataclass(frozen=True)
class Location:
    """A validated ``mountPoint``."""

    url: str  # normalised (local:// and file:// -> file:///abs)
    scheme: str  # "s3" | "http" | "https" | "file"
    default_name: str  # the mount name when the document gives none


@dataclass
class PendingMount:
    """A mount whose fields are valid one by one, before the checks across mounts."""

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


def unknown_field(key: object, allowed: Iterable[str]) -> str:
    """The message for an unknown key: the closest allowed name, or the list of them."""
    allowed = tuple(allowed)
    lower = {a.lower(): a for a in allowed}
    close = difflib.get_close_matches(str(key).lower(), lower, n=1)
    return "unknown field; " + (
        f"did you mean {lower[close[0]]!r}?" if close else "expected one of: " + ", ".join(allowed)
    )


def string(value: object) -> str:
    """A required non-empty string (the value is never echoed: it might be a secret)."""
    try:
        return text(value)
    except ValueError as exc:
        raise Problem(str(exc)) from None


def mapping(value: object) -> dict[object, object]:
    if not isinstance(value, dict):
        raise Problem(f"must be a mapping, got {kind_of(value)}")
    return value


def safe_component(raw: str, fallback: str = "mount") -> str:
    """``raw`` turned into a safe path component (default mount names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip(".-") or fallback


def dns_label(raw: str) -> str:
    """``raw`` turned into a valid dataset name (lowercase alnum and ``-``, at most 63)."""
    return re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")[:63].strip("-") or "dataset"


def dataset_name(value: object) -> str:
    name = string(value)
    if _DNS_LABEL.fullmatch(name) is None:
        raise Problem(
            f"invalid name {name!r}: use lowercase letters, digits and '-' "
            "(at most 63, starting and ending with a letter or digit)"
        )
    return name


def _components(parts: Iterable[str], where: str) -> None:
    for part in parts:
        if part in (".", ".."):
            raise Problem(f"{part!r} components are not allowed in {where}")


def location(value: object) -> Location:
    """Validate a mountPoint: a URL or an absolute local path."""
    txt = string(value).strip()
    if "\0" in txt:
        raise Problem("contains a NUL character")
    if txt.startswith("/"):
        return _local(txt)
    scheme, sep, rest = txt.partition("://")
    if not sep:
        m = _SCHEME_PREFIX.match(txt)
        if m is None:
            raise Problem(f"relative local path {txt!r}: must be absolute")
        scheme = m.group(1)
    scheme = scheme.lower()
    if scheme not in SUPPORTED_SCHEMES.split(", "):
        raise Problem(f"unknown scheme {scheme!r} (supported: {SUPPORTED_SCHEMES})")
    if not sep:
        raise Problem(f"malformed URL {txt!r}: expected {scheme}://...")
    if "@" in rest.split("/", 1)[0]:  # never echo: it may hold a password
        raise Problem("credentials in the URL are not allowed; use the credentials field")
    if scheme in ("local", "file"):
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest.startswith("/"):
            raise Problem(f"relative local path {txt!r}: must be absolute ({scheme}:///abs/path)")
        return _local(rest)
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise Problem(f"s3 URL {txt!r} has no bucket")
        if _BUCKET.fullmatch(bucket) is None:
            raise Problem(f"invalid bucket name {bucket!r}")
        parts = [p for p in prefix.split("/") if p]
        _components(parts, "the URL prefix")
        return Location(f"s3://{bucket}" + "".join("/" + p for p in parts), "s3", safe_component(bucket))
    split = urlsplit(f"{scheme}://{rest}")
    if not split.hostname:
        raise Problem(f"{scheme} URL {txt!r} has no host")
    try:
        _ = split.port  # parsing the port raises for a bad one
    except ValueError:
        raise Problem(f"{scheme} URL {txt!r} has an invalid port") from None
    _components(split.path.split("/"), "the URL path")
    return Location(f"{scheme}://{rest}", scheme, safe_component(split.netloc))


def _local(path: str) -> Location:
    parts = [p for p in path.split("/") if p]
    _components(parts, "a local path")
    return Location("file:///" + "/".join(parts), "file", safe_component(parts[-1] if parts else "root"))


def mount_name(value: object) -> str:
    name = string(value)
    if (
        name in (".", "..")
        or "/" in name
        or any(ord(c) < 32 for c in name)
        or len(name.encode()) > 255
        or name != name.strip()
    ):
        raise Problem(f"invalid mount name {name!r}: must be a single path component (no '/', not '.' or '..')")
    return name


def mount_path(value: object) -> str:
    path = string(value)
    if "\0" in path:
        raise Problem("contains a NUL character")
    if not path.startswith("/"):
        raise Problem(f"must be absolute (start with '/'), got {path!r}")
    if path == "/":
        return path
    parts = path.rstrip("/")[1:].split("/")
    if "" in parts:
        raise Problem(f"empty path component in {path!r}")
    _components(parts, "a mount path")
    return "/" + "/".join(parts)


def read_only(value: object) -> bool:
    if not isinstance(value, bool):
        raise Problem(f"must be true or false, got {kind_of(value)}")
    return value


def option_value(key: str, value: object) -> str:
    """Coerce one option value to a string and validate the known keys."""
    if key in _SECRET_OPTION_NAMES:  # never echo the value
        raise Problem("credentials belong under 'credentials' (env, file or secretKeyRef), not in options")
    if isinstance(value, bool):
        txt = "true" if value else "false"
    elif isinstance(value, (int, float, str)):
        txt = str(value)
    else:
        raise Problem(f"must be a string, number or boolean, got {kind_of(value)}")
    if key == "addressing_style":
        if txt.lower() not in ("path", "virtual", "auto"):
            raise Problem(f"must be one of path, virtual, auto, got {txt!r}")
        return txt.lower()
    if key in ("anonymous", "verify_ssl"):
        if txt.lower() in _TRUE + _FALSE:
            return "true" if txt.lower() in _TRUE else "false"
        raise Problem(f"must be true or false, got {txt!r}")
    if key == "endpoint" and not re.match(r"(?i)https?://[^/]", txt):
        raise Problem(f"must be an http:// or https:// URL, got {txt!r}")
    return txt


def options(value: object) -> dict[str, str]:
    """A mount's ``options`` mapping: string keys, scalar values (coerced to strings)."""
    out: dict[str, str] = {}
    for key, raw in mapping(value).items():
        if not isinstance(key, str) or not key:
            raise Problem("option names must be non-empty strings", at=(str(key),))
        try:
            out[key] = option_value(key, raw)
        except Problem as exc:
            raise Problem(str(exc), at=(key, *exc.at)) from None
    return out


def env_name(value: object) -> str:
    var = string(value)
    if _ENV_NAME.fullmatch(var) is None:
        raise Problem(f"invalid environment variable name {var!r}")
    return var


def absolute_file(value: object) -> str:
    path = string(value)
    if not path.startswith("/"):
        raise Problem(f"must be an absolute path, got {path!r}")
    return path


def mount_list(value: list[T]) -> list[T]:
    if not value:
        raise Problem("must list at least one mount")
    return value


def assemble(document: str, pending: list[PendingMount]) -> tuple[MountSpec, ...]:
    """Checks across mounts (unique names, non-overlapping paths); build the MountSpecs."""
    names: dict[str, str] = {}
    for p in pending:
        if p.name in names:
            raise SpecError(
                document,
                f"{p.field}.name",
                f"duplicate mount name {p.name!r} (also used by {names[p.name]}); give each mount a distinct name",
            )
        names[p.name] = p.field
    placed: list[tuple[str, str]] = []
    out = []
    for p in pending:
        path = p.path if p.path is not None else "/" + p.name
        if path == "/" and len(pending) > 1:
            raise SpecError(document, f"{p.field}.path", "'/' is only allowed when the dataset has a single mount")
        for other, other_field in placed:
            if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                raise SpecError(document, f"{p.field}.path", f"{path!r} overlaps {other!r} of {other_field}")
        placed.append((path, p.field))
        out.append(
            MountSpec(name=p.name, url=p.url, scheme=p.scheme, path=path, options=p.options, credentials=p.credentials)
        )
    return tuple(out)
