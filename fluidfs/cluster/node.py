"""PeerNode: one member of a dataset's cluster cache — settings, membership, server, peer tier.

This is what the mount daemon and the ``fluidfs worker`` command wire in::

    settings = PeerSettings(listen="10.0.0.5:7070", peers_file="/etc/fluidfs/peers")  # validated
    provider = CacheBlockProvider(dataset.name, cache, [m.source for m in mounts], block_size=cfg.block_size)
    node = PeerNode(dataset.name, settings, cache, provider)   # reads secret + peers file: ConfigError
    ...                                                        # inside trio:
    address = await nursery.start(node.run)                    # serving; cache now asks peers
    ...                                                        # (a worker, rebalance=True: blocks it no
    ...                                                        #  longer owns move to their owners)
    ...                                                        # on SIGTERM / scale-in:
    report = await node.leave()                                # hand blocks over (bounded)
    nursery.cancel_scope.cancel()                              # stops server and membership

Membership comes from exactly one of a static peers file (``peers_file``, polled) or Kubernetes
discovery (``kube_service`` = ``NAMESPACE/SERVICE``, EndpointSlices watched in a worker thread).

Caveats: one dataset per node (the server could serve several; the daemon has one).  The
secret is read once at construction; rotating it needs a restart of every member.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import trio

from fluidfs.cache.tiered import TieredCache
from fluidfs.cluster.auth import PeerAuth, load_secret
from fluidfs.cluster.client import PeerClient
from fluidfs.cluster.handoff import HandoffReport, handoff, ssd_block_keys
from fluidfs.cluster.kubediscovery import EndpointSliceAPI, KubeEndpointSliceAPI, KubernetesDiscovery
from fluidfs.cluster.membership import Member, MembershipView, PeersFileWatcher, parse_address
from fluidfs.cluster.peertier import COPY_POLICIES, PeerTier
from fluidfs.cluster.protocol import BlockProvider
from fluidfs.cluster.rebalance import Rebalancer
from fluidfs.cluster.server import PeerServer
from fluidfs.cluster.weights import WeightLearner
from fluidfs.errors import ConfigError, PeerError

log = logging.getLogger(__name__)

__all__ = ["PeerSettings", "PeerNode", "validate_settings"]


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Every setting of the peer tier (CLI flags, Dataset fields and chart values map onto these)."""

    listen: str  # HOST:PORT of this member's peer server (loopback unless told otherwise)
    peers_file: str | None = None  # static membership: 'ID HOST:PORT [WEIGHT]' per line
    kube_service: str | None = None  # Kubernetes discovery: NAMESPACE/SERVICE (headless)
    kube_port_name: str = "peer"  # the Service port that peer servers listen on
    member_id: str | None = None  # this member's id (default: found by its listen address)
    secret_file: str | None = None  # cluster secret file (default: $FLUIDFS_PEER_SECRET)
    replicas: int = 1  # owners per block
    peer_copy: str = "memory"  # where a reader keeps a block from a peer: memory | ssd | none
    connect_timeout: float = 1.0  # seconds to connect to a peer
    read_timeout: float = 5.0  # seconds per read of a block body or a cached lookup
    fetch_timeout: float = 15.0  # seconds an owner may take to fetch a block from its source
    server_transfers: int = 16  # block transfers served at once
    client_transfers: int = 16  # block transfers requested at once (worker threads)
    max_skew: float = 30.0  # allowed clock difference between members, seconds
    handoff_timeout: float = 30.0  # graceful leave: seconds to hand blocks over
    poll_interval: float = 2.0  # peers file: seconds between checks
    breaker_base: float = 0.5  # first backoff after a peer failed, seconds (doubles, capped)
    breaker_cap: float = 30.0
    history_size: int = 4  # previous member sets remembered (previous-owner lookups)
    history_ttl: float = 3600.0  # ... for at most this many seconds
    weight: float | None = None  # announced in /v1/info: members without a given weight weigh it


def validate_settings(s: PeerSettings) -> PeerSettings:
    """Check the settings; raise ConfigError with a one-line message."""
    try:
        parse_address(s.listen, any_port=True)
    except ValueError as exc:
        raise ConfigError(f"peer listen address: {exc}") from None
    if (s.peers_file is None) == (s.kube_service is None):
        raise ConfigError("the cluster needs exactly one membership source: a peers file or a Kubernetes service")
    if s.kube_service is not None:
        ns, sep, svc = s.kube_service.partition("/")
        if not sep or not ns or not svc:
            raise ConfigError(f"Kubernetes service must be NAMESPACE/SERVICE, got {s.kube_service!r}")
    if not 1 <= s.replicas <= 8:
        raise ConfigError(f"replicas must be between 1 and 8, got {s.replicas}")
    if s.peer_copy not in COPY_POLICIES:
        raise ConfigError(f"peer copy must be one of {', '.join(COPY_POLICIES)}, got {s.peer_copy!r}")
    for name in (
        "connect_timeout", "read_timeout", "fetch_timeout", "max_skew", "handoff_timeout", "poll_interval",
        "breaker_base", "breaker_cap", "history_ttl",
    ):  # fmt: skip
        v = getattr(s, name)
        if not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"peer setting {name} must be a positive number of seconds, got {v!r}")
    for name in ("server_transfers", "client_transfers", "history_size"):
        if getattr(s, name) < 1:
            raise ConfigError(f"peer setting {name} must be at least 1, got {getattr(s, name)}")
    if s.weight is not None and not (s.weight > 0 and math.isfinite(s.weight)):
        raise ConfigError(f"peer weight must be a positive number, got {s.weight!r}")
    return s


