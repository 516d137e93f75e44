"""The mount daemon: open and check the sources, build cache → namespace → VFS, mount with
pyfuse3 and serve until unmounted or signalled (SIGTERM/SIGINT/SIGHUP unmount cleanly).

Readiness: once the kernel answers ``stat(mountpoint)`` through our own loop, ``ready()`` is
called (the CLI's daemon parent waits for it, so ``fluidfs mount`` exits 0 only when the mount
answers).  A small JSON runtime record (pid, mountpoint, dataset, metrics address, config) is
written for ``fluidfs status`` / ``fluidfs umount`` and removed on exit.

Caveats: one mount per process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import signal
import stat
from typing import Callable

import pyfuse3
import trio

from fluidfs import metrics
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.config import MountConfig
from fluidfs.errors import CacheError, MountError
from fluidfs.fs.fuse_ops import FluidOperations
from fluidfs.fs.namespace import MountRef, Namespace
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Source
from fluidfs.spec.model import Dataset
from fluidfs.fs.vfs import Vfs

log = logging.getLogger(__name__)


def runtime_dir() -> str:
    """Where runtime records live: /run/fluidfs for root, else $XDG_RUNTIME_DIR or /tmp."""
    if os.geteuid() == 0:
        return "/run/fluidfs"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/fluidfs-{os.geteuid()}"
    return os.path.join(base, "fluidfs")


def record_path(mountpoint: str) -> str:
    h = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"{h}.json")


def read_record(mountpoint: str) -> dict[str, object] | None:
    try:
        with open(record_path(mountpoint), encoding="utf-8") as f:
            data: dict[str, object] = json.load(f)
            return data
    except (OSError, ValueError):
        return None


def is_mounted(path: str) -> bool:
    """Whether something is mounted at ``path`` — from /proc/self/mounts, so a mount whose
    FUSE daemon died ("Transport endpoint is not connected") counts too."""
    target = os.path.abspath(path)
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 1 and _unescape(fields[1]) == target:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def _unescape(field: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) of /proc/mounts fields."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def check_mountpoint(mountpoint: str) -> None:
    if is_mounted(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is busy (something is already mounted there)")
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mountpoint {mountpoint} does not exist") from None
    except OSError as exc:
        raise MountError(f"mountpoint {mountpoint} is not usable: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {mountpoint} is not a directory")


def build_cache(dataset: Dataset, cfg: MountConfig) -> TieredCache:
    ssd = None
    if cfg.cache_dir:
        try:
            from fluidfs.cache.ssd import SSDTier

            ssd = SSDTier(
                os.path.join(cfg.cache_dir),
                cfg.cache_size,
                eviction="lru" if cfg.eviction == "lru" else "none",
                free_space_floor=cfg.free_space_floor,
            )
        except CacheError:
            raise
        except OSError as exc:
            raise MountError(f"cache directory {cfg.cache_dir}: {exc.strerror or exc}") from None
    mem_policy = "lru" if ssd is not None else cfg.eviction
    return TieredCache(MemoryTier(cfg.memory_size, mem_policy), ssd, dataset=dataset.name)


def tune_malloc() -> None:
    """Keep the daemon's RSS close to what it really holds (glibc only; no-op elsewhere).

    Cache blocks are multi-MiB buffers freed from many worker threads; glibc's default dynamic
    mmap threshold moves such buffers into per-thread arenas that it rarely returns to the OS.
    A fixed 1 MiB threshold keeps them mmap-backed (freed at once) and two arenas bound the rest.
    """
    try:
        import ctypes

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


class MountDaemon:
    """One running mount."""

    def __init__(
        self,
        dataset: Dataset,
        cfg: MountConfig,
        mountpoint: str,
        sources: list[tuple[Source, "object"]],
    ) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.mountpoint = os.path.abspath(mountpoint)
        self.limiter = trio.CapacityLimiter(cfg.source_threads)
        self._sources = sources
        self.metrics_addr: tuple[str, int] | None = None
        self.cache: TieredCache | None = None
        self.vfs: Vfs | None = None

    def _build(self) -> FluidOperations:
        mounts = [
            MountRef(spec, AsyncSource(src, self.dataset.name, self.limiter))  # type: ignore[arg-type]
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
        mounted = True
        try:
            trio.run(self._main, ready)
        finally:
            self._remove_record()
            if mounted:
                pyfuse3.close(unmount=True)
            if self.cache is not None and self.cache.ssd is not None:
                close = getattr(self.cache.ssd, "close", None)
                if close:
                    close()

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
                for call in (
                    lambda: pyfuse3.invalidate_inode(inode, attr_only=True),
                    lambda: pyfuse3.invalidate_entry(parent, name.encode("utf-8", "surrogateescape")),
                ):
                    try:
                        call()
                    except OSError:
                        pass  # the kernel does not know this inode/entry: nothing to forget

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
            "sources": [m.url for m in self.dataset.mounts],
            "metrics": f"http://{self.metrics_addr[0]}:{self.metrics_addr[1]}/metrics" if self.metrics_addr else None,
            "config": cfg,
        }
        path = record_path(self.mountpoint)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(rec, f, indent=1)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not write runtime record %s: %s", path, exc)

    def _remove_record(self) -> None:
        rec = read_record(self.mountpoint)
        if rec and rec.get("pid") == os.getpid():
            try:
                os.unlink(record_path(self.mountpoint))
            except OSError:
                pass
