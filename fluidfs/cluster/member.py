"""Joining a dataset's cluster from the settings table: the PeerNode of a mount or a worker.

:func:`peer_settings` maps the ``cluster`` rows of :class:`~fluidfs.config.MountConfig`
(``--listen``, ``--peers``, ``--kube-service``, ``--peer-secret-file``, ...) onto
:class:`~fluidfs.cluster.node.PeerSettings`; :func:`join` builds the member — the block
provider over the dataset's sources (in mount order) and the :class:`PeerNode` — or returns
None when the configuration names no cluster.  The mount daemon and ``fluidfs worker`` call it
before ``trio.run``: the secret and the peers file are read there, so their mistakes are
start-up errors (ConfigError, exit 2) and never a half-started member.

Caveats: one setting (``peer_transfers``) bounds both the transfers served and those
requested; the tuning constants of :class:`PeerSettings` without a row (breaker backoff,
history, peers-file polling) keep their defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

from fluidfs.cache.tiered import TieredCache
from fluidfs.cluster.node import PeerNode, PeerSettings
from fluidfs.cluster.provider import CacheBlockProvider, ObjectReader
from fluidfs.config import GiB, MountConfig

__all__ = ["announced_weight", "join", "peer_settings"]


def peer_settings(cfg: MountConfig) -> PeerSettings | None:
    """The peer tier's settings of ``cfg``; None when it joins no cluster."""
    if not cfg.clustered or cfg.peer_listen is None:
        return None
    return PeerSettings(
        listen=cfg.peer_listen,
        peers_file=cfg.peers_file,
        kube_service=cfg.kube_service,
        kube_port_name=cfg.kube_port_name or "peer",
        member_id=cfg.member_id,
        secret_file=cfg.peer_secret_file,
        replicas=cfg.replicas,
        peer_copy=cfg.peer_copy,
        connect_timeout=cfg.peer_connect_timeout,
        read_timeout=cfg.peer_read_timeout,
        fetch_timeout=cfg.peer_fetch_timeout,
        server_transfers=cfg.peer_transfers,
        client_transfers=cfg.peer_transfers,
        max_skew=cfg.peer_max_skew,
        handoff_timeout=cfg.handoff_timeout,
        weight=announced_weight(cfg),
    )


def announced_weight(cfg: MountConfig) -> float:
    """This member's weight: ``peer_weight``, else its cache capacity in GiB (SSD quota, or memory)."""
    if cfg.peer_weight is not None:
        return cfg.peer_weight
    capacity = cfg.cache_size if cfg.cache_dir else cfg.memory_size
    return max(capacity / GiB, 1e-3)


def join(
    dataset: str, cfg: MountConfig, cache: TieredCache, sources: Sequence[ObjectReader], *, worker: bool = False
) -> PeerNode | None:
    """The member of ``dataset``'s cluster that ``cfg`` describes, not yet running; None without a cluster.

    ``worker``: a cache worker (no local readers), which moves the blocks it no longer owns to
    their owners after membership changes (see :mod:`fluidfs.cluster.rebalance`).

    Raises ConfigError (one line) for a bad peers file, a missing or short secret, a bad listen
    address, or Kubernetes discovery without the ``kubernetes`` package.
    """
    settings = peer_settings(cfg)
    if settings is None:
        return None
    provider = CacheBlockProvider(dataset, cache, sources, block_size=cfg.block_size)
    return PeerNode(dataset, settings, cache, provider, rebalance=worker)