class PeerNode:
    """One member's peer machinery for one dataset (see the module docstring for the life cycle)."""

    def __init__(
        self,
        dataset: str,
        settings: PeerSettings,
        cache: TieredCache,
        provider: BlockProvider,
        *,
        secret: bytes | None = None,
        discovery_api: EndpointSliceAPI | None = None,
        rebalance: bool = False,
    ) -> None:
        self.settings = s = validate_settings(settings)
        self.dataset = dataset
        self.cache = cache
        self.view = MembershipView(
            dataset, self_id=s.member_id, listen=s.listen, history_size=s.history_size, history_ttl=s.history_ttl
        )
        self.watcher: PeersFileWatcher | None = None
        self.discovery: KubernetesDiscovery | None = None
        if s.peers_file is not None:
            self.watcher = PeersFileWatcher(s.peers_file, self.view, poll_interval=s.poll_interval)
            self.watcher.load()  # a bad file is a start-up error
        else:
            assert s.kube_service is not None
            ns, _, svc = s.kube_service.partition("/")
            self.discovery = KubernetesDiscovery(
                discovery_api or KubeEndpointSliceAPI(ns, svc, s.kube_port_name), self.view
            )
        self.auth = PeerAuth(
            secret if secret is not None else load_secret(s.secret_file),
            member_id=s.member_id or self.view.self_id or s.listen,
            max_skew=s.max_skew,
        )
        self.client_limiter = trio.CapacityLimiter(s.client_transfers)
        self.client = PeerClient(
            self.auth,
            limiter=self.client_limiter,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            fetch_timeout=s.fetch_timeout,
        )
        self.tier = PeerTier(
            self.view, self.client, dataset, replicas=s.replicas, copy=s.peer_copy,
            breaker_base=s.breaker_base, breaker_cap=s.breaker_cap,
        )  # fmt: skip
        self.server = PeerServer(
            {dataset: provider},
            self.auth,
            listen=s.listen,
            max_transfers=s.server_transfers,
            fetch_timeout=s.fetch_timeout + s.read_timeout,
            status=self.status_document,
            weight=s.weight,
        )
        self.learner = WeightLearner(self.view, self.client)
        self.address: str | None = None
        directory = getattr(cache.ssd, "directory", None)
        self.rebalancer: Rebalancer | None = None
        if rebalance and isinstance(directory, str):
            self.rebalancer = Rebalancer(self.tier, cache, directory, settle=2 * s.poll_interval + 1.0)

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve peers, follow the membership and let the cache ask peers, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self.address = await nursery.start(self.server.serve)
                if self.watcher is not None:
                    nursery.start_soon(self.watcher.run)
                if self.discovery is not None:
                    nursery.start_soon(self.discovery.run)
                nursery.start_soon(self.learner.run)
                if self.rebalancer is not None:
                    nursery.start_soon(self.rebalancer.run)
                self.cache.attach_peer(self.tier)
                task_status.started(self.address)
        finally:
            self.cache.attach_peer(None)
            self.client.close()

    async def leave(self, timeout: float | None = None) -> HandoffReport:
        """Hand this member's blocks to their next owners (bounded by ``handoff_timeout``).

        Call before stopping ``run``: the server keeps serving during the handoff.
        """
        deadline = trio.current_time() + (timeout if timeout is not None else self.settings.handoff_timeout)
        directory = getattr(self.cache.ssd, "directory", None)
        keys = []
        if isinstance(directory, str) and os.path.isdir(directory):
            with trio.move_on_at(deadline):
                keys = await trio.to_thread.run_sync(ssd_block_keys, directory, limiter=self.client_limiter)
        return await handoff(self.tier, self.cache, keys, deadline)

    async def survey(self) -> list[dict[str, object]]:
        """Every current member's health and ``/v1/info`` (bytes held), asked concurrently."""
        members = list(self.view.current.members)
        out: list[dict[str, object]] = [{} for _ in members]

        async def one(i: int, m: Member) -> None:
            row: dict[str, object] = {"id": m.id, "address": m.address, "self": m.id == self.view.self_id}
            try:
                row.update(health="up", info=await self.client.info(m))
            except PeerError as exc:
                row.update(health="down", error=str(exc))
            out[i] = row

        async with trio.open_nursery() as nursery:
            for i, m in enumerate(members):
                nursery.start_soon(one, i, m)
        return out

    def status(self) -> dict[str, object]:
        """Membership, breakers and this member's address (for ``fluidfs status`` / the runtime record)."""
        out = self.tier.status()
        out["address"] = self.address
        return out

    async def status_document(self) -> dict[str, object]:
        """What ``GET /v1/status`` answers: this member's view and every member's ``/v1/info``."""
        return {"dataset": self.dataset, "view": self.status(), "survey": await self.survey()}
