"""Mount configuration: one frozen dataclass, built once at start-up from defaults, the
Dataset's ``spec.cache``/``spec.metadata`` and command-line flags (the command line wins).

Caveats: values are validated here; everything downstream trusts them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fluidfs.errors import ConfigError
from fluidfs.spec.model import Dataset

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: default block size: large enough that one GET amortises request latency (a 20 ms RTT at
#: 0.5 GB/s moves ~10 MiB), small enough that a random 4 KiB read does not fetch too much.
DEFAULT_BLOCK_SIZE = 4 * MiB
MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 64 * MiB
#: seconds one source operation (a stat, a listing page, a block read) may take, retries included
DEFAULT_REQUEST_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class MountConfig:
    """Everything a running mount needs to know besides the Dataset itself."""

    # cache
    cache_dir: str | None = None  # None: memory tier only
    cache_size: int = 10 * GiB  # SSD tier quota
    memory_size: int = 512 * MiB  # MEM tier quota
    block_size: int = DEFAULT_BLOCK_SIZE
    eviction: str = "none"  # "none" keeps an epoch's hit ratio at cache/dataset; "lru"
    free_space_floor: int = 1 * GiB
    # readahead
    readahead: int = 32 * MiB  # largest per-file readahead window
    prefetch_memory: int = 128 * MiB  # at most this much of inflight_memory goes to readahead
    # blocks in flight: being fetched (or read from the SSD tier), read ahead and not read yet,
    # waiting for their SSD write.  None: half the memory size, at least 4 blocks, at most 256Mi
    inflight_memory: int | None = None
    sibling_prefetch: int = 16  # small files of the same directory prefetched per small-file open
    # metadata
    metadata_ttl: float = 60.0  # seconds; math.inf = indefinite (immutable datasets)
    negative_ttl: float = 10.0
    # POSIX presentation
    uid: int = 0
    gid: int = 0
    file_mode: int = 0o444
    dir_mode: int = 0o555
    allow_other: bool = False
    # concurrency
    source_threads: int = 32  # worker threads talking to sources
    # observability
    metrics_addr: str | None = "127.0.0.1:0"  # None disables; port 0 = any free port
    # source request behaviour: every source operation is over within this many seconds
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    @property
    def inflight_bytes(self) -> int:
        """Bytes of blocks in flight, all files together (``inflight_memory`` or its default)."""
        if self.inflight_memory is not None:
            return self.inflight_memory
        return max(4 * self.block_size, min(self.memory_size // 2, 256 * MiB))

    @property
    def prefetch_bytes(self) -> int:
        """The readahead's share of ``inflight_bytes`` (blocks in flight or held until read)."""
        return min(self.prefetch_memory, self.inflight_bytes // 2)

    @property
    def fetch_slots(self) -> int:
        """Blocks that demand reads may load at once: the rest of ``inflight_bytes``."""
        return max(2, (self.inflight_bytes - self.prefetch_bytes) // self.block_size)

    @property
    def kernel_timeout(self) -> float:
        """Kernel entry/attr cache timeout, taken from the metadata TTL (capped at a day)."""
        return min(self.metadata_ttl, 86400.0)


def validate(cfg: MountConfig) -> MountConfig:
    """Check cross-field rules; raise ConfigError with a one-line message."""
    if not MIN_BLOCK_SIZE <= cfg.block_size <= MAX_BLOCK_SIZE:
        raise ConfigError(f"block size must be between 1Mi and 64Mi, got {cfg.block_size}")
    if cfg.eviction not in ("lru", "none"):
        raise ConfigError(f"eviction must be 'lru' or 'none', got {cfg.eviction!r}")
    if cfg.memory_size < cfg.block_size * 2:
        raise ConfigError("memory size must hold at least two blocks")
    if cfg.cache_size < 0 or cfg.readahead < 0 or cfg.prefetch_memory < 0 or cfg.sibling_prefetch < 0:
        raise ConfigError("sizes must not be negative")
    if cfg.metadata_ttl < 0 or cfg.negative_ttl < 0:
        raise ConfigError("TTLs must not be negative")
    if cfg.inflight_memory is not None and cfg.inflight_memory < 2 * cfg.block_size:
        raise ConfigError("in-flight memory must hold at least two blocks")
    if not (math.isfinite(cfg.request_timeout) and cfg.request_timeout > 0):
        raise ConfigError(f"request timeout must be a positive number of seconds, got {cfg.request_timeout}")
    if cfg.metrics_addr is not None:
        host, sep, port = cfg.metrics_addr.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"metrics address must be HOST:PORT, got {cfg.metrics_addr!r}")
    if cfg.cache_dir is not None and not os.path.isabs(cfg.cache_dir):
        raise ConfigError(f"cache directory must be an absolute path, got {cfg.cache_dir!r}")
    return cfg


def build_config(dataset: Dataset, overrides: Mapping[str, Any] | None = None) -> MountConfig:
    """Defaults ← dataset ``spec.cache``/``spec.metadata`` ← ``overrides`` (CLI flags, None = unset)."""
    values: dict[str, Any] = {}
    c, m = dataset.cache, dataset.metadata
    for name, value in (
        ("cache_dir", c.directory),
        ("cache_size", c.size),
        ("memory_size", c.memory_size),
        ("block_size", c.block_size),
        ("eviction", c.eviction),
        ("readahead", c.readahead),
        ("free_space_floor", c.free_space_floor),
        ("sibling_prefetch", c.sibling_prefetch),
        ("metrics_addr", c.metrics_addr),
        ("metadata_ttl", m.ttl),
        ("negative_ttl", m.negative_ttl),
    ):
        if value is not None:
            values[name] = value
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    if "metrics_addr" in values and str(values["metrics_addr"]).lower() in ("none", "off", ""):
        values["metrics_addr"] = None  # explicitly disabled
    cfg = replace(MountConfig(), **values)
    if math.isnan(cfg.metadata_ttl):
        raise ConfigError("metadata TTL must be a number of seconds or 'indefinite'")
    return validate(cfg)
