"""Node-wide budgets of the mount supervisor: every dataset's memory tier within the supervisor's
memory limit, every SSD tier within the cache disk's cap, and the disk's free-space floor.

All dataset daemons of a node run in the supervisor's container, so one memory limit covers all
their memory tiers.  When a dataset is mounted its settings ask for a memory tier and an SSD
quota (volume attributes, else its Dataset document, else fluidfs's defaults: 512Mi, 10Gi);
:meth:`NodeBudget.grant` gives what fits next to the datasets already mounted:

- **memory**: the limit (``--memory-limit``; by default the container's cgroup limit) less a
  reserve for the supervisor itself (``MEMORY_RESERVE``), less ``DAEMON_OVERHEAD`` plus the
  memory tier of every mounted dataset.  A tier that does not fit is shrunk to what is left,
  down to two blocks (the smallest tier a daemon accepts); below that the mount is refused
  (RESOURCE_EXHAUSTED), so no daemon is ever started that the kernel would OOM-kill later.
- **SSD tier**: the cap (``--cache-capacity``: bytes, or a percentage of the cache file
  system) less the quotas of the mounted datasets and what unused cache directories still hold
  (``csi/caches.py`` removes those, oldest first, to make room).  A quota that does not fit is
  shrunk; with less than ``MIN_SSD_BLOCKS`` blocks left the dataset is served from its memory
  tier alone.  Quotas are hard limits of the SSD tier, so the cap holds.
- **free-space floor** (``--cache-free-floor``, default ``15%`` of the cache file system): every
  daemon's SSD tier stops writing when the disk's free space would fall below it (the larger of
  this and the dataset's own ``freeSpaceFloor``).  kubelet evicts pods when the node file system
  has less than 10% free (``nodefs.available<10%``); a floor above that keeps the cache from ever
  pushing the node into DiskPressure, whatever else fills the disk.

Every shrink and refusal is logged with the numbers and counted in ``csi/metrics.py``.

Caveats: memory is budgeted, not measured: a daemon's own use beyond its tier (measured at about
70 MiB, budgeted at ``DAEMON_OVERHEAD``) and the kernel's page cache of SSD blocks (reclaimable)
are not its tier.  A cache directory reused with a smaller quota may hold more than that quota
until the SSD tier evicts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from fluidfs.config import MiB, MountConfig
from fluidfs.util.sizes import format_size, parse_size

from . import metrics
from .volumes import RequestError

log = logging.getLogger(__name__)

MEMORY_RESERVE = 128 * MiB  # the supervisor (~45 MiB), the reaper and a `fluidfs mount` being started
DAEMON_OVERHEAD = 128 * MiB  # a dataset daemon besides its memory tier (~70 MiB measured, idle or busy)
MIN_SSD_BLOCKS = 16  # an SSD tier smaller than this many blocks is not worth its disk writes
DEFAULT_FREE_FLOOR = "15%"  # above kubelet's default hard eviction threshold nodefs.available<10%
DEFAULT_CAPACITY = "50%"
CGROUP = "/sys/fs/cgroup"
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a page-rounded 2^63 - 1


@dataclass(frozen=True)
class Amount:
    """A number of bytes, or a fraction of a file system's size (``15%``)."""

    bytes: int = 0
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str, flag: str) -> Amount:
        t = text.strip()
        if t.endswith("%"):
            try:
                pct = float(t[:-1])
            except ValueError:
                raise ValueError(f"{flag} {text!r}: expected a size (500Gi) or a percentage (50%)") from None
            if not 0 <= pct <= 100:
                raise ValueError(f"{flag} {text!r}: a percentage must be between 0% and 100%")
            return cls(fraction=pct / 100)
        return cls(bytes=parse_size(t, flag))

    def of(self, total: int) -> int:
        return int(total * self.fraction) if self.fraction is not None else self.bytes

    def __str__(self) -> str:
        return f"{self.fraction * 100:g}%" if self.fraction is not None else format_size(self.bytes)


