"""``fluidfs load MOUNTPOINT``: warm a live mount's cache by reading files through the mountpoint.

The given PATHs (relative to the mount; default the whole tree; files or directories) are
walked, files whose ``user.fluidfs.cached`` xattr already says ``1.0000`` are skipped, and the
rest are read fully through the mount by ``--parallel`` worker threads (1 MiB ``pread``s; files
above 64 MiB are split into ranges read in parallel).  ``posix_fadvise(DONTNEED)`` before and
after each range keeps the kernel page cache from being flooded and makes sure the reads reach
fluidfs.  This fills the mount's MEM and SSD tiers.  Afterwards each file's xattr is read again,
so the final line reports what the mount really holds.  The pipeline, progress, interrupt
handling and result are :mod:`fluidfs.warmup.pipeline`'s.

Caveats: with ``eviction: lru`` (or a mount without an SSD tier) loading more than the cache
holds evicts what was loaded first; the final line then says so (exit 1).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import trio

from fluidfs.warmup.mounted import cached_fraction, cached_summary, iter_files
from fluidfs.warmup.pipeline import File, Job, Loader, LoadResult
from fluidfs.warmup.progress import Progress

READ_SIZE = 1 << 20  # pread size through a mount
MOUNT_CHUNK = 64 << 20  # files above this are read as parallel ranges through a mount


class MountLoader(Loader):
    """Reads files through a live mount so its tiers fill."""

    def __init__(self, root: str, rels: list[str], parallel: int, progress: Progress) -> None:
        super().__init__(parallel, progress)
        self.root = root
        self.rels = rels
        self.meta_limiter = trio.CapacityLimiter(parallel)  # "fluidfs-load-xattr" threads
        self.recheck: list[File] = []

    async def list_files(self, send: trio.MemorySendChannel[File]) -> None:
        it = iter_files(self.root, self.rels)
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
                f = File(rel, size)
                self.found(f)
                await send.send(f)

    def _fraction(self, f: File) -> float:
        return cached_fraction(os.path.join(self.root, f.path))

    async def plan(self, f: File) -> list[Job]:
        frac = await trio.to_thread.run_sync(self._fraction, f, limiter=self.meta_limiter)
        if frac >= 1.0:
            self.add_cached(f, f.size)
            f.skipped = True
            self.res.skipped_files += 1
            return []
        return [Job(f, s, min(s + MOUNT_CHUNK, f.size)) for s in range(0, f.size, MOUNT_CHUNK)]

    def run_job(self, job: Job) -> bool:
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

    async def finish(self, f: File) -> None:
        if f.failed or f.skipped or f.size == 0:
            return
        frac = await trio.to_thread.run_sync(self._fraction, f, limiter=self.meta_limiter)
        f.cached = f.size if frac >= 1.0 else int(frac * f.size)
        if frac < 1.0 and len(self.recheck) < 100_000:
            self.recheck.append(f)  # its last blocks may still be on their way to the SSD tier

    def settle(self) -> None:
        """Re-read the xattr of files that were not fully cached right after loading."""
        for _attempt in range(3):
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


def _mount_capacity(cfg: Mapping[str, Any]) -> int:
    """Bytes the mount can keep: its SSD quota, or its memory tier without one."""
    return int((cfg.get("cache_size") if cfg.get("cache_dir") else cfg.get("memory_size")) or 0)


def load_mount(root: str, rels: list[str], config: Mapping[str, Any], parallel: int, progress: Progress) -> LoadResult:
    """Read the files under ``rels`` (relative to the mount ``root``) through the mount.

    ``config`` is the mount's configuration from its runtime record (for its cache capacity).
    """
    loader = MountLoader(root, rels, parallel, progress)
    res = loader.run()
    if not res.interrupted:
        loader.settle()
        if res.bytes_total > _mount_capacity(config):
            summary = cached_summary(root, rels)  # loading may have evicted earlier files
            res.files_cached, res.bytes_cached = summary.fully_cached_files, summary.cached_bytes
            if res.bytes_cached < res.bytes_total:
                res.halted = res.halted or "the data is larger than the mount's cache; not all of it stays cached"
    return res
