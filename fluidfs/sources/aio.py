"""AsyncSource: the trio-facing wrapper of a blocking Source, with a deadline on every call.

Every call runs in a worker thread through the source's own ``trio.CapacityLimiter`` (one per
source, so a slow source cannot take the threads of the others; blocking boto3/urllib3/pread
calls never stall the FUSE loop) and is counted, timed and error-counted in the
``fluidfs_source_*`` metrics.

**Deadline.** Every call must be over within ``timeout`` seconds (``request_timeout``), waiting
for a thread included: after that the caller gets :class:`~fluidfs.errors.SourceTimeoutError`
(an UnavailableError: EIO, or stale metadata where the namespace has some) and the worker thread
is abandoned (it still holds its limiter slot until its own request timeouts end it; backends
size those from the same deadline, see :mod:`fluidfs.sources.call`).

**Unresponsive source.** A timeout marks the source unresponsive: for ``cooldown`` seconds
every new call fails at once with SourceTimeoutError instead of waiting out its own deadline
(so a reader, the kernel's retry of its read and the next ``open`` do not each wait the whole
timeout); after that one call at a time probes the source with the full deadline, the others
still fail at once, and the first answer of any kind (data or an error such as not found) ends
the state.

Caveats: an abandoned thread keeps running until its request times out; the limiter bounds how
many there can be.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import trio

from fluidfs import metrics
from fluidfs.config import DEFAULT_REQUEST_TIMEOUT
from fluidfs.errors import SourceError, SourceTimeoutError
from fluidfs.sources import call as calls
from fluidfs.sources.base import Entry, Source

log = logging.getLogger(__name__)

T = TypeVar("T")

_END = object()


class Responsiveness:
    """Whether a source answers: trips on a timeout, fails calls fast for ``cooldown`` seconds,
    then lets one probe through at a time."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self.tripped_at: float | None = None  # monotonic time of the last timeout
        self._probing = False

    def admit(self) -> bool:
        """True if a call may go to the source now (it becomes the probe when tripped)."""
        if self.tripped_at is None:
            return True
        if self._probing or time.monotonic() - self.tripped_at < self.cooldown:
            return False
        self._probing = True
        return True

    def answered(self) -> None:
        self.tripped_at = None
        self._probing = False

    def timed_out(self) -> None:
        self.tripped_at = time.monotonic()
        self._probing = False

    def done(self, probe: bool) -> None:
        """The call ended without an answer or a timeout (cancelled)."""
        if probe:
            self._probing = False


class AsyncSource:
    """Async access to one Source for one dataset."""

    def __init__(
        self,
        source: Source,
        dataset: str,
        limiter: trio.CapacityLimiter,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        cooldown: float | None = None,
    ) -> None:
        self.source = source
        self.kind = source.kind
        self.dataset = dataset
        self.limiter = limiter
        self.timeout = timeout
        self.health = Responsiveness(min(5.0, timeout) if cooldown is None else cooldown)
        self._bytes = metrics.SOURCE_BYTES.labels(dataset, self.kind)

    async def _call(self, op: str, fn: Callable[..., T], *args: object) -> T:
        url = self.source.url(str(args[0])) if args and isinstance(args[0], str) else self.source.url("")
        if not self.health.admit():
            metrics.SOURCE_ERRORS.labels(self.dataset, self.kind, op).inc()
            metrics.SOURCE_TIMEOUTS.labels(self.dataset, self.kind, op).inc()
            ago = time.monotonic() - (self.health.tripped_at or time.monotonic())
            raise SourceTimeoutError(f"source not responding (a request timed out {ago:.0f}s ago)", url)
        probe = self.health.tripped_at is not None
        counted = self.source.counts_requests
        if not counted:
            metrics.SOURCE_REQUESTS.labels(self.dataset, self.kind, op).inc()
        t0 = time.perf_counter()
        call = calls.new_call(self.timeout)

        def run() -> T:
            with calls.within(call):
                return fn(*args)

        outcome = "cancelled"
        try:
            with trio.fail_after(self.timeout):
                result = await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self.limiter)
            outcome = "answered"
            return result
        except trio.TooSlowError:
            outcome = "timeout"
            raise SourceTimeoutError(f"no answer within {self.timeout:g}s (request timeout)", url) from None
        except SourceTimeoutError:
            outcome = "timeout"
            raise
        except SourceError:
            outcome = "answered"
            metrics.SOURCE_ERRORS.labels(self.dataset, self.kind, op).inc()
            raise
        finally:
            if outcome == "timeout":
                metrics.SOURCE_ERRORS.labels(self.dataset, self.kind, op).inc()
                metrics.SOURCE_TIMEOUTS.labels(self.dataset, self.kind, op).inc()
                if self.health.tripped_at is None:
                    log.warning(
                        "dataset %s: %s source %s did not answer within %gs; failing its requests fast for %gs",
                        self.dataset,
                        self.kind,
                        self.source.url(""),
                        self.timeout,
                        self.health.cooldown,
                    )
                self.health.timed_out()
            elif outcome == "answered":
                if self.health.tripped_at is not None:
                    log.info("dataset %s: %s source %s answers again", self.dataset, self.kind, self.source.url(""))
                self.health.answered()
            else:
                self.health.done(probe)
            if counted and call.requests:
                metrics.SOURCE_REQUESTS.labels(self.dataset, self.kind, op).inc(call.requests)
            if call.extra_bytes:
                self._bytes.inc(call.extra_bytes)
            metrics.SOURCE_LATENCY.labels(self.dataset, self.kind, op).observe(time.perf_counter() - t0)

    async def stat(self, path: str) -> Entry:
        return await self._call("stat", self.source.stat, path)

    async def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        data = await self._call("read", self.source.read, path, start, end, version)
        self._bytes.inc(len(data))
        return data

    async def check(self) -> None:
        await self._call("check", self.source.check)

    def pages(self, path: str) -> PageIterator:
        """Async iterator over the directory's listing pages (one source request per page)."""
        return PageIterator(self, path)

    def url(self, path: str) -> str:
        return self.source.url(path)


class PageIterator:
    """Pulls one page of a Source listing per ``__anext__``, each in a worker thread."""

    def __init__(self, owner: AsyncSource, path: str) -> None:
        self._owner = owner
        self._path = path
        self._it: Iterator[list[Entry]] | None = None

    def __aiter__(self) -> PageIterator:
        return self

    def _next(self, path: str) -> object:
        if self._it is None:
            self._it = iter(self._owner.source.list(path))
        return next(self._it, _END)

    async def __anext__(self) -> list[Entry]:
        page = await self._owner._call("list", self._next, self._path)
        if page is _END:
            raise StopAsyncIteration
        return page  # type: ignore[return-value]
