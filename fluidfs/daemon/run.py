"""The mount daemon: open and check the sources, build cache → namespace → VFS, mount with
pyfuse3 and serve until unmounted or signalled (SIGTERM/SIGINT/SIGHUP unmount cleanly).

:func:`run_foreground` is the daemon's entry point (``fluidfs mount --foreground``, also the
detached child that :mod:`fluidfs.daemon.spawn` starts).  Readiness: once the kernel answers
``stat(mountpoint)`` through our own loop, ``READY`` is written to the readiness pipe (the
parent waits for it, so ``fluidfs mount`` exits 0 only when the mount answers), or ``ERR <exit
code> <message>`` when mounting fails.  The runtime record (:mod:`fluidfs.daemon.record`) is
written once the mount answers and removed on exit.

Caveats: one mount per process.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import signal
import sys
from collections.abc import Callable

import pyfuse3
import trio

from fluidfs import metrics
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.config import MountConfig
from fluidfs.daemon.record import remove_record, write_record
from fluidfs.daemon.spawn import check_mountpoint
from fluidfs.errors import FluidfsError, MountError, exit_code
from fluidfs.fs.fuse_ops import FluidOperations
from fluidfs.fs.namespace import MountRef, Namespace
from fluidfs.fs.vfs import Vfs
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Source
from fluidfs.sources.registry import open_sources
from fluidfs.spec.model import Dataset, MountSpec
from fluidfs.util.redact import redact_url

log = logging.getLogger(__name__)


def build_cache(dataset: Dataset, cfg: MountConfig) -> TieredCache:
    ssd = None
    if cfg.cache_dir:
        try:
            ssd = SSDTier(
                cfg.cache_dir,
                cfg.cache_size,
                eviction="lru" if cfg.eviction == "lru" else "none",
                free_space_floor=cfg.free_space_floor,
            )
        except OSError as exc:
            raise MountError(f"cache directory {cfg.cache_dir}: {exc.strerror or exc}") from None
    mem_policy = "lru" if ssd is not None else cfg.eviction
    return TieredCache(MemoryTier(cfg.memory_size, mem_policy), ssd, dataset=dataset.name, fetch_slots=cfg.fetch_slots)


def tune_malloc() -> None:
    """Keep the daemon's RSS close to what it really holds (glibc only; no-op elsewhere).

    Cache blocks are multi-MiB buffers freed from many worker threads; glibc's default dynamic
    mmap threshold moves such buffers into per-thread arenas that it rarely returns to the OS.
    A fixed 1 MiB threshold keeps them mmap-backed (freed at once) and two arenas bound the rest.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold, m_arena_max = -3, -8
        libc.mallopt(m_mmap_threshold, 1 << 20)
        libc.mallopt(m_arena_max, 2)
    except (OSError, AttributeError):
        pass


