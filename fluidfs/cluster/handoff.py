"""Graceful leave: push the blocks this member owns to the members that own them after it leaves.

``handoff(tier, cache, keys, deadline)`` computes, for every block this member holds and owns,
its owners in the member set *without* this member; the members that become owners (with
rendezvous hashing exactly the next-ranked member per replaced owner) get the block by a
``PUT`` (authenticated, verified and admitted to the receiver's SSD tier), unless a ``HEAD``
shows they already hold it.  Pushes run ``concurrency`` at a time and stop at ``deadline``;
what is left is counted as ``unsent``.  The leaving member keeps serving during the handoff, so
readers that still see it as the owner keep being served, and members that already see the new
member set find the blocks at the new owners or ask this member as a previous owner.

The held keys come from the SSD directory (``ssd_block_keys``: each block file's header names
its key), read in a worker thread.

Caveats: blocks held only in the memory tier are not handed off (workers keep everything on
SSD; a mount's memory-only copies are re-read from the owner or source).  The handoff assumes
the other members' view of the membership will be the current one minus this member; if other
members leave at the same time some blocks go to a member that will not own them (they are
then found there as a previous owner, or refetched).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from fluidfs import metrics
from fluidfs.cache import blockfile
from fluidfs.cache.base import BlockKey
from fluidfs.cache.ssdlayout import scan_directory
from fluidfs.cache.tiered import TieredCache
from fluidfs.cluster.hashing import Ring
from fluidfs.cluster.membership import Member
from fluidfs.cluster.peertier import PeerTier
from fluidfs.errors import PeerError

log = logging.getLogger(__name__)

__all__ = ["HandoffReport", "handoff", "push_one", "ssd_block_keys", "plan_handoff"]


@dataclass
class HandoffReport:
    pushed: int = 0  # blocks the new owner stored
    present: int = 0  # the new owner already had them
    failed: int = 0  # push refused, not admitted or the peer failed
    unsent: int = 0  # not attempted before the deadline
    owned: int = 0  # blocks held that this member owned (the ones to hand off)
    held: int = 0  # blocks held in all
    bytes: int = 0
    targets: dict[str, int] = field(default_factory=dict)  # member id -> blocks pushed


def ssd_block_keys(directory: str) -> list[BlockKey]:
    """The keys of the valid block files in an SSD cache directory (blocking; reads headers)."""
    keys: list[BlockKey] = []
    res = scan_directory(directory)
    for b in res.blocks:
        path = os.path.join(directory, "blocks", b.digest[:2], b.digest)
        try:
            h = blockfile.read_header(path)
        except (OSError, blockfile.BlockFormatError):
            continue  # evicted meanwhile, or bad: the tier discards it on its next read
        keys.append(BlockKey(h.url, h.version, h.block_size, h.index))
    return keys


def plan_handoff(
    members: Iterable[Member], me: str, keys: Iterable[BlockKey], replicas: int = 1
) -> tuple[list[tuple[BlockKey, Member]], int]:
    """``([(key, new owner)], owned)``: where each block ``me`` owns goes once ``me`` has left."""
    ms = list(members)
    by_id = {m.id: m for m in ms}
    before = Ring(ms)
    after = Ring([m for m in ms if m.id != me])
    plan: list[tuple[BlockKey, Member]] = []
    owned = 0
    if len(after) == 0:
        return plan, 0
    for key in keys:
        old = before.owners(key, replicas)
        if me not in old:
            continue
        owned += 1
        for mid in after.owners(key, replicas):
            if mid not in old:
                plan.append((key, by_id[mid]))
    return plan, owned


async def handoff(
    tier: PeerTier,
    cache: TieredCache,
    keys: Iterable[BlockKey],
    deadline: float,
    *,
    concurrency: int = 4,
) -> HandoffReport:
    """Push this member's owned blocks to their next owners until ``deadline`` (trio clock)."""
    report = HandoffReport()
    me = tier.view.self_id
    keys = list(keys)
    report.held = len(keys)
    if me is None:
        log.info("dataset %s: handoff: this member owns nothing (not in the member set)", tier.dataset)
        return report
    plan, report.owned = plan_handoff(tier.view.current.members, me, keys, tier.replicas)
    m_blocks = {
        r: metrics.PEER_HANDOFF_BLOCKS.labels(tier.dataset, r) for r in ("pushed", "present", "failed", "unsent")
    }
    m_bytes = metrics.PEER_HANDOFF_BYTES.labels(tier.dataset)
    log.info(
        "dataset %s: handing off %d blocks (of %d held, %d owned) to %d members, %.1f s left",
        tier.dataset, len(plan), len(keys), report.owned, len({m.id for _k, m in plan}),
        deadline - trio.current_time(),
    )  # fmt: skip
    work = iter(plan)

    async def worker() -> None:
        for key, target in work:
            result, n = await push_one(tier, cache, key, target)
            m_blocks[result].inc()
            if result == "pushed":
                report.pushed += 1
                report.bytes += n
                m_bytes.inc(n)
                report.targets[target.id] = report.targets.get(target.id, 0) + 1
            elif result == "present":
                report.present += 1
            else:
                report.failed += 1

    with trio.move_on_at(deadline):
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, concurrency)):
                nursery.start_soon(worker)
    done = report.pushed + report.present + report.failed
    report.unsent = len(plan) - done
    if report.unsent:
        m_blocks["unsent"].inc(report.unsent)
    log.info(
        "dataset %s: handoff done: %d pushed (%d bytes), %d already there, %d failed, %d not sent in time",
        tier.dataset, report.pushed, report.bytes, report.present, report.failed, report.unsent,
    )  # fmt: skip
    return report


async def push_one(tier: PeerTier, cache: TieredCache, key: BlockKey, target: Member) -> tuple[str, int]:
    """Make ``target`` hold ``key``: ``("present", 0)``, ``("pushed", bytes)`` or ``("failed", 0)``."""
    breaker = tier.breakers.get(target.id)
    if not breaker.allow():
        return "failed", 0
    try:
        if await tier.client.has(target, tier.dataset, key):
            breaker.success()
            return "present", 0
        data = await cache.lookup(key)
        if data is None:
            breaker.abandon()
            return "failed", 0  # evicted meanwhile
        ok = await tier.client.push(target, tier.dataset, key, data)
    except PeerError as exc:
        breaker.failure(exc.reason)
        metrics.PEER_ERRORS.labels(tier.dataset, "client", exc.reason).inc()
        log.info(
            "dataset %s: handoff of %s block %d to %s failed: %s", tier.dataset, key.url, key.index, target.id, exc
        )
        return "failed", 0
    finally:
        tier.breakers.export(target.id)
    breaker.success()
    metrics.PEER_REQUESTS.labels(tier.dataset, "client", "put", "ok" if ok else "miss").inc()
    return ("pushed", len(data)) if ok else ("failed", 0)
