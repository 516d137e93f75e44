"""``fluidfs load SOURCE``: fill an SSD cache directory straight from a dataset's sources, no mount.

The SSD cache directory (``--cache-dir`` or the Dataset's ``spec.cache.directory``) is filled
directly: the sources are listed (streamed) and every block of every file is read from the
source and put into an :class:`~fluidfs.cache.ssd.SSDTier`, keyed exactly like a mount keys it
(object URL, version, block size, index), so a later ``fluidfs mount`` of the same Dataset with
that cache directory and the same block size serves it from the SSD tier.  Blocks already
present are skipped.  The pipeline, progress, interrupt handling and result are
:mod:`fluidfs.warmup.pipeline`'s; the command line (which refuses a directory held by a running
mount) is :mod:`fluidfs.cli.load`.

Caveats: with ``eviction: lru`` loading more than the cache holds evicts what was loaded first;
the final line then says so (exit 1).  Source mode uses the Dataset's (or ``--block-size``)
block size: a mount with another block size will not find the blocks.
"""

from __future__ import annotations

import logging
import math
import posixpath
from collections.abc import Sequence

import trio

from fluidfs.cache.base import BlockKey
from fluidfs.cache.ssd import SSDTier
from fluidfs.config import MountConfig
from fluidfs.errors import ConfigError, NotFoundError, SourceError
from fluidfs.sources.base import Entry, Source
from fluidfs.sources.registry import open_sources
from fluidfs.spec.model import Dataset, MountSpec
from fluidfs.util.sizes import format_size
from fluidfs.warmup.pipeline import File, Job, Loader, LoadResult
from fluidfs.warmup.progress import Progress

log = logging.getLogger(__name__)

#: what to load: (source, its mount spec, path relative to the source, its entry)
Target = tuple[Source, MountSpec, str, Entry]


class SourceLoader(Loader):
    """Fills an SSD cache directory straight from the sources, no mount."""

    def __init__(
        self,
        targets: list[Target],
        tier: SSDTier,
        block_size: int,
        parallel: int,
        progress: Progress,
        *,
        lru: bool = False,
    ) -> None:
        super().__init__(parallel, progress)
        self.targets = targets  # (source, mount spec, rel, entry)
        self.tier = tier
        self.bs = block_size
        self.list_limiter = trio.CapacityLimiter(1)  # "fluidfs-load-list": one listing at a time
        self.lru = lru  # evictions may undo earlier loads: keep files for a recount
        self.done_files: list[File] = []

    async def list_files(self, send: trio.MemorySendChannel[File]) -> None:
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

    async def _list_dir(self, send: trio.MemorySendChannel[File], src: Source, base: str, d: str) -> list[str]:
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

    async def _emit(self, send: trio.MemorySendChannel[File], src: Source, base: str, rel: str, e: Entry) -> None:
        f = File(
            posixpath.join(base, rel) if rel else base.rstrip("/") or "/",
            e.size,
            src=src,
            rel=rel,
            url=src.url(rel),
            version=e.version,
        )
        self.found(f)
        await send.send(f)

    def key(self, f: File, index: int) -> BlockKey:
        return BlockKey(f.url, f.version, self.bs, index)

    async def plan(self, f: File) -> list[Job]:
        jobs = []
        present = 0
        for i in range(math.ceil(f.size / self.bs)):
            start, end = i * self.bs, min((i + 1) * self.bs, f.size)
            if self.tier.contains(self.key(f, i)):
                present += end - start
            else:
                jobs.append(Job(f, start, end, i))
        self.add_cached(f, present)
        if not jobs:
            self.res.skipped_files += 1
        return jobs

    def run_job(self, job: Job) -> bool:
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
        why = (
            "the SSD cache is degraded (write errors)"
            if self.tier.is_degraded
            else (
                f"the SSD cache is full ({format_size(self.tier.used_bytes())} of "
                f"{format_size(self.tier.quota_bytes())} quota, or the free-space floor reached)"
            )
        )
        self.halted = self.halted or why
        return False

    async def finish(self, f: File) -> None:
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


def dataset_targets(sources: list[tuple[Source, MountSpec]], paths: Sequence[str]) -> list[Target]:
    """PATHs in the dataset tree → (source, mount spec, rel, entry) to load."""
    out: list[Target] = []
    for p in paths or ["/"]:
        tp = posixpath.normpath("/" + p.strip("/"))
        if tp.startswith("/.."):
            raise ConfigError(f"{p}: not inside the dataset")
        matched = False
        for src, m in sources:
            mp = m.path
            if tp == mp or tp.startswith(mp.rstrip("/") + "/"):
                rel = tp[len(mp) :].strip("/")
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


def load_source(
    dataset: Dataset, cfg: MountConfig, paths: Sequence[str], parallel: int, progress: Progress
) -> LoadResult:
    """Fill ``cfg.cache_dir`` with the blocks of the files under ``paths`` (in the dataset tree).

    Raises CacheError when the directory cannot be opened (e.g. a running mount holds it).
    """
    if not cfg.cache_dir:
        raise ConfigError(
            "loading a SOURCE needs --cache-dir DIR (or spec.cache.directory in the Dataset), "
            "or give the mountpoint of a running mount"
        )
    sources = open_sources(dataset)
    try:
        targets = dataset_targets(sources, paths)
        tier = SSDTier(
            cfg.cache_dir,
            cfg.cache_size,
            eviction="lru" if cfg.eviction == "lru" else "none",
            free_space_floor=cfg.free_space_floor,
        )
        try:
            evictions = tier.stats()["evictions"]
            loader = SourceLoader(targets, tier, cfg.block_size, parallel, progress, lru=cfg.eviction == "lru")
            res = loader.run()
            if loader.lru and tier.stats()["evictions"] > evictions:
                loader.recount()
                res.halted = (
                    res.halted or "the data is larger than the SSD cache; what was loaded first was evicted (lru)"
                )
        finally:
            tier.close()
    finally:
        for src, _m in sources:
            try:
                src.close()
            except Exception:  # closing must not hide the result
                log.debug("closing source failed", exc_info=True)
    return res
