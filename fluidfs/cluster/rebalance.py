"""Rebalance after a membership change: blocks a cache worker holds but no longer owns move to their owners.

When a member joins (or weights change), rendezvous hashing gives it a share of the keys; the
blocks of that share stay on the members that owned them before.  Readers still find them there
(previous-owner lookups), but a worker's SSD tier stays full of blocks it no longer owns, and
under ``eviction: none`` it then cannot admit the blocks it owns now: the cluster cache holds
less than its capacity and the missing share is fetched from the source on every epoch.

:class:`Rebalancer` runs in a cache worker (a member without local readers: a mount keeps peer
copies on purpose): ``settle`` seconds after the membership last changed, it lists the blocks of
its SSD tier (a worker thread reads the block headers), and for every block this member does not
own in the current member set it makes sure each owner holds it (a ``HEAD``, else a ``PUT``, as the
graceful-leave handoff does) and then deletes its own copy.  A block some owner could not take is
kept (it still serves previous-owner lookups).  A new change cancels the pass and starts over
after the settle time.  Counted in ``fluidfs_peer_rebalance_blocks_total{result}``
(``moved``: pushed and dropped, ``present``: the owner had it, dropped, ``kept``: not dropped).

Caveats: memory-tier copies are left to age out; a pass over many blocks takes one ``HEAD`` per
block even when nothing moved for it; members that disagree about the member set (their
views lag the peers file or the EndpointSlice by up to a poll interval) can push a block to a
member that will not own it once every view agrees (the next pass moves it again).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from fluidfs import metrics
from fluidfs.cache.base import BlockKey
from fluidfs.cache.tiered import TieredCache
from fluidfs.cluster.handoff import push_one, ssd_block_keys
from fluidfs.cluster.hashing import Ring
from fluidfs.cluster.membership import Member
from fluidfs.cluster.peertier import PeerTier

log = logging.getLogger(__name__)

__all__ = ["RebalanceReport", "Rebalancer", "plan_rebalance"]


@dataclass
class RebalanceReport:
    held: int = 0  # blocks in the SSD tier
    disowned: int = 0  # ... that this member does not own
    moved: int = 0  # pushed to every owner that lacked them, then dropped here
    present: int = 0  # every owner had them already: dropped here
    kept: int = 0  # an owner could not take them: kept here


def plan_rebalance(
    members: Iterable[Member], me: str, keys: Iterable[BlockKey], replicas: int = 1
) -> list[tuple[BlockKey, list[Member]]]:
    """``[(key, owners)]`` of the blocks in ``keys`` that ``me`` does not own among ``members``."""
    ms = list(members)
    if me not in {m.id for m in ms}:
        return []
    by_id = {m.id: m for m in ms}
    ring = Ring(ms)
    plan = []
    for key in keys:
        owners = ring.owners(key, replicas)
        if me not in owners:
            plan.append((key, [by_id[o] for o in owners]))
    return plan


class Rebalancer:
    """Moves the blocks this worker no longer owns to their owners after every membership change."""

    def __init__(
        self, tier: PeerTier, cache: TieredCache, directory: str, *, settle: float, concurrency: int = 4
    ) -> None:
        self.tier = tier
        self.cache = cache
        self.directory = directory
        self.settle = settle
        self.concurrency = concurrency
        self.passes = 0
        self.last: RebalanceReport | None = None
        ds = tier.dataset
        self._m = {r: metrics.PEER_REBALANCE_BLOCKS.labels(ds, r) for r in ("moved", "present", "kept")}

    async def run(self) -> None:
        """Until cancelled: after each membership change has settled, one pass (restarted by the next change)."""
        view = self.tier.view
        changed = view.changed
        first = True  # blocks left from an earlier life of this cache directory count too
        while True:
            if not first:
                await changed.wait()
                changed = view.changed
            first = False
            with trio.move_on_after(self.settle):
                await changed.wait()  # changed again: wait for it to settle
            if changed.is_set():
                continue
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._cancel_on, changed, scope)
                    self.last = await self.rebalance()
                    nursery.cancel_scope.cancel()
            if scope.cancelled_caught:
                log.info("dataset %s: rebalance interrupted by a membership change", self.tier.dataset)

    @staticmethod
    async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async def rebalance(self) -> RebalanceReport:
        """One pass over the SSD tier (see the module docstring)."""
        report = RebalanceReport()
        me = self.tier.view.self_id
        ssd = self.cache.ssd
        discard = getattr(ssd, "discard", None)
        if me is None or discard is None or not os.path.isdir(self.directory):
            return report
        keys = await trio.to_thread.run_sync(ssd_block_keys, self.directory)
        report.held = len(keys)
        plan = plan_rebalance(self.tier.view.current.members, me, keys, self.tier.replicas)
        report.disowned = len(plan)
        self.passes += 1
        if not plan:
            return report
        work = iter(plan)

        async def worker() -> None:
            for key, owners in work:
                results = [(await push_one(self.tier, self.cache, key, owner))[0] for owner in owners]
                if all(r in ("pushed", "present") for r in results) and discard(key):
                    result = "moved" if "pushed" in results else "present"
                else:
                    result = "kept"
                setattr(report, result, getattr(report, result) + 1)
                self._m[result].inc()

        async with trio.open_nursery() as nursery:
            for _ in range(max(1, self.concurrency)):
                nursery.start_soon(worker)
        log.info(
            "dataset %s: rebalanced: %d of %d held blocks are owned by others: %d moved, %d already there, %d kept",
            self.tier.dataset, report.disowned, report.held, report.moved, report.present, report.kept,
        )  # fmt: skip
        return report
