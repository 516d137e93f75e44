"""``fluidfs load MOUNTPOINT``: warm a live mount's cache by reading files through the mountpoint.

The given PATHs (relative to the mount; default the whole tree; files or directories) are
walked, files whose ``user.fluidfs.cached`` xattr already says ``1.0000`` are skipped, and the
rest are read fully through the mount by ``--parallel`` worker threads (1 MiB ``pread``s; files
above 64 MiB are split into ranges read in parallel).  ``posix_fadvise(DONTNEED)`` before and
after each range keeps the kernel page cache from being flooded and makes sure the reads reach
fluidfs.  This fills the mount's MEM and SSD tiers.  Afterwards each file's xattr is read again,
so the final line reports what the mount really holds.  The pipeline, progress, interrupt
handling and exit codes are :mod:`fluidfs.warmup`'s.

Caveats: with ``eviction: lru`` (or a mount without an SSD tier) loading more than the cache
holds evicts what was loaded first; the final line then says so (exit 1).
"""
from __future__ import annotations

import argparse
import os
import threading
from typing import Any

import trio

from fluidfs.cli import status
from fluidfs.errors import ConfigError
from fluidfs.warmup.progress import Progress
from fluidfs.warmup.pipeline import _SOURCE_ONLY, LoadResult, _File, _Job, _Loader

READ_SIZE = 1 << 20  # pread size through a mount
MOUNT_CHUNK = 64 << 20  # files above this are read as parallel ranges through a mount


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

