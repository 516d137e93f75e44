"""``fluidfs load SOURCE|MOUNTPOINT [PATH ...]``: preload (warm up) a dataset's cache.

Two ways, chosen by the first argument:

* **A fluidfs mountpoint** (a live mount with a runtime record): the given PATHs (relative to
  the mount; default the whole tree; files or directories) are walked, files whose
  ``user.fluidfs.cached`` xattr already says ``1.0000`` are skipped, and the rest are read fully
  through the mount by ``--parallel`` worker threads (1 MiB ``pread``s; files above 64 MiB are
  split into ranges read in parallel).  ``posix_fadvise(DONTNEED)`` before and after each
  range keeps the kernel page cache from being flooded and makes sure the reads reach fluidfs.
  This fills the mount's MEM and SSD tiers.  Afterwards each file's xattr is read again, so the
  final line reports what the mount really holds.
* **A SOURCE** (URL, directory or Dataset file, as for ``fluidfs mount``): the SSD cache
  directory (``--cache-dir`` or the Dataset's ``spec.cache.directory``) is filled directly,
  without mounting: the sources are listed (streamed) and every block of every file is read
  from the source and put into an :class:`~fluidfs.cache.ssd.SSDTier`, keyed exactly like a
  mount keys it (object URL, version, block size, index), so a later ``fluidfs mount`` of the
  same Dataset with that cache directory and the same block size serves it from the SSD tier.
  Blocks already present are skipped.  If a running mount holds the directory's lock, the load
  refuses and names the mountpoint to load through instead.

Both show a live progress bar (files, bytes, MB/s, ETA) and end with
``cached 1234/1234 files, 5.6 GiB/5.6 GiB (100.0%) in 12.3s``.  Ctrl-C (SIGINT) or SIGTERM stop
cleanly: workers finish the block or 1 MiB read in hand, nothing half-written is left (SSD
blocks are written tmp → rename), a line says what is cached so far, and the exit code is 130;
a rerun skips what is cached.

Exit codes: 0 all requested data is cached; 1 some of it is not (read errors, cache full or
too small, mount problem); 2 usage or Dataset error; 3 a source cannot be opened; 130
interrupted.

Caveats: with ``eviction: lru`` (or a mount without an SSD tier) loading more than the cache
holds evicts what was loaded first; the final line then says so (exit 1).  Source mode uses the
Dataset's (or ``--block-size``) block size: a mount with another block size will not find the
blocks.  Listing is one directory at a time per PATH.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import posixpath
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import trio

from fluidfs import status
from fluidfs.cache.base import BlockKey
from fluidfs.errors import CacheError, ConfigError, FluidfsError, MountError, NotFoundError, SourceError
from fluidfs.progress import Progress, final_line
from fluidfs.sizes import format_size

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20  # pread size through a mount
MOUNT_CHUNK = 64 << 20  # files above this are read as parallel ranges through a mount
LIST_AHEAD = 10_000  # files the listing may run ahead of the loaders
EXIT_OK, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 130
_SOURCE_ONLY = ("cache_dir", "cache_size", "block_size", "eviction", "free_space_floor", "endpoint", "region")


@dataclass(eq=False)
class _File:
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
class _Job:
    file: _File
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
            not self.interrupted and self.listing_complete and not self.failed and not self.halted
            and self.files_cached == self.files_total and self.bytes_cached == self.bytes_total
        )


class _Loader:
    """The pipeline shared by both modes: lister → planner → ``parallel`` workers.

    Subclasses provide ``list_files`` (send _File objects, streamed), ``plan`` (which ranges
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
    async def list_files(self, send: trio.MemorySendChannel[_File]) -> None:
        raise NotImplementedError

    async def plan(self, f: _File) -> list[_Job]:
        raise NotImplementedError

    def run_job(self, job: _Job) -> bool:
        raise NotImplementedError

    async def finish(self, f: _File) -> None:
        """Called once per file when its last job is done (adjust ``f.cached``)."""

    # --- bookkeeping -------------------------------------------------------------------------
    def error(self, what: str, exc: BaseException) -> None:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        with self._lock:
            if len(self.res.errors) < 3:
                self.res.errors.append(f"{what}: {why}")
        log.debug("load: %s: %s", what, exc)

    def found(self, f: _File) -> None:
        self.res.files_total += 1
        self.res.bytes_total += f.size
        self.progress.add_total(1, f.size)

    def add_cached(self, f: _File, nbytes: int) -> None:
        f.cached += nbytes
        self.res.bytes_cached += nbytes

    async def _finish(self, f: _File) -> None:
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
        files_send, files_recv = trio.open_memory_channel[_File](LIST_AHEAD)
        jobs_send, jobs_recv = trio.open_memory_channel[_Job](self.parallel * 2)
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

    async def _lister(self, send: trio.MemorySendChannel[_File]) -> None:
        async with send:
            await self.list_files(send)
            self.res.listing_complete = True
            self.progress.totals_final()

    async def _planner(self, recv: trio.MemoryReceiveChannel[_File], send: trio.MemorySendChannel[_Job]) -> None:
        sem = trio.Semaphore(self.parallel)
        async with recv, send:
            async with trio.open_nursery() as nursery:
                async for f in recv:
                    await sem.acquire()
                    nursery.start_soon(self._plan_one, f, send, sem)

    async def _plan_one(self, f: _File, send: trio.MemorySendChannel[_Job], sem: trio.Semaphore) -> None:
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

    async def _worker(self, recv: trio.MemoryReceiveChannel[_Job]) -> None:
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


# ----------------------------------------------------------------------------- through a mount


class MountLoader(_Loader):
    """Reads files through a live mount so its tiers fill."""

    def __init__(self, root: str, rels: list[str], parallel: int, progress: Progress) -> None:
        super().__init__(parallel, progress)
        self.root = root
        self.rels = rels
        self.meta_limiter = trio.CapacityLimiter(parallel)  # "fluidfs-load-xattr" threads
        self.recheck: list[_File] = []

    async def list_files(self, send: trio.MemorySendChannel[_File]) -> None:
        it = status.iter_files(self.root, self.rels)
        while True:
            try:
                batch = await trio.to_thread.run_sync(next, it, None)
            except OSError as exc:
                self.error("listing", exc)
                self.res.failed += 1
                return
            if batch is None:
                return
            for rel, size in batch:
                f = _File(rel, size)
                self.found(f)
                await send.send(f)

    def _fraction(self, f: _File) -> float:
        return status.cached_fraction(os.path.join(self.root, f.path))

    async def plan(self, f: _File) -> list[_Job]:
        frac = await trio.to_thread.run_sync(self._fraction, f, limiter=self.meta_limiter)
        if frac >= 1.0:
            self.add_cached(f, f.size)
            f.skipped = True
            self.res.skipped_files += 1
            return []
        return [_Job(f, s, min(s + MOUNT_CHUNK, f.size)) for s in range(0, f.size, MOUNT_CHUNK)]

    def run_job(self, job: _Job) -> bool:
        whole = job.start == 0 and job.end == job.file.size
        length = 0 if whole else job.end - job.start
        fd = os.open(os.path.join(self.root, job.file.path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(fd, job.start, length, os.POSIX_FADV_DONTNEED)  # make reads reach fluidfs
            off = job.start
            while off < job.end:
                if self.stop.is_set():
                    return False
                chunk = os.pread(fd, min(READ_SIZE, job.end - off), off)
                if not chunk:
                    break  # the file shrank at the source
                off += len(chunk)
                self.progress.add_loaded(len(chunk))
            os.posix_fadvise(fd, job.start, length, os.POSIX_FADV_DONTNEED)
            return off >= job.end
        finally:
            os.close(fd)

    async def finish(self, f: _File) -> None:
        if f.failed or f.skipped or f.size == 0:
            return
        frac = await trio.to_thread.run_sync(self._fraction, f, limiter=self.meta_limiter)
        f.cached = f.size if frac >= 1.0 else int(frac * f.size)
        if frac < 1.0 and len(self.recheck) < 100_000:
            self.recheck.append(f)  # its last blocks may still be on their way to the SSD tier

    def settle(self) -> None:
        """Re-read the xattr of files that were not fully cached right after loading."""
        for attempt in range(3):
            left = []
            for f in self.recheck:
                try:
                    frac = self._fraction(f)
                except OSError:
                    continue
                now = f.size if frac >= 1.0 else int(frac * f.size)
                self.res.bytes_cached += now - f.cached
                f.cached = now
                if frac >= 1.0:
                    self.res.files_cached += 1
                else:
                    left.append(f)
            self.recheck = left
            if not left:
                return
            threading.Event().wait(0.5)


# ----------------------------------------------------------------------------- from a source


class SourceLoader(_Loader):
    """Fills an SSD cache directory straight from the sources, no mount."""

    def __init__(self, targets: list[tuple[Any, Any, str, Any]], tier: Any, block_size: int,
                 parallel: int, progress: Progress, *, lru: bool = False) -> None:
        super().__init__(parallel, progress)
        self.targets = targets  # (source, mount spec, rel, entry)
        self.tier = tier
        self.bs = block_size
        self.list_limiter = trio.CapacityLimiter(1)  # "fluidfs-load-list": one listing at a time
        self.lru = lru  # evictions may undo earlier loads: keep files for a recount
        self.done_files: list[_File] = []

    async def list_files(self, send: trio.MemorySendChannel[_File]) -> None:
        seen: set[tuple[int, str]] = set()
        for src, m, rel, entry in self.targets:
            base = f"{m.path.rstrip('/')}/"
            if not entry.is_dir:
                await self._emit(send, src, base, rel, entry)
                continue
            if (id(src), rel) in seen:
                continue
            seen.add((id(src), rel))
            stack = [rel]
            while stack:
                d = stack.pop()
                try:
                    subdirs = await self._list_dir(send, src, base, d)
                except SourceError as exc:
                    self.error(f"listing {posixpath.join(base, d)}", exc)
                    self.res.failed += 1
                    continue
                stack.extend(reversed(subdirs))

    async def _list_dir(self, send: trio.MemorySendChannel[_File], src: Any, base: str, d: str) -> list[str]:
        it = iter(src.list(d))
        names: set[str] = set()
        subdirs: list[str] = []
        while True:
            page = await trio.to_thread.run_sync(next, it, None, limiter=self.list_limiter)
            if page is None:
                return subdirs
            for e in page:  # the same filtering as the mount's namespace
                if not e.name or "/" in e.name or e.name in (".", "..") or e.name in names:
                    continue
                names.add(e.name)
                child = f"{d}/{e.name}" if d else e.name
                if e.is_dir:
                    subdirs.append(child)
                else:
                    await self._emit(send, src, base, child, e)

    async def _emit(self, send: trio.MemorySendChannel[_File], src: Any, base: str, rel: str, e: Any) -> None:
        f = _File(posixpath.join(base, rel) if rel else base.rstrip("/") or "/", e.size, src=src, rel=rel,
                  url=src.url(rel), version=e.version)
        self.found(f)
        await send.send(f)

    def key(self, f: _File, index: int) -> BlockKey:
        return BlockKey(f.url, f.version, self.bs, index)

    async def plan(self, f: _File) -> list[_Job]:
        jobs = []
        present = 0
        for i in range(math.ceil(f.size / self.bs)):
            start, end = i * self.bs, min((i + 1) * self.bs, f.size)
            if self.tier.contains(self.key(f, i)):
                present += end - start
            else:
                jobs.append(_Job(f, start, end, i))
        self.add_cached(f, present)
        if not jobs:
            self.res.skipped_files += 1
        return jobs

    def run_job(self, job: _Job) -> bool:
        if self.stop.is_set():
            return False
        f = job.file
        data = f.src.read(f.rel, job.start, job.end, f.version)
        if len(data) != job.end - job.start:
            raise SourceError(f"short read ({len(data)} of {job.end - job.start} bytes at {job.start})", f.url)
        self.progress.add_loaded(len(data))
        key = self.key(f, job.index)
        if self.tier.put(key, data) or self.tier.contains(key):
            return True
        why = "the SSD cache is degraded (write errors)" if self.tier.is_degraded else (
            f"the SSD cache is full ({format_size(self.tier.used_bytes())} of {format_size(self.tier.quota_bytes())} "
            "quota, or the free-space floor reached)")
        self.halted = self.halted or why
        return False

    async def finish(self, f: _File) -> None:
        if self.lru:
            self.done_files.append(f)

    def recount(self) -> None:
        """After LRU evictions, count what is really still in the tier."""
        files = bytes_ = 0
        for f in self.done_files:
            n = math.ceil(f.size / self.bs)
            held = sum(min(self.bs, f.size - i * self.bs) for i in range(n) if self.tier.contains(self.key(f, i)))
            bytes_ += held
            files += held == f.size and not f.failed
        self.res.files_cached, self.res.bytes_cached = files, bytes_


# ----------------------------------------------------------------------------- command line


def _mount_capacity(cfg: dict[str, Any]) -> int:
    """Bytes the mount can keep: its SSD quota, or its memory tier without one."""
    return int((cfg.get("cache_size") if cfg.get("cache_dir") else cfg.get("memory_size")) or 0)


def find_mount(path: str) -> tuple[str, str] | None:
    """(mountpoint, path relative to it) if ``path`` is in a live fluidfs mount, else None."""
    if "://" in path or not os.path.exists(path):
        return None
    full = os.path.abspath(path)
    probe = full
    while True:
        if status.mount_record(probe) is not None:
            return probe, os.path.relpath(full, probe) if probe != full else ""
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent


def load_mount(args: argparse.Namespace, rec: dict[str, Any], progress: Progress) -> LoadResult:
    given = [f"--{k.replace('_', '-')}" for k in _SOURCE_ONLY if getattr(args, k, None) is not None]
    if args.option:
        given.append("-o")
    if given:
        raise ConfigError(f"{', '.join(given)}: only for loading a SOURCE; {args.source} is a mount and uses its own configuration")
    root, sub = find_mount(args.source) or (os.path.abspath(args.source), "")
    # inside a mount: `load /mnt/data/train [PATH]` = `load /mnt/data train[/PATH]`
    rels = status.resolve_paths(root, [os.path.join(sub, p) for p in args.paths] or [sub])
    loader = MountLoader(root, rels, args.parallel, progress)
    res = loader.run()
    if not res.interrupted:
        loader.settle()
        if res.bytes_total > _mount_capacity(dict(rec.get("config") or {})):
            summary = status.cached_summary(root, rels)  # loading may have evicted earlier files
            res.files_cached, res.bytes_cached = summary.fully_cached_files, summary.cached_bytes
            if res.bytes_cached < res.bytes_total:
                res.halted = res.halted or "the data is larger than the mount's cache; not all of it stays cached"
    return res


def _dataset_targets(dataset: Any, sources: list[tuple[Any, Any]], paths: Sequence[str]) -> list[tuple[Any, Any, str, Any]]:
    """PATHs in the dataset tree → (source, mount spec, rel, entry) to load."""
    out: list[tuple[Any, Any, str, Any]] = []
    for p in paths or ["/"]:
        tp = posixpath.normpath("/" + p.strip("/"))
        if tp.startswith("/.."):
            raise ConfigError(f"{p}: not inside the dataset")
        matched = False
        for src, m in sources:
            mp = m.path
            if tp == mp or tp.startswith(mp.rstrip("/") + "/"):
                rel = tp[len(mp):].strip("/")
            elif mp.startswith(tp.rstrip("/") + "/"):
                rel = ""
            else:
                continue
            matched = True
            try:
                entry = src.stat(rel)
            except NotFoundError:
                raise ConfigError(f"{p}: no such file or directory in the dataset ({src.url(rel)})") from None
            covered = any(s is src and (r == "" or rel == r or rel.startswith(r + "/")) for s, _m, r, _e in out)
            if not covered:
                out.append((src, m, rel, entry))
        if not matched:
            where = ", ".join(m.path for _s, m in sources)
            raise ConfigError(f"{p}: not in the dataset (its mounts appear at {where})")
    return out


def _in_use(cache_dir: str, pid: int | None) -> MountError:
    from fluidfs.mountd import runtime_dir

    for path in glob.glob(os.path.join(runtime_dir(), "*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if pid is not None and rec.get("pid") == pid and rec.get("mountpoint"):
            mnt = rec["mountpoint"]
            return MountError(f"cache directory {cache_dir} is in use by the fluidfs mount at {mnt} (pid {pid}); "
                              f"load through the mountpoint instead: fluidfs load {mnt}")
    who = f"pid {pid}" if pid else "another process"
    return MountError(f"cache directory {cache_dir} is in use by a running fluidfs mount ({who}); "
                      "load through its mountpoint instead (fluidfs load MOUNTPOINT)")


def _as_mount_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` completed with the defaults of every ``fluidfs mount`` option, for cli.prepare()."""
    from fluidfs import cli

    mount_parser = argparse.ArgumentParser(add_help=False)
    cli._add_mount_options(mount_parser)
    merged = vars(mount_parser.parse_args([]))
    merged.update(vars(args))
    merged["metrics_addr"] = "none"  # no endpoint: nothing is served
    return argparse.Namespace(**merged)


def load_source(args: argparse.Namespace, progress: Progress) -> LoadResult:
    from fluidfs import cli, daemon
    from fluidfs.cache.dirlock import lock_holder
    from fluidfs.cache.ssd import SSDTier

    dataset, cfg = cli.prepare(_as_mount_args(args))
    for w in dataset.warnings:
        print(f"fluidfs: warning: {w}", file=sys.stderr)
    if not cfg.cache_dir:
        raise ConfigError("loading a SOURCE needs --cache-dir DIR (or spec.cache.directory in the Dataset), "
                          "or give the mountpoint of a running mount")
    if os.path.isdir(cfg.cache_dir):
        holder = lock_holder(cfg.cache_dir)
        if holder is not None:
            raise _in_use(cfg.cache_dir, holder)
    sources = daemon.open_sources(dataset)
    try:
        targets = _dataset_targets(dataset, sources, args.paths)
        try:
            tier = SSDTier(cfg.cache_dir, cfg.cache_size, eviction=cfg.eviction,
                           free_space_floor=cfg.free_space_floor)
        except CacheError as exc:
            if "in use" in str(exc):
                raise _in_use(cfg.cache_dir, lock_holder(cfg.cache_dir)) from None
            raise
        try:
            evictions = tier.stats()["evictions"]
            loader = SourceLoader(targets, tier, cfg.block_size, args.parallel, progress,
                                  lru=cfg.eviction == "lru")
            res = loader.run()
            if loader.lru and tier.stats()["evictions"] > evictions:
                loader.recount()
                res.halted = res.halted or "the data is larger than the SSD cache; what was loaded first was evicted (lru)"
        finally:
            tier.close()
    finally:
        for src, _m in sources:
            try:
                src.close()
            except Exception:  # closing must not hide the result
                log.debug("closing source failed", exc_info=True)
    return res


def report(res: LoadResult, progress: Progress, out: Callable[[str], None] | None = None) -> int:
    line = final_line(res.files_cached, res.files_total, res.bytes_cached, res.bytes_total, res.seconds)
    if res.interrupted:
        more = "" if res.listing_complete else " (listing incomplete)"
        progress.finish(f"interrupted: {line}{more} so far; run the same command again to continue", sys.stdout)
        return EXIT_INTERRUPTED
    progress.finish(line, sys.stdout)
    if not progress.quiet:
        print(f"fluidfs: {format_size(res.loaded_bytes)} loaded now; {res.skipped_files} files were already cached",
              file=sys.stderr)
    if res.failed:
        more = ", ..." if res.failed > len(res.errors) else ""
        print(f"fluidfs: {res.failed} files could not be loaded: {'; '.join(res.errors)}{more}", file=sys.stderr)
    if res.halted:
        print(f"fluidfs: stopped: {res.halted}", file=sys.stderr)
    return EXIT_OK if res.complete else EXIT_INCOMPLETE


def cmd_load(args: argparse.Namespace) -> int:
    if args.parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    progress = Progress(sys.stderr, quiet=args.quiet)
    found = find_mount(args.source)
    if found is not None:
        rec = status.require_mount(found[0])
        res = load_mount(args, rec, progress)
    else:
        res = load_source(args, progress)
    return report(res, progress)


class _Intermixed:
    """Parser mixin: PATHs may follow options (``load SOURCE --cache-dir D PATH``)."""

    _inside = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inside:  # parse_known_intermixed_args calls back into us
            return super().parse_known_args(args, namespace)  # type: ignore[misc]
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)  # type: ignore[attr-defined]
        finally:
            self._inside = False


def _intermixed(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.__class__ = type(f"Intermixed{type(p).__name__}", (_Intermixed, type(p)), {})
    return p


def add_parsers(sub: Any) -> None:
    p = _intermixed(sub.add_parser("load", help="preload a dataset into the cache (through a mount, or into a cache dir)"))
    p.add_argument("source", metavar="SOURCE|MOUNTPOINT",
                   help="a fluidfs mountpoint, or a URL / directory / Dataset file to load into --cache-dir")
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to load (default: everything)")
    p.add_argument("--parallel", "-p", type=int, default=16, help="parallel readers (default 16)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, only the final line")
    g = p.add_argument_group("loading a SOURCE (override the Dataset's spec.cache)")
    g.add_argument("--cache-dir", metavar="DIR", help="SSD cache directory to fill (default: spec.cache.directory)")
    g.add_argument("--cache-size", metavar="SIZE", help="SSD tier quota (default 10Gi)")
    g.add_argument("--block-size", metavar="SIZE", help="cache block size; must match the mount's (default 4Mi)")
    g.add_argument("--eviction", choices=("lru", "none"), help="SSD eviction policy (default none)")
    g.add_argument("--free-space-floor", metavar="SIZE", help="never fill the cache disk below this (default 1Gi)")
    g.add_argument("--endpoint", metavar="URL", help="S3 endpoint for s3:// mounts without one")
    g.add_argument("--region", help="S3 region for s3:// mounts without one")
    g.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="source option (repeatable)")
    p.set_defaults(handler=cmd_load, log_level="warning")
    status.add_parser(sub)
