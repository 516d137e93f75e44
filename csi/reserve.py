"""Reservations of the node's resources for dataset mounts: what each mount is granted
(``csi/budget.py``), which cache directory it uses (``csi/caches.py``), and the removal of the
cache directories nobody uses, all under one short lock.

A mount is *reserved* before its daemon starts (its grant counts against the budgets while it is
being mounted, so two datasets mounted at once cannot both take the last memory), *committed*
once it is in the state file, and *cancelled* if the mount fails.  The lock is never held across a
mount, an unmount or a network call: calls on different datasets still never wait for each other
longer than a reservation takes (a few milliseconds, plus measuring unused cache directories the
first time they are needed).

Caveats: mounts recorded by a version 1 state file have no grant on record; what their flags
(or fluidfs's defaults) asked for is counted instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fluidfs.config import MountConfig, build_config
from fluidfs.errors import ConfigError
from fluidfs.util.sizes import format_duration, parse_size

from . import metrics
from .budget import Grant, Held, NodeBudget
from .caches import CacheDirs, dir_usage
from .state import IdleCache, SharedMount, State
from .volumes import DatasetRequest, invalid

log = logging.getLogger(__name__)

DEFAULTS = MountConfig()
PLACEHOLDER_LISTEN = "0.0.0.0:1"  # validation only: the port the supervisor picks is not known yet
LOOPBACK_METRICS = "127.0.0.1:0"  # every daemon serves its metrics on loopback (the supervisor re-exports them)


@dataclass(frozen=True)
class Reservation:
    """A mount's share of the node: its cache directory ("" = no SSD tier) and its ``fluidfs
    mount`` flags (the volume's own, then the grant's, which win)."""

    dataset: str
    cache_dir: str
    args: tuple[str, ...]
    grant: Grant


def wanted(req: DatasetRequest) -> MountConfig:
    """The settings a dataset asks for (attributes over its document over the defaults)."""
    settings = dict(req.settings)
    if settings.get("kube_service") and not settings.get("peer_listen"):
        settings["peer_listen"] = PLACEHOLDER_LISTEN  # a clustered volume: the supervisor adds --listen (csi/peers.py)
    try:
        return build_config(settings)
    except ConfigError as e:
        raise invalid(f"dataset {req.name}: {e}") from None


def held(m: SharedMount) -> Held:
    """What a mount holds; for a version 1 mount, what its flags (or the defaults) asked for."""
    if m.memory:
        return Held(m.memory, m.cache)

    def flag(name: str, default: int) -> int:
        args = m.args
        for i in range(len(args) - 1, 0, -1):
            if args[i - 1] == name:
                try:
                    return parse_size(args[i])
                except ValueError:
                    break
        return default

    return Held(
        flag("--memory-size", DEFAULTS.memory_size), flag("--cache-size", DEFAULTS.cache_size) * bool(m.cache_dir)
    )


class Reservations:
    """The node's budgets over the mounts of ``state`` (guarded by ``state_lock``, saved by ``save``)."""

    def __init__(
        self,
        state: State,
        state_lock: threading.RLock,
        save: Callable[[], None],
        budget: NodeBudget,
        caches: CacheDirs,
    ) -> None:
        self.state = state
        self.state_lock = state_lock
        self.save = save
        self.budget = budget
        self.caches = caches
        self.lock = threading.Lock()  # order: dataset lock -> this -> state_lock
        self.pending: dict[str, SharedMount] = {}  # key -> mount being started

    def _others(self, key: str) -> list[SharedMount]:
        with self.state_lock:
            mounts = [m for k, m in self.state.mounts.items() if k != key]
        return mounts + [m for k, m in self.pending.items() if k != key]

    def reserve(self, key: str, req: DatasetRequest) -> Reservation:
        """Grant ``key`` its memory tier and SSD quota and pick its cache directory; evicts unused
        cache directories if that makes room.  RESOURCE_EXHAUSTED when it does not fit at all."""
        want = wanted(req)
        floor_asked = req.settings.get("free_space_floor")
        dataset = req.dataset_digest()
        trashed: list[str] = []
        try:
            with self.lock:
                others = self._others(key)
                busy = {os.path.basename(m.cache_dir) for m in others if m.cache_dir}
                self._track(busy)
                with self.state_lock:
                    idle = self.state.idle_caches
                    name = self.caches.choose(dataset, busy)
                    idle.pop(name, None)  # about to be used: counted by its grant, never evicted
                    holdings = [held(m) for m in others]
                    room = self.budget.cache_room(holdings, self.caches.idle_bytes(idle))
                    if room is not None and room < want.cache_size and idle:
                        freed, trashed = self.caches.evict(idle, want.cache_size - room)
                        metrics.CACHE_DIRS_REMOVED.labels(reason="evicted").inc(len(trashed))
                    grant = self.budget.grant(key, want, floor_asked, holdings, self.caches.idle_bytes(idle))
                    cache_dir = self.caches.path(name) if grant.cache else ""
                    args = [*req.cache_args, "--memory-size", str(grant.memory), "--free-space-floor", str(grant.floor)]
                    if grant.cache:
                        args += ["--cache-size", str(grant.cache)]
                    args += ["--metrics-addr", LOOPBACK_METRICS]
                    self.pending[key] = SharedMount(
                        key=key, mountpoint="", source="", cache_dir=cache_dir, memory=grant.memory, cache=grant.cache
                    )
                    self.save()
        finally:
            self.caches.empty_trash(trashed)
        for note in grant.notes:
            log.warning("dataset %s: %s", key, note)
        return Reservation(dataset=dataset[:20], cache_dir=cache_dir, args=tuple(args), grant=grant)

    def commit(self, key: str) -> None:
        """``key`` is mounted and in the state: it counts from there."""
        with self.lock:
            self.pending.pop(key, None)
        self.publish()

    def cancel(self, key: str) -> None:
        with self.lock:
            self.pending.pop(key, None)

    def released(self, m: SharedMount) -> None:
        """``m`` was unmounted: its cache directory is unused from now on."""
        if m.cache_dir:
            with self.state_lock:
                self.state.idle_caches.setdefault(os.path.basename(m.cache_dir), IdleCache(since=time.time()))
                self.save()
        self.publish()

    def _track(self, busy: set[str]) -> bool:
        """Bring the unused cache directories up to date and measure new ones (the walk runs
        outside the state lock: it may take a second).  The caller holds ``self.lock``."""
        with self.state_lock:
            changed = self.caches.track(self.state.idle_caches, busy, time.time())
            todo = [n for n, e in self.state.idle_caches.items() if e.bytes is None]
        sizes = {n: dir_usage(self.caches.path(n)) for n in todo}
        with self.state_lock:
            for n, size in sizes.items():
                entry = self.state.idle_caches.get(n)
                if entry is not None and entry.bytes is None:
                    entry.bytes = size
                    changed = True
        return changed

    def collect(self) -> list[str]:
        """Remove cache directories unused for longer than the grace period; returns their names."""
        with self.lock:
            busy = {os.path.basename(m.cache_dir) for m in self._others("") if m.cache_dir}
            changed = self._track(busy)
            with self.state_lock:
                idle = self.state.idle_caches
                expired = self.caches.expired(idle, time.time())
                trashed = self.caches.discard(idle, expired)
                if changed or expired:
                    self.save()
        for name in expired:
            log.info("cache directory %s: unused for %s; removed", name, format_duration(self.caches.grace))
        metrics.CACHE_DIRS_REMOVED.labels(reason="expired").inc(len(trashed))
        self.caches.empty_trash(trashed)
        self.publish()
        return expired

    def publish(self) -> None:
        with self.state_lock:
            mounts = list(self.state.mounts.values())
        self.budget.publish(held(m) for m in mounts)
