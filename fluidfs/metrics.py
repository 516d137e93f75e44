"""All Prometheus metrics of fluidfs, and the loopback HTTP endpoint that serves them.

Names follow ``fluidfs_<subsystem>_<what>_<unit>``; labels are bounded: ``dataset`` (one per
mount process), ``tier`` (mem|ssd), ``kind`` (s3|http|local), ``op`` (a fixed set of
operation names) — never a path.

Caveats: one mount per process, so metrics live in the default registry; prometheus-client
serves them from its own small daemon thread (library-owned, no access to fluidfs state).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram

from fluidfs.util import prom

log = logging.getLogger(__name__)

_LAT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# --- cache tiers -------------------------------------------------------------------------
CACHE_HITS = Counter("fluidfs_cache_hits_total", "Block lookups served by a tier", ["dataset", "tier"])
CACHE_MISSES = Counter("fluidfs_cache_misses_total", "Block lookups a tier could not serve", ["dataset", "tier"])
CACHE_HIT_BYTES = Counter("fluidfs_cache_hit_bytes_total", "Bytes of blocks served by a tier", ["dataset", "tier"])
CACHE_EVICTIONS = Counter("fluidfs_cache_evictions_total", "Blocks evicted from a tier", ["dataset", "tier"])
CACHE_REJECTED = Counter(
    "fluidfs_cache_rejected_total", "Blocks a tier did not admit (full, policy, error)", ["dataset", "tier"]
)
CACHE_USED = Gauge("fluidfs_cache_used_bytes", "Bytes held by a tier", ["dataset", "tier"])
CACHE_QUOTA = Gauge("fluidfs_cache_quota_bytes", "Byte quota of a tier", ["dataset", "tier"])

# --- sources -----------------------------------------------------------------------------
SOURCE_REQUESTS = Counter("fluidfs_source_requests_total", "Requests sent to sources", ["dataset", "kind", "op"])
SOURCE_ERRORS = Counter("fluidfs_source_errors_total", "Source requests that failed", ["dataset", "kind", "op"])
SOURCE_TIMEOUTS = Counter(
    "fluidfs_source_timeouts_total",
    "Source requests that got no answer within the request timeout (or failed fast while the source was not answering)",
    ["dataset", "kind", "op"],
)
SOURCE_BYTES = Counter(
    "fluidfs_source_bytes_total",
    "Bytes received from sources (including bytes skipped or discarded)",
    ["dataset", "kind"],
)
SOURCE_LATENCY = Histogram(
    "fluidfs_source_request_duration_seconds",
    "Latency of source requests",
    ["dataset", "kind", "op"],
    buckets=_LAT_BUCKETS,
)

# --- FUSE operations ---------------------------------------------------------------------
FUSE_OPS = Counter("fluidfs_fuse_operations_total", "FUSE operations handled", ["dataset", "op"])
FUSE_ERRORS = Counter("fluidfs_fuse_errors_total", "FUSE operations answered with an error", ["dataset", "op", "errno"])
FUSE_LATENCY = Histogram(
    "fluidfs_fuse_operation_duration_seconds", "Latency of FUSE operations", ["dataset", "op"], buckets=_LAT_BUCKETS
)
FUSE_READ_BYTES = Counter("fluidfs_fuse_read_bytes_total", "Bytes returned to read() calls", ["dataset"])
# read stall: the autoscaler's signal that training waits on data (fluidfs/control/signals.py)
FUSE_READ_STALL = Counter(
    "fluidfs_fuse_read_stall_seconds_total",
    "Time read() requests waited on blocks no local tier held (fetched from a peer or the source)",
    ["dataset"],
)
FUSE_READ_STALLS = Counter(
    "fluidfs_fuse_read_stalls_total", "Blocks read() requests waited for because no local tier held them", ["dataset"]
)

# --- readahead ---------------------------------------------------------------------------
READAHEAD_ISSUED = Counter("fluidfs_readahead_issued_bytes_total", "Bytes prefetched by readahead", ["dataset"])
READAHEAD_USED = Counter("fluidfs_readahead_used_bytes_total", "Prefetched bytes later read", ["dataset"])
READAHEAD_WASTED = Counter(
    "fluidfs_readahead_wasted_bytes_total", "Prefetched bytes evicted or dropped unread", ["dataset"]
)

# --- metadata ----------------------------------------------------------------------------
META_HITS = Counter(
    "fluidfs_metadata_hits_total", "Lookups/listings answered from the metadata cache", ["dataset", "op"]
)
META_MISSES = Counter("fluidfs_metadata_misses_total", "Lookups/listings that went to the source", ["dataset", "op"])
# dataset size (the control plane's "cached %"): read from the namespace at scrape time
DATASET_SIZE = Gauge(
    "fluidfs_dataset_size_bytes",
    "Bytes of the regular files the mount has seen (the dataset's size once complete is 1)",
    ["dataset"],
)
DATASET_SIZE_COMPLETE = Gauge(
    "fluidfs_dataset_size_complete",
    "1 once every directory the mount has seen was listed: fluidfs_dataset_size_bytes is the dataset's size",
    ["dataset"],
)


# --- cluster peer tier (fluidfs/cluster) -------------------------------------------------
# ``side``: server (requests this member answered) | client (requests it sent); ``op``: get |
# head | put | info; ``result``: ok | miss | error; ``reason``: refused | timeout | bad_block | source |
# unauthorized | busy | protocol | not_found | error.  On the server side a request for a dataset
# this member does not serve is labelled dataset="-", so peers cannot create label values.
# ``peer`` is a member id: bounded by the cluster size (ids are validated: at most 63 of
# [A-Za-z0-9._-]) and removed when the member leaves the membership.
PEER_REQUESTS = Counter(
    "fluidfs_peer_requests_total",
    "Peer protocol requests by side, operation and result",
    ["dataset", "side", "op", "result"],
)
PEER_BYTES = Counter("fluidfs_peer_bytes_total", "Block bytes moved by the peer protocol", ["dataset", "side", "op"])
PEER_ERRORS = Counter(
    "fluidfs_peer_errors_total", "Failed peer requests by side and reason", ["dataset", "side", "reason"]
)
PEER_LATENCY = Histogram(
    "fluidfs_peer_request_duration_seconds",
    "Latency of peer protocol requests (whole block transfer)",
    ["dataset", "side", "op"],
    buckets=_LAT_BUCKETS,
)
PEER_LOOKUPS = Counter(
    "fluidfs_peer_lookups_total",
    "Local cache misses looked up in the peer tier, by outcome (owner|previous|miss|error|disabled)",
    ["dataset", "result"],
)
PEER_IN_FLIGHT = Gauge("fluidfs_peer_transfers_in_flight", "Peer block transfers in progress", ["dataset", "side"])
PEER_MEMBERS = Gauge("fluidfs_peer_members", "Members in the current cluster membership", ["dataset"])
PEER_MEMBERSHIP_CHANGES = Counter("fluidfs_peer_membership_changes_total", "Membership changes applied", ["dataset"])
PEER_OWNERSHIP = Gauge(
    "fluidfs_peer_ownership_share_ratio",
    "Expected share of block keys this member owns (weight / total weight)",
    ["dataset"],
)
PEER_HANDOFF_BLOCKS = Counter(
    "fluidfs_peer_handoff_blocks_total",
    "Blocks considered by a graceful-leave handoff (pushed|present|failed|unsent)",
    ["dataset", "result"],
)
PEER_HANDOFF_BYTES = Counter("fluidfs_peer_handoff_bytes_total", "Block bytes pushed by handoffs", ["dataset"])
PEER_REBALANCE_BLOCKS = Counter(
    "fluidfs_peer_rebalance_blocks_total",
    "Blocks a worker held but no longer owned after a membership change (moved|present|kept)",
    ["dataset", "result"],
)
PEER_BREAKER_STATE = Gauge(
    "fluidfs_peer_breaker_state", "Circuit breaker per peer: 0 closed, 1 half-open, 2 open", ["dataset", "peer"]
)


def serve(addr: str) -> tuple[str, int]:
    """Start the metrics endpoint on ``HOST:PORT`` (port 0 = any); return the bound address."""
    host, port = prom.serve(addr)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return host, port
