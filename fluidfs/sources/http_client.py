"""HTTPClient: the requests of the HTTP source — one urllib3 pool, tries, timeouts taken from the
operation's deadline, error mapping and request counting.

``request`` tries a request up to ``max_attempts`` times on connection errors, timeouts and
502/503/504 (backoff 0.1 s doubling, at most 2 s); urllib3 itself only follows redirects.  Each
try's connect and read timeouts are ``min(option, timeout / max_attempts, time left)`` within
one source operation (:mod:`fluidfs.sources.call`), no try starts after the deadline and no
backoff outlasts it; every try and every redirect is counted.  Errors are SourceErrors whose
messages carry redacted URLs (:mod:`fluidfs.util.redact`).

Caveats: a body read after ``request`` returns (``preload=False``) is bounded by the read
timeout of each socket read, not by the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, MaxRetryError, ReadTimeoutError, SSLError
from urllib3.util.retry import Retry

from fluidfs.errors import (
    AccessDeniedError,
    NotFoundError,
    SourceError,
    SourceTimeoutError,
    UnavailableError,
)
from fluidfs.sources import call
from fluidfs.util.redact import redact_text, redact_url

RETRY_STATUSES = (502, 503, 504)


class HTTPClient:
    """Thread-safe requests for one HTTP source (see the module docstring)."""

    def __init__(
        self,
        headers: Mapping[str, str],
        *,
        verify_ssl: bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
        pool_size: int = 32,
        timeout: float | None = None,
    ) -> None:
        if timeout is not None:  # every try gets its share of an operation's deadline
            connect_timeout = min(connect_timeout, timeout / max_attempts)
            read_timeout = min(read_timeout, timeout / max_attempts)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.attempts = max_attempts
        self._redirects = Retry(
            total=None,
            connect=0,
            read=0,
            status=0,
            other=0,
            redirect=5,
            raise_on_status=False,
            raise_on_redirect=False,
            respect_retry_after_header=False,
        )
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            block=False,
            headers=dict(headers),
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            cert_reqs="CERT_REQUIRED" if verify_ssl else "CERT_NONE",
        )

    def request(
        self, method: str, url: str, headers: Mapping[str, str] | None = None, preload: bool = True
    ) -> urllib3.BaseHTTPResponse:
        """The answer to ``method url`` (any status but a retried 502/503/504); SourceError when
        there is none after all tries."""
        shown = redact_url(url)
        attempt = 0
        while True:
            attempt += 1
            timeout = urllib3.Timeout(
                connect=call.request_timeout(self.connect_timeout, shown),
                read=call.request_timeout(self.read_timeout, shown),
            )
            call.count_request()
            failure: SourceError
            try:
                resp = self._pool.request(
                    method,
                    url,
                    headers={**self._pool.headers, **(headers or {})},
                    retries=self._redirects,
                    redirect=True,
                    preload_content=preload,
                    timeout=timeout,
                )
            except (MaxRetryError, HTTPError) as exc:
                reason = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
                text = redact_text(str(reason))
                if isinstance(reason, SSLError):
                    raise SourceError(f"TLS error ({text})", shown) from None
                if isinstance(reason, (ReadTimeoutError, ConnectTimeoutError)):
                    failure = SourceTimeoutError(f"{method}: no answer after {attempt} tries ({text})", shown)
                else:
                    failure = UnavailableError(f"{method} failed after {attempt} tries ({text})", shown)
            else:
                call.count_request(len(resp.retries.history) if resp.retries is not None else 0)  # redirects
                if resp.status not in RETRY_STATUSES or attempt >= self.attempts:
                    return resp
                discard(resp)
                failure = UnavailableError(f"{method}: HTTP {resp.status} after {attempt} tries", shown)
            if attempt >= self.attempts:
                raise failure
            pause = min(2.0, 0.1 * 2 ** (attempt - 1))
            if call.request_timeout(float("inf"), shown) <= pause:
                raise failure  # no time left for another try
            time.sleep(pause)

    def close(self) -> None:
        self._pool.clear()


def discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back without reading a possibly large body."""
    if not resp.closed and resp.length_remaining not in (None, 0):
        resp.close()
    resp.release_conn()


def fail(resp: urllib3.BaseHTTPResponse, url: str, what: str) -> SourceError:
    """The SourceError for an unexpected status (the URL redacted)."""
    status = resp.status
    url = redact_url(url)
    if status in (404, 410):
        return NotFoundError(f"{what}: HTTP {status}", url)
    if status in (401, 403):
        return AccessDeniedError(f"{what}: HTTP {status}", url)
    if status >= 500:
        return UnavailableError(f"{what}: HTTP {status}", url)
    return SourceError(f"{what}: unexpected HTTP {status}", url)