def cgroup_memory_limit(root: str = CGROUP, proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """The memory limit of this process's cgroup (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``), None when there is none or it cannot be read."""
    try:
        with open(proc_cgroup, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    candidates: list[str] = []
    for line in lines:
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        path = path.lstrip("/")
        if hid == "0" and controllers == "":  # v2: the unified hierarchy
            candidates += [os.path.join(root, path, "memory.max"), os.path.join(root, "memory.max")]
        elif "memory" in controllers.split(","):  # v1
            base = os.path.join(root, "memory")
            name = "memory.limit_in_bytes"
            candidates += [os.path.join(base, path, name), os.path.join(base, name)]
    for candidate in candidates:
        try:
            with open(candidate, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return None if value >= _UNLIMITED else value
    return None


@dataclass(frozen=True)
class Held:
    """What a mounted (or being mounted) dataset holds of the node's budgets."""

    memory: int  # its memory tier
    cache: int  # its SSD quota (0: none)


@dataclass(frozen=True)
class Grant:
    """What a dataset about to be mounted gets."""

    memory: int
    cache: int  # 0: no SSD tier
    floor: int  # free-space floor of its SSD tier
    notes: tuple[str, ...] = ()  # what was shrunk, and why


def exhausted(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


class NodeBudget:
    """The supervisor's limits; :meth:`grant` is called under the caller's admission lock."""

    def __init__(
        self,
        cache_root: str,
        *,
        memory_limit: int | None = None,
        memory_reserve: int = MEMORY_RESERVE,
        daemon_overhead: int = DAEMON_OVERHEAD,
        cache_capacity: Amount | None = None,
        free_floor: Amount | None = None,
    ) -> None:
        self.cache_root = cache_root
        self.memory_limit = memory_limit
        self.memory_reserve = memory_reserve
        self.daemon_overhead = daemon_overhead
        self.cache_capacity = cache_capacity
        self.free_floor = free_floor if free_floor is not None else Amount.parse(DEFAULT_FREE_FLOOR, "floor")
        if memory_limit is not None:
            metrics.BUDGET.labels(resource="memory").set(memory_limit)

    def disk_size(self) -> int:
        """Size of the file system holding the cache root."""
        st = os.statvfs(self.cache_root)
        return st.f_blocks * st.f_frsize

    def disk_cap(self) -> int | None:
        """The SSD quotas of all datasets together may not exceed this (None: no cap)."""
        if self.cache_capacity is None:
            return None
        return self.cache_capacity.of(self.disk_size())

    def memory_free(self, held: Iterable[Held]) -> int | None:
        """Memory left for one more daemon's tier (None: no limit)."""
        if self.memory_limit is None:
            return None
        used = self.memory_reserve + sum(h.memory + self.daemon_overhead for h in held)
        return self.memory_limit - used - self.daemon_overhead

    def cache_room(self, held: Iterable[Held], idle_bytes: int) -> int | None:
        """SSD quota left under the cap for one more dataset (None: no cap)."""
        cap = self.disk_cap()
        if cap is None:
            return None
        return cap - sum(h.cache for h in held) - idle_bytes

    def grant(self, key: str, want: MountConfig, floor_asked: int | None, held: list[Held], idle_bytes: int) -> Grant:
        """The memory tier, SSD quota and floor of dataset ``key``, next to ``held`` (the other
        mounts) and ``idle_bytes`` (unused cache directories); RESOURCE_EXHAUSTED when not even
        the smallest memory tier fits."""
        notes: list[str] = []
        memory = want.memory_size
        free = self.memory_free(held)
        if free is not None and free < memory:
            smallest = 2 * want.block_size
            if free < smallest:
                metrics.BUDGET_ADJUSTMENTS.labels(resource="memory", outcome="refused").inc()
                raise exhausted(
                    f"dataset {key}: the mount supervisor's memory limit ({format_size(self.memory_limit or 0)}) is"
                    f" taken by {len(held)} mounted dataset(s): {format_size(max(0, free))} left, a memory tier"
                    f" needs at least {format_size(smallest)}; raise mounter.resources.limits.memory or lower"
                    " memorySize"
                )
            memory = free
            notes.append(
                f"memory tier {format_size(want.memory_size)} shrunk to {format_size(memory)} to fit the mount"
                f" supervisor's memory limit {format_size(self.memory_limit or 0)} ({len(held)} other dataset(s))"
            )
            metrics.BUDGET_ADJUSTMENTS.labels(resource="memory", outcome="shrunk").inc()
        cache = want.cache_size
        left = self.cache_room(held, idle_bytes)
        if left is not None:
            cap = self.disk_cap() or 0
            if left < cache:
                cache = left if left >= MIN_SSD_BLOCKS * want.block_size else 0
                what = f"shrunk to {format_size(cache)}" if cache else "left out (memory tier only)"
                notes.append(
                    f"SSD tier {format_size(want.cache_size)} {what} to fit the node's cache capacity"
                    f" {format_size(cap)} ({self.cache_capacity}; {len(held)} other dataset(s))"
                )
                metrics.BUDGET_ADJUSTMENTS.labels(resource="cache", outcome="shrunk").inc()
        floor = max(self.free_floor.of(self.disk_size()), floor_asked or 0)
        return Grant(memory=memory, cache=cache, floor=floor, notes=tuple(notes))

    def publish(self, held: Iterable[Held]) -> None:
        """Export the totals (granted memory and SSD quotas, the cap) as metrics."""
        held = list(held)
        metrics.GRANTED.labels(resource="memory").set(sum(h.memory for h in held))
        metrics.GRANTED.labels(resource="cache").set(sum(h.cache for h in held))
        cap = self.disk_cap() if os.path.isdir(self.cache_root) else None
        if cap is not None:
            metrics.BUDGET.labels(resource="cache").set(cap)
