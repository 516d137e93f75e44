"""Circuit breakers: stop asking a peer that failed, and retry it after an exponential backoff.

A breaker is *closed* (requests flow) until a request fails (refused, timed out, bad block,
unauthorized, protocol error); it then *opens* for ``base * 2**(failures-1)`` seconds (capped at
``cap``, ±20 % jitter so that members do not retry in lock-step).  When that time has passed the
next request is a single *half-open* trial: success closes the breaker, failure reopens it
with a doubled backoff.  A 404 (the peer does not have the block) or a 503 (busy) is not a
failure.  One breaker per peer, keyed by member id; the state is exported as
``fluidfs_peer_breaker_state`` (0 closed, 1 half-open, 2 open).

Caveats: a breaker sees only this member's requests; it is not shared across the cluster.  A
half-open trial that is cancelled (the reader went away) counts as neither success nor failure
and lets the next request try.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

from fluidfs import metrics

__all__ = ["Breaker", "Breakers", "CLOSED", "HALF_OPEN", "OPEN"]

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
_NAMES = {CLOSED: "closed", HALF_OPEN: "half-open", OPEN: "open"}


class Breaker:
    """The breaker of one peer (used from the trio thread only)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.base = base
        self.cap = cap
        self._clock = clock
        self.state = CLOSED
        self.failures = 0  # consecutive
        self.retry_at = 0.0
        self._trial = False
        self.last_reason = ""

    @property
    def name(self) -> str:
        return _NAMES[self.state]

    def allow(self) -> bool:
        """May a request go to this peer now?  (Moves open → half-open when the backoff is over.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._clock() >= self.retry_at:
            self.state = HALF_OPEN
            self._trial = False
        if self.state == HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self.state = CLOSED
        self.failures = 0
        self._trial = False

    def failure(self, reason: str) -> float:
        """Open (again); return the backoff in seconds.

        Requests that were already in flight when the breaker opened fail together (a peer
        that died fails all of them): those do not lengthen the backoff again."""
        if self.state == OPEN:
            return max(0.0, self.retry_at - self._clock())
        self.failures += 1
        self.last_reason = reason
        delay: float = min(self.cap, self.base * float(2 ** min(self.failures - 1, 30)))
        delay *= random.uniform(0.8, 1.2)
        self.state = OPEN
        self.retry_at = self._clock() + delay
        self._trial = False
        return delay

    def abandon(self) -> None:
        """A half-open trial ended without a verdict (cancelled): let the next request try."""
        self._trial = False


class Breakers:
    """The breakers of all known peers of one dataset, exported as metrics."""

    def __init__(self, dataset: str, base: float = 0.5, cap: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.dataset = dataset
        self.base = base
        self.cap = cap
        self._clock = clock
        self._by_id: dict[str, Breaker] = {}

    def get(self, member_id: str) -> Breaker:
        b = self._by_id.get(member_id)
        if b is None:
            b = self._by_id[member_id] = Breaker(self.base, self.cap, clock=self._clock)
            self.export(member_id)
        return b

    def export(self, member_id: str) -> None:
        b = self._by_id.get(member_id)
        if b is not None:
            metrics.PEER_BREAKER_STATE.labels(self.dataset, member_id).set(b.state)

    def states(self) -> dict[str, str]:
        return {i: b.name for i, b in sorted(self._by_id.items())}

    def retain(self, member_ids: Iterable[str]) -> None:
        """Forget breakers (and their metric series) of members no longer known."""
        keep = set(member_ids)
        for mid in list(self._by_id):
            if mid not in keep:
                del self._by_id[mid]
                try:
                    metrics.PEER_BREAKER_STATE.remove(self.dataset, mid)
                except KeyError:
                    pass
