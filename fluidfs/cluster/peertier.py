"""The peer tier: what a TieredCache asks on a local miss, before the source.

``get(key)`` finds the key's owners with the membership's rendezvous hash and asks them (never
itself), verifies what comes back (``client.py``) and returns the block, or None so that the
cache fetches from the source.  It never raises for a peer failure: refused connections,
timeouts and bad blocks open that peer's circuit breaker (``breaker.py``), are counted in
``fluidfs_peer_errors_total`` and ``fluidfs_peer_lookups_total{result="error"}``, and the next
candidate or the source serves the read.

Who is asked, for a member ``me`` reading ``key`` with ``replicas = k``:

* ``me`` is not among the k owners, reading for itself: the owners in ``mode=fetch`` (each
  reader starts at a different replica, so hot blocks spread over the k owners); if every
  owner failed, the next-ranked member (the one that takes over when an owner dies) in
  ``mode=fetch``; then the previous owners (``mode=cached``).
* ``me`` is a secondary owner: the primary owner in ``mode=fetch`` (so the block still leaves
  the source once), then the other owners and previous owners in ``mode=cached``.
* ``me`` is the primary owner: the other owners, then the previous owners (``mode=cached``);
  then the source (the owner's own single-flight fetch).
* ``me`` is serving a peer's request and is *not* an owner in its own view (views differ
  during a membership change): only ``mode=cached`` lookups — a fetch is never forwarded more
  than ``MAX_HOPS`` times, so requests cannot chase each other round a cycle.

Previous owners come from the membership history: after a member joins, the blocks it now owns
are still at their previous owners, which answer cached lookups until the new owner has them.

A member that gets a block it *owns* from a peer (from a previous owner after a membership
change, or from the primary when it is a secondary owner) keeps it on SSD: it is responsible for
it from now on.  ``copy`` (``peer_copy``) says where a non-owner keeps a block.  Default
``memory``: the owner already keeps it on SSD, and a second SSD copy on every reader would
divide the cluster's capacity by the number of readers (under the ``none`` eviction policy it
would even fill the SSD with other members' blocks and refuse the member's own); a memory copy
serves the many small reads of one block (FUSE reads are 128 KiB–1 MiB, blocks 4 MiB) and
re-reads within the memory tier's reach.  ``ssd`` suits readers whose re-reads exceed memory
and whose SSD is otherwise idle; ``none`` keeps nothing beyond the current reads.

Caveats: a peer that keeps answering slowly but within the timeouts is not skipped (no latency
based ejection).  The per-key rotation over replicas is a hash, not load-aware.
"""

from __future__ import annotations

import logging
import time
import zlib

from fluidfs import metrics
from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cluster.breaker import Breakers
from fluidfs.cluster.client import PeerClient
from fluidfs.cluster.membership import Member, MembershipView
from fluidfs.cluster.protocol import MAX_HOPS, SERVING_HOPS
from fluidfs.errors import ConfigError, PeerError

log = logging.getLogger(__name__)

__all__ = ["PeerTier", "COPY_POLICIES"]

COPY_POLICIES = ("memory", "ssd", "none")
#: failures after which the peer is known to be up (no breaker penalty, no spare asked)
_ALIVE = frozenset({"busy", "source"})


