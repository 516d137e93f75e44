"""The loader pipeline shared by the two ways ``fluidfs load`` warms a cache.

``fluidfs load SOURCE|MOUNTPOINT [PATH ...]`` (command line: :mod:`fluidfs.cli.load`) preloads
(warms up) a dataset's cache, one of two ways, chosen by the first argument:

* **A fluidfs mountpoint** (a live mount with a runtime record): the files are read fully
  through the mount, which fills its MEM and SSD tiers — :mod:`fluidfs.warmup.mount`.
* **A SOURCE** (URL, directory or Dataset file, as for ``fluidfs mount``): the SSD cache
  directory (``--cache-dir`` or the Dataset's ``spec.cache.directory``) is filled directly from
  the source, without mounting — :mod:`fluidfs.warmup.source`.

This module holds what both share: the pipeline (:class:`Loader`: lister → planner →
``parallel`` worker threads, progress ticks, signal handling) and its result
(:class:`LoadResult`).  Ctrl-C (SIGINT) or SIGTERM stop cleanly: workers finish the block or
1 MiB read in hand, nothing half-written is left (SSD blocks are written tmp → rename), and the
result says ``interrupted``; a rerun skips what is cached.

Caveats: loading more than the cache holds evicts what was loaded first (details in the two
mode modules).  Listing is one directory at a time per PATH.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import trio

from fluidfs.errors import FluidfsError
from fluidfs.warmup.progress import Progress

log = logging.getLogger(__name__)

LIST_AHEAD = 10_000  # files the listing may run ahead of the loaders


@dataclass(eq=False)
class File:
    path: str  # relative to the mount (mount mode) / path in the dataset tree (source mode)
    size: int
    pending: int = 0  # jobs not finished yet
    cached: int = 0  # bytes known to be cached
    failed: bool = False
    skipped: bool = False  # found fully cached before loading
    src: Any = None  # source mode: the Source, the object's rel path, URL and version
    rel: str = ""
    url: str = ""
    version: str = ""


@dataclass(eq=False)
class Job:
    file: File
    start: int
    end: int
    index: int = 0


@dataclass
class LoadResult:
    files_total: int = 0
    bytes_total: int = 0
    files_cached: int = 0
    bytes_cached: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    listing_complete: bool = False
    interrupted: bool = False
    halted: str = ""  # why loading stopped early (cache full...)
    seconds: float = 0.0
    loaded_bytes: int = 0
    skipped_files: int = 0

    @property
    def complete(self) -> bool:
        return (
            not self.interrupted
            and self.listing_complete
            and not self.failed
            and not self.halted
            and self.files_cached == self.files_total
            and self.bytes_cached == self.bytes_total
        )


class Loader:
    """The pipeline shared by both modes: lister → planner → ``parallel`` workers.

    Subclasses provide ``list_files`` (send File objects, streamed), ``plan`` (which ranges
    still need loading), ``run_job`` (blocking, in a worker thread) and ``finish``.
    """

    def __init__(self, parallel: int, progress: Progress) -> None:
        self.parallel = parallel
        self.progress = progress
        self.stop = threading.Event()  # set on interrupt: threads stop at the next read
        self.halted = ""
        self.limiter = trio.CapacityLimiter(parallel)  # "fluidfs-load" worker threads
        self.res = LoadResult()
        self._lock = threading.Lock()

    # --- hooks ------------------------------------------------------------------------------
    async def list_files(self, send: trio.MemorySendChannel[File]) -> None:
        raise NotImplementedError

    async def plan(self, f: File) -> list[Job]:
        raise NotImplementedError

    def run_job(self, job: Job) -> bool:
        raise NotImplementedError

    async def finish(self, f: File) -> None:
        """Called once per file when its last job is done (adjust ``f.cached``)."""

    # --- bookkeeping -------------------------------------------------------------------------
    def error(self, what: str, exc: BaseException) -> None:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        with self._lock:
            if len(self.res.errors) < 3:
                self.res.errors.append(f"{what}: {why}")
        log.debug("load: %s: %s", what, exc)

    def found(self, f: File) -> None:
        self.res.files_total += 1
        self.res.bytes_total += f.size
        self.progress.add_total(1, f.size)

    def add_cached(self, f: File, nbytes: int) -> None:
        f.cached += nbytes
        self.res.bytes_cached += nbytes

    async def _finish(self, f: File) -> None:
        before = f.cached
        try:
            await self.finish(f)
        except (OSError, FluidfsError) as exc:
            self.error(f.path, exc)
        self.res.bytes_cached += f.cached - before
        if f.failed:
            self.res.failed += 1
        elif f.cached >= f.size:
            self.res.files_cached += 1
        self.progress.advance(files=1, failed=int(f.failed))

    # --- the pipeline ------------------------------------------------------------------------
    def run(self) -> LoadResult:
        trio.run(self._main)
        self.res.seconds = self.progress.elapsed()
        self.res.loaded_bytes = self.progress.bytes_loaded
        self.res.halted = self.halted
        return self.res

    async def _main(self) -> None:
        files_send, files_recv = trio.open_memory_channel[File](LIST_AHEAD)
        jobs_send, jobs_recv = trio.open_memory_channel[Job](self.parallel * 2)
        async with trio.open_nursery() as outer:
            outer.start_soon(self._signals, outer.cancel_scope)
            outer.start_soon(self._ticker)
            async with trio.open_nursery() as inner:
                inner.start_soon(self._lister, files_send)
                inner.start_soon(self._planner, files_recv, jobs_send)
                async with jobs_recv:
                    for _ in range(self.parallel):
                        inner.start_soon(self._worker, jobs_recv.clone())
            outer.cancel_scope.cancel()

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for _sig in sigs:
                self.res.interrupted = True
                self.stop.set()
                scope.cancel()
                return

    async def _ticker(self) -> None:
        while True:
            self.progress.tick()
            await trio.sleep(0.1)

    async def _lister(self, send: trio.MemorySendChannel[File]) -> None:
        async with send:
            await self.list_files(send)
            self.res.listing_complete = True
            self.progress.totals_final()

    async def _planner(self, recv: trio.MemoryReceiveChannel[File], send: trio.MemorySendChannel[Job]) -> None:
        sem = trio.Semaphore(self.parallel)
        async with recv, send:
            async with trio.open_nursery() as nursery:
                async for f in recv:
                    await sem.acquire()
                    nursery.start_soon(self._plan_one, f, send, sem)

    async def _plan_one(self, f: File, send: trio.MemorySendChannel[Job], sem: trio.Semaphore) -> None:
        try:
            try:
                jobs = [] if self.halted else await self.plan(f)
            except (OSError, FluidfsError) as exc:
                self.error(f.path, exc)
                f.failed = True
                jobs = []
            f.pending = len(jobs)
            self.progress.advance(nbytes=f.cached)  # found already cached
            if not jobs:
                self.progress.advance(nbytes=f.size - f.cached)
                await self._finish(f)
                return
            for job in jobs:
                await send.send(job)
        finally:
            sem.release()

    async def _worker(self, recv: trio.MemoryReceiveChannel[Job]) -> None:
        async with recv:
            async for job in recv:
                f = job.file
                ok = False
                if not (f.failed or self.halted or self.stop.is_set()):
                    try:
                        ok = await trio.to_thread.run_sync(self.run_job, job, limiter=self.limiter)
                    except (OSError, FluidfsError) as exc:
                        if not f.failed:
                            self.error(f.path, exc)
                        f.failed = True
                if ok:
                    self.add_cached(f, job.end - job.start)
                self.progress.advance(nbytes=job.end - job.start)
                f.pending -= 1
                if f.pending == 0:
                    await self._finish(f)
