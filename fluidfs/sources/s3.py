"""S3Source: a read-only view of one S3 bucket prefix through boto3 (AWS or any S3-compatible store).

Mapping of keys to a tree (``prefix`` is the source root, ``/`` the separator):

- a key ``prefix/a/b`` is the file ``a/b``; every key prefix ending in ``/`` (a "common prefix")
  is a directory.  A zero-byte *marker* key ``prefix/a/`` makes ``a`` an (empty) directory; the
  marker itself is never shown as a file.
- **A name that is both an object and a prefix** (keys ``a`` and ``a/...``): *the directory
  wins and the object ``a`` is hidden*, in ``stat`` and in ``list`` alike (this is what
  mountpoint-s3 does; a POSIX tree cannot hold a file and a directory under one name, and
  hiding the single file is less surprising than hiding a whole subtree).  ``stat`` therefore
  asks "is it a prefix?" (ListObjectsV2, MaxKeys=1) *before* "is it an object?" (HEAD): a
  directory costs one request, a file two.
- Keys whose last component would be empty, ``.`` or ``..`` (``a//b``, ``a/./b``) cannot be
  shown in a POSIX tree and are skipped by ``list``.
- ``version`` is the ETag without quotes (``fluidfs.util.etag``); ``read(..., version)`` sends ``If-Match`` so a changed
  object raises VersionChangedError instead of returning bytes of another version.

Listing is lazy: one ListObjectsV2 request (up to 1000 keys) per yielded page.  S3 returns keys
in UTF-8 byte order, so object ``a`` comes *before* prefix ``a/`` and the two may fall on
different pages; objects near the end of a page that could still be shadowed by a same-named
prefix on the next page are held back until that page arrives (at most one page of them).

Configuration: one boto3 client per source, created from a private botocore Session (never the
process-global default session), shared by all threads (botocore clients are thread-safe).
**Timeouts**: ``max_attempts`` is the total number of tries (botocore's ``total_max_attempts``,
standard retry mode); each try's connect and read timeouts are capped at ``timeout /
max_attempts``, and no new try starts once the operation's deadline has passed
(:mod:`fluidfs.sources.call`), so one operation is over within about ``timeout`` seconds.
Endpoint: the ``endpoint`` argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``,
else AWS.  With a custom endpoint path-style addressing is used unless ``addressing_style``
says otherwise.  Credentials: the explicit dict, else the usual AWS chain (env, config files,
instance metadata); ``anonymous=True`` sends unsigned requests.  Credentials are never logged.

``check`` fails with NotFoundError when the bucket does not exist, or when a prefix was given and
no key starts with ``prefix/`` (an empty "directory" made by a marker object ``prefix/`` exists;
a bucket without any objects is fine when no prefix was given).

Caveats: listings and stats are not atomic with respect to writers (S3 offers no snapshot);
version tokens catch changed content at read time.  An object hidden by a same-named prefix
is unreachable through fluidfs.  A stat of a file costs two requests (LIST, then HEAD); both are
counted in the source metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from fluidfs.errors import (
    AccessDeniedError,
    NotFoundError,
    SourceError,
    SourceTimeoutError,
    UnavailableError,
    VersionChangedError,
)
from fluidfs.sources import call
from fluidfs.sources.base import Entry, Source
from fluidfs.util.etag import normalize_etag
from fluidfs.util.redact import redact_text, redact_url

log = logging.getLogger(__name__)

ADDRESSING_STYLES = ("auto", "path", "virtual")
PAGE_SIZE = 1000

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "401",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}
_UNAVAILABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
    "503",
    "500",
    "502",
    "504",
}
_CHANGED_CODES = {"PreconditionFailed", "412"}
_RANGE_CODES = {"InvalidRange", "416"}


def _code_status(e: ClientError) -> tuple[str, int]:
    err = e.response.get("Error", {}) or {}
    meta = e.response.get("ResponseMetadata", {}) or {}
    return str(err.get("Code", "")), int(meta.get("HTTPStatusCode", 0) or 0)


class S3Source(Source):
    """One bucket prefix.  Thread-safe; see the module docstring for the key → tree rules."""

    kind = "s3"
    counts_requests = True  # every try, through the before-send hook

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        anonymous: bool = False,
        credentials: Mapping[str, str] | None = None,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        max_attempts: int = 3,
        max_pool_connections: int = 64,
        timeout: float | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3Source needs a bucket name")
        if addressing_style not in ADDRESSING_STYLES:
            raise ValueError(
                f"addressing_style must be one of {', '.join(ADDRESSING_STYLES)} (got {addressing_style!r})"
            )
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""  # key prefix of the root, "" or "p/"
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        style = addressing_style
        if style == "auto" and self.endpoint:
            style = "path"  # S3-compatible servers rarely have wildcard DNS for buckets
        attempts = max(1, int(max_attempts))
        if timeout is not None:  # every try gets its share of the operation's deadline
            connect_timeout = min(connect_timeout, timeout / attempts)
            read_timeout = min(read_timeout, timeout / attempts)
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": attempts},
            max_pool_connections=max_pool_connections,
            s3={"addressing_style": style},
            signature_version=UNSIGNED if anonymous else None,
            # we only GET; "when_required" keeps third-party S3 servers happy
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="fluidfs",
        )
        session = botocore.session.Session()
        self.region = region or session.get_config_variable("region") or "us-east-1"
        creds = dict(credentials or {})
        key_id = creds.get("access_key_id") or None
        secret = creds.get("secret_access_key") or None
        if bool(key_id) != bool(secret):
            raise ValueError("access_key_id and secret_access_key must be given together")
        self.anonymous = anonymous
        self._client: Any = session.create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint,
            config=config,
            aws_access_key_id=None if anonymous else key_id,
            aws_secret_access_key=None if anonymous else secret,
            aws_session_token=None if anonymous else (creds.get("session_token") or None),
        )
        self._client.meta.events.register("before-send.s3", self._before_send)
        log.debug(
            "S3 source %s (endpoint=%s region=%s addressing=%s anonymous=%s explicit_credentials=%s)",
            self.url(""),
            redact_url(self.endpoint or "aws"),
            self.region,
            style,
            anonymous,
            bool(key_id),
        )

    # ----------------------------------------------------------------- helpers

    def _key(self, path: str) -> str:
        return self.prefix + path

    def _dir_prefix(self, path: str) -> str:
        return self.prefix + path + "/" if path else self.prefix

    def url(self, path: str) -> str:
        return f"s3://{self.bucket}/{self._key(path)}"

    def _endpoint_name(self) -> str:
        if self.endpoint:
            return redact_url(self.endpoint)
        return redact_url(str(getattr(self._client.meta, "endpoint_url", "") or "https://s3.amazonaws.com"))

    def _before_send(self, request: Any, **kwargs: Any) -> None:
        """botocore hook before every try: count it; none once the operation's deadline has passed."""
        call.request_timeout(1.0, redact_url(str(getattr(request, "url", "") or "")))
        call.count_request()

    def _error(self, exc: Exception, path: str, op: str) -> SourceError:
        """Convert a botocore/network exception into the matching SourceError."""
        url = self.url(path)
        if isinstance(exc, SourceError):
            return exc  # raised by our own hook (deadline passed)
        if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError)):
            return SourceTimeoutError(f"S3 {op}: endpoint {self._endpoint_name()} did not answer ({exc})", url)
        if isinstance(exc, ClientError):
            code, status = _code_status(exc)
            if code == "NoSuchBucket":
                return NotFoundError(f"bucket '{self.bucket}' does not exist", url)
            if code in _NOT_FOUND_CODES or status == 404:
                return NotFoundError("no such object or prefix", url)
            if code in _DENIED_CODES or status in (401, 403):
                return AccessDeniedError(f"access denied (check credentials) [{code or status}]", url)
            if code in _CHANGED_CODES or status == 412:
                return VersionChangedError("object changed since it was opened", url)
            if code in _UNAVAILABLE_CODES or status >= 500:
                return UnavailableError(f"S3 {op} failed after retries [{code or status}]", url)
            return SourceError(f"S3 {op} failed [{code or status}]: {exc}", url)
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return AccessDeniedError(
                "no usable AWS credentials (set access_key_id/secret_access_key or AWS_* env)", url
            )
        if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, OSError)):
            return UnavailableError(f"cannot reach endpoint {self._endpoint_name()} ({redact_text(str(exc))})", url)
        if isinstance(exc, BotoCoreError):
            return SourceError(f"S3 {op} failed: {redact_text(str(exc))}", url)
        return SourceError(f"S3 {op} failed: {type(exc).__name__}: {redact_text(str(exc))}", url)

    def _list_page(self, prefix: str, token: str | None, max_keys: int, path: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "Delimiter": "/",
            "MaxKeys": max_keys,
        }
        if token:
            kwargs["ContinuationToken"] = token
        try:
            return dict(self._client.list_objects_v2(**kwargs))
        except Exception as e:
            raise self._error(e, path, "list") from e

    # ----------------------------------------------------------------- Source API

    def stat(self, path: str) -> Entry:
        if not path:
            return Entry(name="", is_dir=True)
        name = path.rsplit("/", 1)[-1]
        # directory wins over a same-named object: ask for the prefix first
        page = self._list_page(self._dir_prefix(path), None, 1, path)
        if page.get("KeyCount", 0) or page.get("Contents") or page.get("CommonPrefixes"):
            return Entry(name=name, is_dir=True)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(path))
        except Exception as e:
            raise self._error(e, path, "stat") from e
        return Entry(
            name=name,
            is_dir=False,
            size=int(head.get("ContentLength", 0)),
            mtime=head["LastModified"].timestamp() if head.get("LastModified") else 0.0,
            version=normalize_etag(head.get("ETag")),
        )

    def list(self, path: str) -> Iterator[list[Entry]]:
        prefix = self._dir_prefix(path)
        plen = len(prefix)
        token: str | None = None
        first = True
        emitted_dirs: set[str] = set()
        pending: list[tuple[str, Entry]] = []  # (key, entry) objects that a later prefix may hide
        while True:
            page = self._list_page(prefix, token, PAGE_SIZE, path)
            contents = page.get("Contents") or []
            prefixes = page.get("CommonPrefixes") or []
            if first and path and not contents and not prefixes:
                raise NotFoundError("no such directory", self.url(path))
            first = False
            truncated = bool(page.get("IsTruncated")) and bool(page.get("NextContinuationToken"))

            items: list[tuple[str, Entry]] = []
            page_dirs: set[str] = set()
            for cp in prefixes:
                key = cp.get("Prefix", "")
                name = key[plen:-1] if key.endswith("/") else key[plen:]
                if not name or name in (".", "..") or "/" in name or name in emitted_dirs:
                    continue
                emitted_dirs.add(name)
                page_dirs.add(name)
                items.append((key, Entry(name=name, is_dir=True)))
            last_key = ""
            for obj in contents:
                key = obj.get("Key", "")
                last_key = max(last_key, key)
                name = key[plen:]
                if not name or name in (".", "..") or "/" in name:
                    continue  # the directory's own marker, or an unrepresentable name
                lm = obj.get("LastModified")
                items.append(
                    (
                        key,
                        Entry(
                            name=name,
                            is_dir=False,
                            size=int(obj.get("Size", 0)),
                            mtime=lm.timestamp() if lm is not None else 0.0,
                            version=normalize_etag(obj.get("ETag")),
                        ),
                    )
                )
            if prefixes:
                last_key = max(last_key, max(cp.get("Prefix", "") for cp in prefixes))

            # objects held back from the previous page, then this page's items, in key order
            candidates = sorted(pending + items, key=lambda kv: kv[0])
            pending = []
            out: list[Entry] = []
            for key, entry in candidates:
                if entry.is_dir:
                    out.append(entry)
                    continue
                if entry.name in emitted_dirs:
                    continue  # directory wins; the object is hidden
                if truncated and key + "/" > last_key:
                    pending.append((key, entry))  # "name/" may still come on the next page
                    continue
                out.append(entry)
            if not truncated:
                out.extend(e for _, e in pending if e.name not in emitted_dirs)
                pending = []
            if out:
                yield out
            if not truncated:
                return
            token = page.get("NextContinuationToken")

    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        if end <= start:
            return b""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(path),
            "Range": f"bytes={start}-{end - 1}",
        }
        if version:
            kwargs["IfMatch"] = f'"{version}"'
        try:
            resp = self._client.get_object(**kwargs)
        except ClientError as e:
            code, status = _code_status(e)
            if code in _RANGE_CODES or status == 416:
                return b""  # start is at or past the end of the object
            raise self._error(e, path, "read") from e
        except Exception as e:
            raise self._error(e, path, "read") from e
        body = resp["Body"]
        try:
            data = body.read()
        except Exception as e:
            raise self._error(e, path, "read") from e
        finally:
            body.close()
        got = normalize_etag(resp.get("ETag"))
        if version and got and got != version:
            # a server that ignores If-Match must not hand us bytes of another version
            raise VersionChangedError("object changed since it was opened", self.url(path))
        if len(data) > end - start:
            # a server that ignores Range (answers 200 with the whole object)
            call.count_bytes(len(data) - (end - start))
            if resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200 and not resp.get("ContentRange"):
                data = data[start:end]
            else:
                data = data[: end - start]
        return bytes(data)

    def check(self) -> None:
        try:
            page = self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except ClientError as e:
            code, status = _code_status(e)
            url = self.url("")
            if code == "NoSuchBucket" or status == 404:
                raise NotFoundError(f"bucket '{self.bucket}' does not exist", url) from e
            if code in _DENIED_CODES or status in (401, 403):
                raise AccessDeniedError("access denied (check credentials)", url) from e
            raise self._error(e, "", "check") from e
        except Exception as e:
            raise self._error(e, "", "check") from e
        if self.prefix and not page.get("KeyCount") and not page.get("Contents"):
            raise NotFoundError(f"no objects under prefix '{self.prefix}' in bucket '{self.bucket}'", self.url(""))

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            log.debug("closing S3 client for %s failed", self.url(""), exc_info=True)
