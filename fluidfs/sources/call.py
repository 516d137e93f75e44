"""The context of one source operation: its deadline, and the requests and bytes it cost.

:class:`fluidfs.sources.aio.AsyncSource` runs every blocking source call inside :func:`within`
(a ``contextvars`` variable, so it follows the call into the worker thread).  Backends use it
to keep one operation inside its deadline however many requests it makes:

- :func:`request_timeout` gives the timeout of the next request (``min(cap, time left)``) and
  raises :class:`~fluidfs.errors.SourceTimeoutError` once the deadline has passed, so retries
  stop and a listing that needs many requests stops too;
- :func:`count_request` reports each request a backend sends (retries, an autoindex listing's
  HEADs; backends that do set ``Source.counts_requests``) and :func:`count_bytes` the bytes
  received beyond the data returned (the skipped prefix of a server that ignores ``Range``), so
  the ``fluidfs_source_*`` metrics count what really went over the wire.

Outside :func:`within` (a source used directly, e.g. in tests) there is no deadline and nothing
is counted.  A worker thread that runs several requests in parallel must give each its own copy
of the context (``contextvars.copy_context().run``).

Caveats: the deadline is cooperative: a request already sent is bounded by its own timeouts,
not interrupted.  The async wrapper enforces the deadline for its caller regardless.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fluidfs.errors import SourceTimeoutError


@dataclass
class Call:
    """One source operation in progress."""

    timeout: float  # seconds the whole operation may take
    deadline: float  # time.monotonic() when it must be over
    requests: int = 0  # requests sent (by backends that count them)
    extra_bytes: int = 0  # bytes received beyond the data returned
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests: int = 0, extra_bytes: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.extra_bytes += extra_bytes


_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar("fluidfs_source_call", default=None)


def new_call(timeout: float) -> Call:
    return Call(timeout=timeout, deadline=time.monotonic() + timeout)


@contextmanager
def within(call: Call) -> Iterator[Call]:
    """Run the body as (part of) operation ``call``."""
    token = _current.set(call)
    try:
        yield call
    finally:
        _current.reset(token)


def current() -> Call | None:
    return _current.get()


def request_timeout(cap: float, url: str = "") -> float:
    """Timeout for the next request: ``cap``, or less if the operation's deadline is nearer.

    Raises SourceTimeoutError when the deadline has passed."""
    call = _current.get()
    if call is None:
        return cap
    left = call.deadline - time.monotonic()
    if left <= 0:
        raise SourceTimeoutError(f"no answer within {call.timeout:g}s (request timeout)", url)
    return min(cap, left)


def count_request(n: int = 1) -> None:
    call = _current.get()
    if call is not None:
        call.add(requests=n)


def count_bytes(n: int) -> None:
    call = _current.get()
    if call is not None and n > 0:
        call.add(extra_bytes=n)
