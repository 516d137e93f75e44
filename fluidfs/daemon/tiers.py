"""The tiered cache of a mount daemon or a worker, built from the settings table, and malloc tuning for it.

:func:`build_cache` makes the memory tier and, with ``cache_dir``, the SSD tier in front of the
sources, exactly as ``fluidfs mount`` and ``fluidfs worker`` use them (same cache format, same
metrics); :func:`tune_malloc` keeps a process that holds many multi-MiB blocks from keeping
freed memory.

Caveats: with an SSD tier the memory tier is always LRU (it is a front for the SSD tier); the
eviction setting applies to the tier that holds the data.
"""

from __future__ import annotations

import ctypes

from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.config import MountConfig
from fluidfs.errors import MountError
from fluidfs.spec.model import Dataset

__all__ = ["build_cache", "tune_malloc"]


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