class PeerTier:
    """The :class:`~fluidfs.cache.base.PeerLookup` of one dataset on one member."""

    def __init__(
        self,
        view: MembershipView,
        client: PeerClient,
        dataset: str,
        *,
        replicas: int = 1,
        copy: str = "memory",
        max_previous: int = 2,
        breaker_base: float = 0.5,
        breaker_cap: float = 30.0,
    ) -> None:
        if copy not in COPY_POLICIES:
            raise ConfigError(f"peer copy must be one of {', '.join(COPY_POLICIES)}, got {copy!r}")
        if replicas < 1:
            raise ConfigError(f"replicas must be at least 1, got {replicas}")
        self.view = view
        self.client = client
        self.dataset = dataset
        self.replicas = replicas
        self.copy = copy
        self.max_previous = max_previous
        self.breakers = Breakers(dataset, breaker_base, breaker_cap)
        self._m_lookup = {
            r: metrics.PEER_LOOKUPS.labels(dataset, r) for r in ("owner", "previous", "miss", "error", "disabled")
        }
        self._m_req = {
            (op, r): metrics.PEER_REQUESTS.labels(dataset, "client", op, r)
            for op in ("get", "head", "put")
            for r in ("ok", "miss", "error")
        }
        self._m_bytes = metrics.PEER_BYTES.labels(dataset, "client", "get")
        self._m_lat = metrics.PEER_LATENCY.labels(dataset, "client", "get")
        self._m_inflight = metrics.PEER_IN_FLIGHT.labels(dataset, "client")
        self._warned: set[str] = set()
        self.enabled = True
        view.on_change(self._membership_changed)

    # --------------------------------------------------------------------------- lookups

    async def get(self, key: BlockKey) -> Buffer | None:
        """A verified block from a peer, or None (the caller reads the source)."""
        if not self.enabled or len(self.view.current.members) == 0:
            self._m_lookup["disabled"].inc()
            return None
        hops = SERVING_HOPS.get()
        me = self.view.self_id
        ranked = self.view.candidates(key, self.replicas + 1)
        owners, spare = ranked[: self.replicas], ranked[self.replicas :]
        owner_ids = [m.id for m in owners]
        errors = 0
        if me is not None and me in owner_ids:
            if owner_ids[0] != me and hops < MAX_HOPS:
                got, err, _ans = await self._ask([owners[0]], key, "fetch", hops + 1)
                errors += err
                if got is not None:
                    return self._done("owner", got)
            rest = [o for o in owners[1:] if o.id != me]
        elif hops == 0:
            got, err, answered = await self._ask(self._rotate(owners, key, me), key, "fetch", 1)
            errors += err
            if got is not None:
                return self._done("owner", got)
            if answered == 0 and spare:
                got, err, _ans = await self._ask(spare, key, "fetch", 1)
                errors += err
                if got is not None:
                    return self._done("owner", got)
            rest = []
        else:
            rest = owners
        if rest:
            got, err, _ans = await self._ask(rest, key, "cached", hops + 1)
            errors += err
            if got is not None:
                return self._done("owner", got)
        previous = self.view.previous_owners(key, self.replicas, self.max_previous)
        if previous:
            got, err, _ans = await self._ask(previous, key, "cached", hops + 1)
            errors += err
            if got is not None:
                return self._done("previous", got)
        self._m_lookup["error" if errors else "miss"].inc()
        return None

    def placement(self, key: BlockKey) -> str:
        """Where to keep a block got from a peer: on SSD if this member owns it (it is now
        responsible for it: a previous owner's or the primary's copy), else per ``copy``."""
        me = self.view.self_id
        if me is not None and me in self.view.current.ring.owners(key, self.replicas):
            return "ssd"
        return self.copy

    def _done(self, result: str, data: Buffer) -> Buffer:
        self._m_lookup[result].inc()
        return data

    @staticmethod
    def _rotate(owners: list[Member], key: BlockKey, me: str | None) -> list[Member]:
        if len(owners) < 2:
            return owners
        start = (int(key.digest[:8], 16) ^ zlib.crc32((me or "").encode())) % len(owners)
        return owners[start:] + owners[:start]

    async def _ask(self, members: list[Member], key: BlockKey, mode: str, hops: int) -> tuple[Buffer | None, int, int]:
        """Ask ``members`` in order; return (block or None, failures, peers that answered)."""
        errors = answered = 0
        me = self.view.self_id
        for m in members:
            if m.id == me:
                continue
            breaker = self.breakers.get(m.id)
            if not breaker.allow():
                errors += 1
                continue
            self.breakers.export(m.id)
            t0 = time.perf_counter()
            self._m_inflight.inc()
            verdict = False
            try:
                data = await self.client.get(m, self.dataset, key, mode=mode, hops=hops)
                verdict = True
            except PeerError as exc:
                verdict = True
                errors += 1
                if exc.reason in _ALIVE:  # the peer answered: it is up, only busy or its source failed
                    breaker.success()
                    answered += 1
                else:
                    delay = breaker.failure(exc.reason)
                    self._note_failure(m, exc, delay)
                metrics.PEER_ERRORS.labels(self.dataset, "client", exc.reason).inc()
                self._m_req["get", "error"].inc()
                continue
            finally:
                self._m_inflight.dec()
                if not verdict:
                    breaker.abandon()  # cancelled: no verdict on this peer
                self._m_lat.observe(time.perf_counter() - t0)
                self.breakers.export(m.id)
            breaker.success()
            self.breakers.export(m.id)
            answered += 1
            if data is None:
                self._m_req["get", "miss"].inc()
                continue
            self._m_req["get", "ok"].inc()
            self._m_bytes.inc(len(data))
            return data, errors, answered
        return None, errors, answered

    def _note_failure(self, m: Member, exc: PeerError, delay: float) -> None:
        key = f"{m.id}:{exc.reason}"
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "dataset %s: peer %s (%s) failed: %s; skipping it for %.1f s (reads fall back to others or the source)",
                self.dataset, m.id, m.address, exc, delay,
            )  # fmt: skip
        else:
            log.debug("dataset %s: peer %s failed again: %s (backoff %.1f s)", self.dataset, m.id, exc, delay)

    def _membership_changed(self, view: MembershipView) -> None:
        known = set(view.current.by_id)
        for snap, _at in view.history:
            known.update(snap.by_id)
        self.breakers.retain(known)
        self._warned = {w for w in self._warned if w.split(":", 1)[0] in known}

    # ------------------------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        """Members, this member's share and the breaker states (for ``fluidfs status``)."""
        snap = self.view.current
        return {
            "self": self.view.self_id,
            "generation": snap.generation,
            "members": [
                {
                    "id": m.id,
                    "address": m.address,
                    "weight": m.weight,
                    "share": snap.ring.share(m.id),
                    "breaker": self.breakers.states().get(m.id, "closed"),
                }
                for m in snap.members
            ],
            "replicas": self.replicas,
            "copy": self.copy,
        }
