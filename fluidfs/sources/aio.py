"""AsyncSource: the trio-facing wrapper of a blocking Source.

Every call runs in a worker thread through one named ``trio.CapacityLimiter`` (so blocking
boto3/urllib3/pread calls never stall the FUSE loop) and is counted, timed and error-counted
in the ``fluidfs_source_*`` metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import trio

from fluidfs import metrics
from fluidfs.errors import SourceError
from fluidfs.sources.base import Entry, Source

T = TypeVar("T")

_END = object()


class AsyncSource:
    """Async access to one Source for one dataset."""

    def __init__(self, source: Source, dataset: str, limiter: trio.CapacityLimiter) -> None:
        self.source = source
        self.kind = source.kind
        self.dataset = dataset
        self.limiter = limiter
        self._bytes = metrics.SOURCE_BYTES.labels(dataset, self.kind)

    async def _call(self, op: str, fn: Callable[..., T], *args: object) -> T:
        metrics.SOURCE_REQUESTS.labels(self.dataset, self.kind, op).inc()
        t0 = time.perf_counter()
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except SourceError:
            metrics.SOURCE_ERRORS.labels(self.dataset, self.kind, op).inc()
            raise
        finally:
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

    def _next(self) -> object:
        if self._it is None:
            self._it = iter(self._owner.source.list(self._path))
        return next(self._it, _END)

    async def __anext__(self) -> list[Entry]:
        page = await self._owner._call("list", self._next)
        if page is _END:
            raise StopAsyncIteration
        return page  # type: ignore[return-value]