def set_kernel_readahead(mountpoint: str, kib: int) -> None:
    """Raise the mount's kernel readahead so buffered reads arrive as large requests."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(kib))
        log.info("kernel readahead for %s set to %d KiB", mountpoint, kib)
    except OSError as exc:
        log.info("could not set kernel readahead for %s: %s", mountpoint, exc)
        return
    set_max_background(dev, MAX_BACKGROUND)


#: requests the kernel keeps in flight to the daemon for readahead and async I/O (kernel default
#: 12): readers of a source that does not answer would otherwise fill the queue and stall the
#: readahead of every other source of the dataset
MAX_BACKGROUND = 256


def set_max_background(dev: int, n: int) -> None:
    """Raise the FUSE connection's background queue through the FUSE control filesystem
    (``/sys/fs/fuse/connections``, mounted by systemd on most hosts); log when it is absent."""
    conn = f"/sys/fs/fuse/connections/{os.minor(dev)}"
    try:
        with open(f"{conn}/max_background", "w") as f:
            f.write(str(n))
        with open(f"{conn}/congestion_threshold", "w") as f:
            f.write(str(n * 3 // 4))
        log.info("FUSE background queue set to %d requests", n)
    except OSError as exc:
        log.info(
            "could not raise the FUSE background queue (%s); mount the control filesystem "
            "(mount -t fusectl none /sys/fs/fuse/connections) so one slow source cannot stall the others' readahead",
            exc.strerror or exc,
        )


class MountDaemon:
    """One running mount."""

    def __init__(
        self,
        dataset: Dataset,
        cfg: MountConfig,
        mountpoint: str,
        sources: list[tuple[Source, MountSpec]],
    ) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.mountpoint = os.path.abspath(mountpoint)
        self._sources = sources
        self.metrics_addr: tuple[str, int] | None = None
        self.cache: TieredCache | None = None
        self.vfs: Vfs | None = None

    def _build(self) -> FluidOperations:
        # one limiter per source: a source that stops answering holds only its own threads
        mounts = [
            MountRef(
                spec,
                AsyncSource(
                    src, self.dataset.name, trio.CapacityLimiter(self.cfg.source_threads), self.cfg.request_timeout
                ),
            )
            for src, spec in self._sources
        ]
        ns = Namespace(mounts, self.dataset.name, self.cfg.metadata_ttl, self.cfg.negative_ttl)
        self.cache = build_cache(self.dataset, self.cfg)
        self.vfs = Vfs(ns, self.cache, self.cfg, self.dataset.name)
        return FluidOperations(self.vfs)

    def _options(self) -> set[str]:
        opts = set(pyfuse3.default_options)
        opts |= {f"fsname=fluidfs:{self.dataset.name}", "subtype=fluidfs", "ro", "noatime"}
        if self.cfg.allow_other:
            opts.add("allow_other")
        return opts

    def run(self, ready: Callable[[], None]) -> None:
        """Mount, serve until unmounted/signalled, then unmount.  Blocks."""
        check_mountpoint(self.mountpoint)
        tune_malloc()
        ops = self._build()
        if self.cfg.metrics_addr:
            try:
                self.metrics_addr = metrics.serve(self.cfg.metrics_addr)
            except OSError as exc:
                raise MountError(f"metrics address {self.cfg.metrics_addr}: {exc.strerror or exc}") from None
        try:
            pyfuse3.init(ops, self.mountpoint, self._options())
        except RuntimeError as exc:
            raise MountError(f"cannot mount {self.mountpoint}: {exc}") from None
        try:
            trio.run(self._main, ready)
        finally:
            remove_record(self.mountpoint, os.getpid())
            pyfuse3.close(unmount=True)
            if self.cache is not None and isinstance(self.cache.ssd, SSDTier):
                self.cache.ssd.close()

    async def _main(self, ready: Callable[[], None]) -> None:
        assert self.cache is not None and self.vfs is not None
        async with trio.open_nursery() as nursery:
            self.cache.start(nursery)
            self.vfs.prefetcher.start(nursery)
            self.vfs.ns.start(nursery)
            nursery.start_soon(self._signals, nursery)
            nursery.start_soon(self._announce, ready)
            await pyfuse3.main(min_tasks=8, max_tasks=128)
            nursery.cancel_scope.cancel()

    async def _signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1) as sigs:
            async for sig in sigs:
                if sig == signal.SIGUSR1:
                    await self.refresh()
                    continue
                log.info("dataset %s: signal %d, unmounting %s", self.dataset.name, sig, self.mountpoint)
                pyfuse3.terminate()
                return

    async def refresh(self) -> None:
        """Forget all cached metadata, ours and the kernel's (``fluidfs refresh``)."""
        assert self.vfs is not None
        ns = self.vfs.ns
        ns.invalidate_all()
        nodes = [(n.inode, n.parent, n.path.rsplit("/", 1)[1]) for n in ns.all_nodes() if n.path != "/"]

        def invalidate() -> None:
            for inode, parent, name in nodes:
                # OSError: the kernel does not know this inode/entry, nothing to forget
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_inode(inode, attr_only=True)
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_entry(parent, name.encode("utf-8", "surrogateescape"))

        await trio.to_thread.run_sync(invalidate)
        log.info("dataset %s: metadata refreshed (%d entries invalidated)", self.dataset.name, len(nodes))

    async def _announce(self, ready: Callable[[], None]) -> None:
        await trio.to_thread.run_sync(os.stat, self.mountpoint)
        set_kernel_readahead(self.mountpoint, 1024)
        self._write_record()
        log.info("dataset %s mounted at %s", self.dataset.name, self.mountpoint)
        ready()

    def _write_record(self) -> None:
        cfg = dataclasses.asdict(self.cfg)
        for k, v in cfg.items():
            if isinstance(v, float) and math.isinf(v):
                cfg[k] = "indefinite"
        rec = {
            "pid": os.getpid(),
            "mountpoint": self.mountpoint,
            "dataset": self.dataset.name,
            "sources": [redact_url(m.url) for m in self.dataset.mounts],
            "metrics": f"http://{self.metrics_addr[0]}:{self.metrics_addr[1]}/metrics" if self.metrics_addr else None,
            "config": cfg,
        }
        write_record(self.mountpoint, rec)


def _report(fd: int | None, text: str) -> None:
    """One line to the parent's readiness pipe (``READY`` or ``ERR <code> <message>``), then close it."""
    if fd is None:
        return
    try:
        os.write(fd, (text + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def run_foreground(
    dataset: Dataset, cfg: MountConfig, mountpoint: str, ready_fd: int | None, pid_file: str | None
) -> int:
    """Open sources, mount and serve until unmounted.  Returns the exit code."""
    try:
        check_mountpoint(mountpoint)
        sources = open_sources(dataset, cfg.request_timeout)
        if pid_file:
            with open(pid_file, "w", encoding="ascii") as f:
                f.write(f"{os.getpid()}\n")
        daemon = MountDaemon(dataset, cfg, mountpoint, sources)
        daemon.run(lambda: _report(ready_fd, "READY"))
        return 0
    except FluidfsError as exc:
        code = exit_code(exc)
        print(f"fluidfs: error: {exc}", file=sys.stderr)
        _report(ready_fd, f"ERR {code} {exc}")
        return code
    except Exception as exc:  # last line of defence: one line for the parent, traceback in the log
        log.exception("mount failed")
        _report(ready_fd, f"ERR 1 unexpected error: {exc}")
        return 1
    finally:
        if pid_file:
            try:
                os.unlink(pid_file)
            except OSError:
                pass
