"""The settings table of a mount: ``MountConfig``, one field per setting, each declared once with every surface.

Each field is a row (:func:`fluidfs.config.table.setting`): default, kind (type, parsing and
range), help, unit, command-line flag and the commands that take it, Dataset field, CSI volume
attribute.  The CLI options, the Dataset's ``spec.cache`` / ``spec.metadata`` /
``spec.permissions`` fields, the CSI attributes and ``docs/configuration.md`` are all derived
from this class.  :func:`build_config` merges the layers (defaults <- Dataset <- command line)
and validates once: every value against its row, then the rules that span several settings.

Adding a setting is one entry here, e.g. the peer tier's copy policy, which ``fluidfs mount`` and
``fluidfs worker`` take, a Dataset can set and a CSI volume attribute passes on::

    peer_copy: str = setting("memory", choice("memory", "ssd", "none"), "where a member keeps a block ...",
                             group="cluster", cli="--peer-copy", commands=("mount", "worker"),
                             dataset="spec.cluster.peerCopy", csi="peerCopy")

(plus a new group in ``GROUPS`` if needed).  Then read it where it is used: ``cfg.peer_copy``.

Caveats: values are validated here; everything downstream trusts them.  A setting without any
surface (``prefetch_memory``, ``source_threads``) is a tuning constant that
still has one declaration and one row in the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fluidfs.config.kinds import (
    address,
    choice,
    count,
    duration,
    ident,
    label,
    mode,
    path,
    service,
    short_size,
    size,
    switch,
    weight,
)
from fluidfs.config.table import CACHE_COMMANDS, MOUNT_AND_WORKER, Setting, rows, setting
from fluidfs.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: default block size: large enough that one GET amortises request latency (a 20 ms RTT at
#: 0.5 GB/s moves ~10 MiB), small enough that a random 4 KiB read does not fetch too much.
DEFAULT_BLOCK_SIZE = 4 * MiB
MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 64 * MiB
#: seconds one source operation (a stat, a listing page, a block read) may take, retries included
DEFAULT_REQUEST_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class MountConfig:
    """Everything a running mount needs to know besides the Dataset itself: the settings table."""

    # -- cache
    cache_dir: str | None = setting(
        None,
        path(optional=True),
        "SSD tier directory; unset: memory tier only",
        group="cache",
        cli="--cache-dir",
        commands=CACHE_COMMANDS,
        dataset="spec.cache.directory",
    )
    cache_size: int = setting(
        10 * GiB,
        size(),
        "SSD tier quota",
        group="cache",
        unit="bytes",
        cli="--cache-size",
        commands=CACHE_COMMANDS,
        dataset="spec.cache.size",
        csi="cacheSize",
    )
    memory_size: int = setting(
        512 * MiB,
        size(),
        "memory tier quota (at least two blocks)",
        group="cache",
        unit="bytes",
        cli="--memory-size",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cache.memorySize",
        csi="memorySize",
    )
    block_size: int = setting(
        DEFAULT_BLOCK_SIZE,
        size(MIN_BLOCK_SIZE, MAX_BLOCK_SIZE),
        "cache block size; load and mount of one cache directory must agree",
        group="cache",
        unit="bytes",
        cli="--block-size",
        commands=CACHE_COMMANDS,
        dataset="spec.cache.blockSize",
        csi="blockSize",
    )
    eviction: str = setting(
        "none",
        choice("lru", "none"),
        "SSD tier policy when full: none keeps what it holds (best for shuffled epochs over a dataset larger "
        "than the cache), lru evicts the least recently used block",
        group="cache",
        cli="--eviction",
        commands=CACHE_COMMANDS,
        dataset="spec.cache.eviction",
        csi="eviction",
    )
    free_space_floor: int = setting(
        1 * GiB,
        size(),
        "never fill the cache disk below this much free space",
        group="cache",
        unit="bytes",
        cli="--free-space-floor",
        commands=CACHE_COMMANDS,
        dataset="spec.cache.freeSpaceFloor",
    )
    # -- readahead
    readahead: int = setting(
        32 * MiB,
        size(),
        "largest per-file readahead window",
        group="cache",
        unit="bytes",
        cli="--readahead",
        dataset="spec.cache.readahead",
    )
    prefetch_memory: int = setting(
        128 * MiB,
        size(),
        "at most this much of the in-flight memory goes to readahead, all files together",
        group="cache",
        unit="bytes",
    )
    inflight_memory: int = setting(
        0,
        size(),
        "bytes of blocks in flight (being fetched or read from the SSD tier, read ahead and not read yet, "
        "waiting for their SSD write); with the memory tier this bounds the daemon's memory; "
        "0: half the memory size, at least 4 blocks, at most 256Mi",
        group="cache",
        unit="bytes",
        cli="--inflight-memory",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cache.inflightMemory",
        csi="inflightMemory",
    )
    sibling_prefetch: int = setting(
        16,
        count(),
        "small files of the same directory prefetched per small-file open (0 disables)",
        group="cache",
        unit="files",
        cli="--prefetch-siblings",
        dataset="spec.cache.prefetchSiblings",
    )
    # -- metadata
    metadata_ttl: float = setting(
        60.0,
        duration(),
        "how long attributes and listings are cached (also the kernel's entry/attr timeout); "
        "indefinite: until a refresh (immutable datasets)",
        group="metadata",
        unit="seconds",
        cli="--metadata-ttl",
        dataset="spec.metadata.ttl",
        csi="metadataTTL",
    )
    negative_ttl: float = setting(
        10.0,
        duration(),
        "how long 'no such file' answers are cached",
        group="metadata",
        unit="seconds",
        cli="--negative-ttl",
        dataset="spec.metadata.negativeTtl",
    )
    # -- POSIX presentation
    uid: int = setting(
        0,
        ident(),
        "owner of every file and directory",
        group="permissions",
        cli="--uid",
        dataset="spec.permissions.uid",
        csi="uid",
    )
    gid: int = setting(
        0,
        ident(),
        "group of every file and directory",
        group="permissions",
        cli="--gid",
        dataset="spec.permissions.gid",
        csi="gid",
    )
    file_mode: int = setting(
        0o444,
        mode(),
        "permission bits of files",
        group="permissions",
        cli="--file-mode",
        dataset="spec.permissions.fileMode",
        csi="fileMode",
    )
    dir_mode: int = setting(
        0o555,
        mode(),
        "permission bits of directories",
        group="permissions",
        cli="--dir-mode",
        dataset="spec.permissions.dirMode",
        csi="dirMode",
    )
    allow_other: bool = setting(
        False, switch(), "let other users access the mount", group="permissions", cli="--allow-other"
    )
    # -- sources
    source_threads: int = setting(32, count(1), "worker threads talking to sources", group="sources")
    # -- cluster cache (fluidfs/cluster; docs/cluster.md)
    peer_listen: str | None = setting(
        None,
        address(),
        "serve this member's blocks to its peers on HOST:PORT (loopback unless told otherwise; a wildcard host "
        "needs --member-id); with --peers or --kube-service it joins the dataset's cluster",
        group="cluster",
        cli="--listen",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.listen",
    )
    peers_file: str | None = setting(
        None,
        path(optional=True),
        "static membership: a file of 'ID HOST:PORT [WEIGHT]' lines, re-read when it changes",
        group="cluster",
        cli="--peers",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.peersFile",
    )
    kube_service: str | None = setting(
        None,
        service(),
        "Kubernetes membership: the ready endpoints of this headless Service's EndpointSlices",
        group="cluster",
        cli="--kube-service",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.kubeService",
        csi="clusterService",
    )
    kube_port_name: str | None = setting(
        "peer",
        label(),
        "the Service port that members listen on (with --kube-service)",
        group="cluster",
        cli="--kube-port-name",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.portName",
    )
    peer_secret_file: str | None = setting(
        None,
        path(optional=True),
        "file holding the cluster secret (at least 16 bytes; every member has the same); unset: $FLUIDFS_PEER_SECRET",
        group="cluster",
        cli="--peer-secret-file",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.secretFile",
    )
    member_id: str | None = setting(
        None,
        label(optional=True),
        "this member's id in the member set; unset: the member whose address is --listen",
        group="cluster",
        cli="--member-id",
        commands=MOUNT_AND_WORKER,
    )
    peer_weight: float | None = setting(
        None,
        weight(),
        "this member's share of the blocks, relative to the others' (announced to the members that have no "
        "weight for it); auto: its cache capacity in GiB (the SSD quota, or the memory tier without one)",
        group="cluster",
        cli="--weight",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.weight",
    )
    replicas: int = setting(
        1,
        count(1, 8),
        "owners per block: readers spread over them, and a block survives the loss of replicas-1 owners "
        "(the same on every member)",
        group="cluster",
        cli="--replicas",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.replicas",
        csi="clusterReplicas",
    )
    peer_copy: str = setting(
        "memory",
        choice("memory", "ssd", "none"),
        "where a member keeps a block it got from a peer and does not own",
        group="cluster",
        cli="--peer-copy",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.peerCopy",
        csi="peerCopy",
    )
    handoff_timeout: float = setting(
        30.0,
        duration(indefinite=False, positive=True),
        "on SIGTERM, time to hand this member's blocks to their next owners before it stops",
        group="cluster",
        unit="seconds",
        cli="--handoff-timeout",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.handoffTimeout",
    )
    peer_connect_timeout: float = setting(
        1.0,
        duration(indefinite=False, positive=True),
        "connecting to a peer",
        group="cluster",
        unit="seconds",
        cli="--peer-connect-timeout",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.connectTimeout",
    )
    peer_read_timeout: float = setting(
        5.0,
        duration(indefinite=False, positive=True),
        "each read of a block from a peer, and a lookup of a cached block",
        group="cluster",
        unit="seconds",
        cli="--peer-read-timeout",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.readTimeout",
    )
    peer_fetch_timeout: float = setting(
        15.0,
        duration(indefinite=False, positive=True),
        "an owner fetching a block from its source for a peer",
        group="cluster",
        unit="seconds",
        cli="--peer-fetch-timeout",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.fetchTimeout",
    )
    peer_transfers: int = setting(
        16,
        count(1, 1024),
        "block transfers served at once, and requested at once",
        group="cluster",
        cli="--peer-transfers",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.transfers",
    )
    peer_max_skew: float = setting(
        30.0,
        duration(indefinite=False, positive=True),
        "largest clock difference between members (requests are signed with the time)",
        group="cluster",
        unit="seconds",
        cli="--peer-max-skew",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cluster.maxSkew",
    )
    # -- observability
    metrics_addr: str | None = setting(
        "127.0.0.1:0",
        address(),
        "Prometheus endpoint (port 0: any free port); none disables",
        group="process",
        cli="--metrics-addr",
        commands=MOUNT_AND_WORKER,
        dataset="spec.cache.metricsAddr",
    )
    request_timeout: float = setting(
        DEFAULT_REQUEST_TIMEOUT,
        duration(indefinite=False),
        "every source operation (a stat, a listing page, a block read), retries included, is over within this "
        "time; past it the reader gets EIO",
        group="sources",
        unit="seconds",
        cli="--request-timeout",
        commands=CACHE_COMMANDS,
        dataset="spec.sources.requestTimeout",
        csi="requestTimeout",
    )

    @property
    def clustered(self) -> bool:
        """Whether this member joins a cluster (a membership is configured; validation ensures --listen)."""
        return bool(self.peers_file or self.kube_service)

    @property
    def inflight_bytes(self) -> int:
        """Bytes of blocks in flight, all files together (``inflight_memory`` or its default)."""
        if self.inflight_memory:
            return self.inflight_memory
        return max(4 * self.block_size, min(self.memory_size // 2, 256 * MiB))

    @property
    def prefetch_bytes(self) -> int:
        """The readahead's share of ``inflight_bytes`` (blocks in flight or held until read)."""
        return min(self.prefetch_memory, self.inflight_bytes // 2)

    @property
    def fetch_slots(self) -> int:
        """Blocks that demand reads may load at once: the rest of ``inflight_bytes``."""
        return max(2, (self.inflight_bytes - self.prefetch_bytes) // self.block_size)

    @property
    def kernel_timeout(self) -> float:
        """Kernel entry/attr cache timeout, taken from the metadata TTL (capped at a day)."""
        return min(self.metadata_ttl, 86400.0)


#: the table: one row per MountConfig field, in declaration order
SETTINGS: tuple[Setting, ...] = rows(MountConfig)
_BY_NAME = {row.name: row for row in SETTINGS}


def validate(cfg: MountConfig) -> MountConfig:
    """Check every value against its row, then the rules across settings; ConfigError with one line."""
    for row in SETTINGS:
        try:
            row.parse(getattr(cfg, row.name))
        except ValueError as exc:
            raise ConfigError(f"{row.name}: {exc}") from None
    if cfg.memory_size < cfg.block_size * 2:
        raise ConfigError(
            f"memory size {short_size(cfg.memory_size)} must hold at least two blocks of {short_size(cfg.block_size)}"
        )
    if cfg.peers_file and cfg.kube_service:
        raise ConfigError(
            "the cluster's members come from a peers file or a Kubernetes Service, not both (--peers, --kube-service)"
        )
    if (cfg.peers_file or cfg.kube_service) and not cfg.peer_listen:
        raise ConfigError("joining a cluster needs this member's peer address (--listen HOST:PORT)")
    if cfg.peer_listen and not (cfg.peers_file or cfg.kube_service):
        raise ConfigError("--listen needs the cluster's members: --peers FILE or --kube-service NAMESPACE/NAME")
    if cfg.inflight_memory and cfg.inflight_memory < 2 * cfg.block_size:
        raise ConfigError(
            f"in-flight memory {short_size(cfg.inflight_memory)} must hold at least two blocks of "
            f"{short_size(cfg.block_size)}"
        )
    if cfg.request_timeout <= 0:
        raise ConfigError(f"request timeout must be a positive number of seconds, got {cfg.request_timeout}")
    return cfg


def build_config(*layers: Mapping[str, Any]) -> MountConfig:
    """Defaults <- each layer in turn (``{setting name: typed value}``; a later layer wins), validated.

    Typically ``build_config(dataset.settings, cli_overrides(args))``.
    """
    values: dict[str, Any] = {}
    for layer in layers:
        for name, value in layer.items():
            if name not in _BY_NAME:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = value
    return validate(MountConfig(**values))
