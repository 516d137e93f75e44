"""open_source: build the Source for one MountSpec (dispatch on its URL scheme, validate options).

Schemes: ``s3`` → S3Source, ``file`` → LocalSource, ``http``/``https`` →
``fluidfs.sources.http.HTTPSource.from_mount`` (imported lazily).

S3 ``mount.options`` (all strings, as they come from the Dataset YAML):

    endpoint (alias endpoint_url)  http(s)://host:port of an S3-compatible server
    region                         signing region (default: AWS config, else us-east-1)
    addressing_style               auto | path | virtual                    (default auto)
    anonymous                      true | false (also yes/no/1/0)           (default false)
    connect_timeout, read_timeout  seconds, > 0, per attempt                (default 5, 30)
    max_attempts                   integer >= 1, includes the first try     (default 3)
    max_pool_connections           integer >= 1                             (default 64)

Every source gets the request timeout (``MountConfig.request_timeout``): one operation, all its
attempts included, is over within it, so each attempt's connect and read timeouts are capped at
``timeout / max_attempts``.  :func:`open_sources` checks all mounts in parallel, each within
that timeout, so opening a dataset never takes much longer than one timeout.

A bad option *value* raises ``SpecError(f"mount '{name}'", "options.<key>", problem)`` — it is
a mistake in the Dataset document, reported as ``mount 'x': options.addressing_style: ...``
and exits 2 like every other spec error.  Unknown option *keys* are logged as a warning and
ignored (Fluid Datasets carry options for other runtimes).  Credentials arrive resolved
(name → value); their values are never logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import trio

from fluidfs.config import DEFAULT_REQUEST_TIMEOUT
from fluidfs.errors import SourceError, SpecError
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Source
from fluidfs.spec.model import Dataset, MountSpec
from fluidfs.spec.parse import resolve_credentials
from fluidfs.util.redact import redact_url

log = logging.getLogger(__name__)

S3_OPTIONS = {
    "endpoint",
    "endpoint_url",
    "region",
    "addressing_style",
    "anonymous",
    "connect_timeout",
    "read_timeout",
    "max_attempts",
    "max_pool_connections",
}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off", ""}


def open_source(mount: MountSpec, credentials: Mapping[str, str], timeout: float = DEFAULT_REQUEST_TIMEOUT) -> Source:
    """Return a ready-to-use (not yet checked) Source for ``mount``; ``timeout`` bounds each of
    its operations (see the module docstring)."""
    scheme = mount.scheme.lower()
    if scheme == "s3":
        return _open_s3(mount, credentials, timeout)
    # backends are imported on use, so only the client library a dataset needs is loaded
    if scheme == "file":
        from fluidfs.sources.local import LocalSource

        return LocalSource(local_path(mount.url))
    if scheme in ("http", "https"):
        from fluidfs.sources.http import HTTPSource

        return HTTPSource.from_mount(mount, dict(credentials), timeout=timeout)
    raise SpecError(_doc(mount), "mountPoint", f"unsupported scheme {mount.scheme!r} in {redact_url(mount.url)!r}")


def open_sources(dataset: Dataset, timeout: float = DEFAULT_REQUEST_TIMEOUT) -> list[tuple[Source, MountSpec]]:
    """Open every mount's source and check that it answers (credentials, bucket, endpoint, path).

    The checks run in parallel (in a trio run of their own: call this outside trio), each within
    ``timeout`` seconds; the first failure (in mount order) is raised as the matching
    SourceError naming the mount.  Sources are closed on failure.
    """
    out = [(open_source(m, resolve_credentials(m), timeout), m) for m in dataset.mounts]
    errors: dict[int, SourceError] = {}

    async def check(i: int, src: Source) -> None:
        try:
            await AsyncSource(src, dataset.name, trio.CapacityLimiter(1), timeout).check()
        except SourceError as exc:
            errors[i] = exc

    async def check_all() -> None:
        async with trio.open_nursery() as nursery:
            for i, (src, _m) in enumerate(out):
                nursery.start_soon(check, i, src)

    trio.run(check_all)
    if errors:
        i = min(errors)
        m, exc = out[i][1], errors[i]
        for src, _m in out:
            _close_quietly(src)
        raise type(exc)(f"mount '{m.name}' ({redact_url(m.url)}): {exc}") from None
    return out


def _close_quietly(src: Source) -> None:
    try:
        src.close()
    except Exception:  # closing must not hide the error being reported
        log.debug("closing source %s failed", src.url(""), exc_info=True)


def local_path(url: str) -> str:
    """``file:///abs/path`` (or a plain path) → ``/abs/path``."""
    if url.startswith("file://"):
        rest = url[len("file://") :]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        # keep names containing '%' intact unless the decoded form is what exists
        if "%" in rest and not os.path.exists(rest) and os.path.exists(unquote(rest)):
            rest = unquote(rest)
        return rest or "/"
    if url.startswith("local://"):
        return url[len("local://") :] or "/"
    return url


