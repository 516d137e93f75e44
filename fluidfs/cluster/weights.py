"""Member weights the members announce: ask each member without a given weight for its ``/v1/info``.

A member's weight is its share of the keys (weight / total weight).  A peers-file line may give
it; EndpointSlices cannot, and a line may leave it out: then the member weighs what it announces
itself in ``/v1/info`` (``PeerSettings.weight``: by default its SSD quota in GiB, so a 1 TiB
worker owns ten times the keys of a 100 GiB node cache).  :class:`WeightLearner` asks every
member whose announced weight it does not know yet — at start, after every membership change,
and again every ``retry`` seconds while some member did not answer — and hands the answers to
:meth:`MembershipView.learn`, which applies them as one membership change.  Until a member
answers it weighs the median of the known weights (1 while none is known).

Every member asks the same members and gets the same answers, so the views agree once the
answers are in; meanwhile they may differ, which the peer tier tolerates (previous owners are
asked, fetches are forwarded at most twice).  A member is asked again when its address changes
(a restarted pod), not otherwise.

Caveats: a member that restarts at the same address with a different quota keeps its old weight
until its address changes or this member restarts.
"""

from __future__ import annotations

import logging
import math

import trio

from fluidfs.cluster.client import PeerClient
from fluidfs.cluster.membership import Member, MembershipView
from fluidfs.errors import PeerError

log = logging.getLogger(__name__)

__all__ = ["WeightLearner"]


class WeightLearner:
    """Keeps the announced weights of ``view``'s members current (run it in the member's nursery)."""

    def __init__(self, view: MembershipView, client: PeerClient, *, retry: float = 5.0, concurrency: int = 8) -> None:
        self.view = view
        self.client = client
        self.retry = retry
        self.limit = trio.CapacityLimiter(concurrency)
        self.asked = 0

    async def _ask(self, m: Member, got: dict[str, tuple[str, float]]) -> None:
        async with self.limit:
            self.asked += 1
            try:
                info = await self.client.info(m)
            except PeerError as exc:
                log.debug("dataset %s: weight of %s unknown yet: %s", self.view.dataset, m.id, exc)
                return
        weight = info.get("weight")
        if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0 and math.isfinite(weight):
            got[m.id] = (m.address, float(weight))
        else:  # an older member that announces nothing weighs 1
            got[m.id] = (m.address, 1.0)

    async def once(self) -> bool:
        """Ask every member whose weight is unknown; True if some are still unknown."""
        missing = self.view.unweighed()
        if not missing:
            return False
        got: dict[str, tuple[str, float]] = {}
        async with trio.open_nursery() as nursery:
            for m in missing:
                nursery.start_soon(self._ask, m, got)
        if got:
            self.view.learn(got)
        return len(got) < len(missing)

    async def run(self) -> None:
        """Until cancelled: ask after every membership change, retry those that did not answer."""
        while True:
            changed = self.view.changed
            pending = await self.once()
            with trio.move_on_after(self.retry if pending else math.inf):
                await changed.wait()
