"""Leader election over a ``coordination.k8s.io/v1`` Lease, through the controller's adapter.

Several fluidfs-controller replicas may run (rolling updates, availability); only the holder
of the Lease reconciles.  :meth:`LeaderElector.acquire_or_renew` is called once per loop: it
takes a free or expired Lease, renews its own, and answers whether this replica leads.  Every
write is conditional on the ``resourceVersion`` read, so two replicas never both win.

Caveats: time is compared across replicas (``renewTime`` is wall-clock): clocks must agree to
within a fraction of the lease duration, as for client-go's election.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from fluidfs.control.adapter import KubeApi
from fluidfs.control.objects import micro_time
from fluidfs.errors import KubeApiError

log = logging.getLogger(__name__)


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


class LeaderElector:
    """Holds (or waits for) the Lease ``namespace/name`` as ``identity``."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = 15,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self._now = now
        self.leading = False

    def acquire_or_renew(self) -> bool:
        """Try once; True while this replica holds the Lease."""
        try:
            self.leading = self._try()
        except KubeApiError as exc:
            if exc.status != 409:
                log.warning("leader election: %s", exc)
            self.leading = False
        return self.leading

    def _try(self) -> bool:
        now = self._now()
        lease = self.api.get("Lease", self.namespace, self.name)
        if lease is None:
            self.api.create(
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, now, 0),
                }
            )
            log.info("leader election: %s took the new lease %s/%s", self.identity, self.namespace, self.name)
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = _parse_time(spec.get("renewTime"))
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = renewed is None or renewed + timedelta(seconds=duration) < now
        if holder and holder != self.identity and not expired:
            if self.leading:
                log.warning("leader election: lost the lease to %s", holder)
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        acquired = _parse_time(spec.get("acquireTime")) if holder == self.identity else None
        if holder != self.identity:
            transitions += 1
            log.info("leader election: %s takes the lease from %r", self.identity, holder)
        new = {**lease, "spec": self._spec(acquired or now, now, transitions)}
        self.api.replace(new)
        return True

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": micro_time(acquired),
            "renewTime": micro_time(renewed),
            "leaseTransitions": transitions,
        }

    def release(self) -> None:
        """Give the Lease up on a clean shutdown, so another replica takes over at once."""
        if not self.leading:
            return
        try:
            lease = self.api.get("Lease", self.namespace, self.name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**lease["spec"], "holderIdentity": "", "renewTime": micro_time(self._now() - timedelta(days=1))}
                self.api.replace({**lease, "spec": spec})
        except KubeApiError as exc:
            log.warning("leader election: could not release the lease: %s", exc)
        self.leading = False