def _doc(mount: MountSpec) -> str:
    return f"mount '{mount.name}'"


def _bool(mount: MountSpec, key: str, default: bool) -> bool:
    raw = mount.options.get(key)
    if raw is None:
        return default
    value = str(raw).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SpecError(_doc(mount), f"options.{key}", f"must be true or false (got {raw!r})")


def _number(mount: MountSpec, key: str, default: float, *, integer: bool = False) -> float:
    raw = mount.options.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = int(str(raw).strip()) if integer else float(str(raw).strip())
    except ValueError:
        kind = "an integer" if integer else "a number of seconds"
        raise SpecError(_doc(mount), f"options.{key}", f"must be {kind} (got {raw!r})") from None
    if not value > 0 or value != value or value == float("inf"):
        raise SpecError(_doc(mount), f"options.{key}", f"must be positive (got {raw!r})")
    return value


def _open_s3(mount: MountSpec, credentials: Mapping[str, str], timeout: float) -> Source:
    from fluidfs.sources.s3 import ADDRESSING_STYLES, S3Source

    parts = urlsplit(mount.url)
    bucket = parts.netloc
    if not bucket:
        raise SpecError(_doc(mount), "mountPoint", f"no bucket in {mount.url!r} (expected s3://bucket/prefix)")
    prefix = parts.path.strip("/")

    for key in mount.options:
        if key not in S3_OPTIONS:
            log.warning("mount %r: ignoring unknown S3 option %r", mount.name, key)

    style = str(mount.options.get("addressing_style", "auto")).strip().lower() or "auto"
    if style not in ADDRESSING_STYLES:
        raise SpecError(
            _doc(mount),
            "options.addressing_style",
            f"must be one of {', '.join(ADDRESSING_STYLES)} (got {mount.options['addressing_style']!r})",
        )
    endpoint = str(mount.options.get("endpoint") or mount.options.get("endpoint_url") or "").strip()
    if endpoint and not endpoint.startswith(("http://", "https://")):
        key = "endpoint" if mount.options.get("endpoint") else "endpoint_url"
        raise SpecError(
            _doc(mount), f"options.{key}", f"must be an http:// or https:// URL (got {redact_url(endpoint)!r})"
        )
    anonymous = _bool(mount, "anonymous", False)
    creds = {k: v for k, v in credentials.items() if v}
    if not anonymous and bool(creds.get("access_key_id")) != bool(creds.get("secret_access_key")):
        raise SpecError(_doc(mount), "credentials", "access_key_id and secret_access_key must be given together")
    return S3Source(
        bucket,
        prefix,
        endpoint=endpoint or None,
        region=str(mount.options.get("region") or "").strip() or None,
        addressing_style=style,
        anonymous=anonymous,
        credentials=creds,
        connect_timeout=_number(mount, "connect_timeout", 5),
        read_timeout=_number(mount, "read_timeout", 30),
        max_attempts=int(_number(mount, "max_attempts", 3, integer=True)),
        max_pool_connections=int(_number(mount, "max_pool_connections", 64, integer=True)),
        timeout=timeout,
    )
