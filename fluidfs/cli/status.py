"""``fluidfs status MOUNTPOINT [PATH ...] [--json]``: what a running mount is, holds and did.

Everything comes from three places: the mount's runtime record (pid, dataset, sources,
configuration, metrics URL; :mod:`fluidfs.daemon.record`), its Prometheus endpoint (tier
used/quota, hits and misses, source bytes and requests, readahead), and the mounted tree itself:
for "% cached" every regular file under the given PATHs is visited and its
``user.fluidfs.cached`` xattr (fraction of its blocks held by any tier) is weighted by its size
(:mod:`fluidfs.warmup.mounted`).

Hit ratios are since the mount started: per tier ``hits / (hits + misses)``; overall
``(mem hits + ssd hits) / (mem hits + mem misses)`` (every block lookup starts at the MEM tier).

The mount is found through the mount table (never touching it); before the walk, one
``statvfs`` checks that it answers within :data:`PROBE_TIMEOUT` seconds, so a mount whose daemon
is stopped or hangs gives one line (exit 1) instead of a hang.

When the mount is a member of a cluster cache (it exports the peer tier's metrics), a
``cluster`` line gives the members it sees and its share of the blocks; with ``--controller
URL`` (fluidfs-controller's metrics endpoint) a ``workers`` line gives the dataset's cache
workers and what the autoscaler recommends (``kubectl describe dataset`` says why).  The
dataset's size is the one the mount has seen (``fluidfs_dataset_size_bytes``): complete once
every directory was listed, else a lower bound.

Caveats: the "% cached" walk costs one ``getxattr`` (a FUSE round trip) per file, done by 16
threads; on millions of files give a PATH.  Files that are partly cached count with their
fraction.  Without a metrics endpoint (``--metrics-addr none``) tier usage of the SSD tier is
read from the cache directory and hit ratios are unknown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from fluidfs.cache.ssd import SSDTier
from fluidfs.cli.options import intermixed
from fluidfs.daemon.record import require_mount
from fluidfs.errors import MountError
from fluidfs.util.mounts import answers
from fluidfs.util.proc import process_uptime, state
from fluidfs.util.prom import Sample, fetch_samples, total
from fluidfs.util.sizes import format_duration, format_size
from fluidfs.warmup.mounted import cached_summary, resolve_paths

log = logging.getLogger(__name__)

#: seconds a mount may take to answer one statvfs before status gives up on it
PROBE_TIMEOUT = 5.0


def _ratio(hits: float, misses: float) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def metrics_summary(samples: list[Sample]) -> dict[str, Any]:
    tiers: dict[str, Any] = {}
    for t in ("mem", "ssd"):
        hits = total(samples, "fluidfs_cache_hits_total", tier=t)
        misses = total(samples, "fluidfs_cache_misses_total", tier=t)
        tiers[t] = {
            "used_bytes": int(total(samples, "fluidfs_cache_used_bytes", tier=t)),
            "quota_bytes": int(total(samples, "fluidfs_cache_quota_bytes", tier=t)),
            "hits": int(hits),
            "misses": int(misses),
            "hit_bytes": int(total(samples, "fluidfs_cache_hit_bytes_total", tier=t)),
            "evictions": int(total(samples, "fluidfs_cache_evictions_total", tier=t)),
            "hit_ratio": _ratio(hits, misses),
        }
    mem_hits, mem_misses = tiers["mem"]["hits"], tiers["mem"]["misses"]
    overall = (mem_hits + tiers["ssd"]["hits"]) / (mem_hits + mem_misses) if mem_hits + mem_misses else None
    ops = sorted({s.labels.get("op", "") for s in samples if s.name == "fluidfs_source_requests_total"})
    return {
        "tiers": tiers,
        "hit_ratio": overall,
        "source": {
            "bytes": int(total(samples, "fluidfs_source_bytes_total")),
            "requests": int(total(samples, "fluidfs_source_requests_total")),
            "errors": int(total(samples, "fluidfs_source_errors_total")),
            "requests_by_op": {op: int(total(samples, "fluidfs_source_requests_total", op=op)) for op in ops},
        },
        "readahead": {
            k: int(total(samples, f"fluidfs_readahead_{k}_bytes_total")) for k in ("issued", "used", "wasted")
        },
        "dataset_size": _dataset_size(samples),
        "cluster": _cluster(samples),
    }


def _dataset_size(samples: list[Sample]) -> dict[str, Any] | None:
    if not any(s.name == "fluidfs_dataset_size_bytes" for s in samples):
        return None
    return {
        "bytes": int(total(samples, "fluidfs_dataset_size_bytes")),
        "complete": total(samples, "fluidfs_dataset_size_complete") > 0,
    }


def _cluster(samples: list[Sample]) -> dict[str, Any] | None:
    """The peer tier as this member sees it; None when the mount is not a cluster member."""
    if not any(s.name == "fluidfs_peer_members" for s in samples):
        return None
    lookups = sorted({s.labels.get("result", "") for s in samples if s.name == "fluidfs_peer_lookups_total"})
    return {
        "members": int(total(samples, "fluidfs_peer_members")),
        "ownership_share": total(samples, "fluidfs_peer_ownership_share_ratio"),
        "peer_bytes_received": int(total(samples, "fluidfs_peer_bytes_total", side="client")),
        "peer_bytes_served": int(total(samples, "fluidfs_peer_bytes_total", side="server")),
        "lookups": {r: int(total(samples, "fluidfs_peer_lookups_total", result=r)) for r in lookups},
    }


def autoscaler_summary(samples: list[Sample], dataset: str) -> list[dict[str, Any]]:
    """What fluidfs-controller's metrics say of ``dataset``'s cache workers (one entry per namespace)."""
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        if s.labels.get("dataset") != dataset:
            continue
        key = {"fluidfs_autoscaler_replicas": "replicas", "fluidfs_autoscaler_recommended_replicas": "recommended"}
        if s.name in key:
            ns = s.labels.get("namespace", "")
            out.setdefault(ns, {"namespace": ns})[key[s.name]] = int(s.value)
    return [out[ns] for ns in sorted(out)]


# ----------------------------------------------------------------------------- the command


def collect(mountpoint: str, paths: Sequence[str], controller: str | None = None) -> dict[str, Any]:
    """Everything ``fluidfs status`` shows, as a JSON-able dict."""
    rec = require_mount(mountpoint)
    mnt = str(rec["mountpoint"])
    pid = rec.get("pid")
    if not answers(mnt, PROBE_TIMEOUT):
        how = "stopped" if isinstance(pid, int) and state(pid) in ("T", "t") else "busy or hung"
        raise MountError(
            f"{mountpoint} does not answer within {PROBE_TIMEOUT:g}s (its daemon, pid {pid}, is {how}); "
            f"fluidfs umount --lazy {mountpoint} detaches it"
        )
    rels = resolve_paths(mnt, paths)
    cfg = dict(rec.get("config") or {})
    out: dict[str, Any] = {
        "mountpoint": mnt,
        "dataset": rec.get("dataset"),
        "pid": pid,
        "uptime_seconds": process_uptime(pid) if isinstance(pid, int) else None,
        "sources": rec.get("sources") or [],
        "metrics_url": rec.get("metrics"),
        "config": cfg,
    }
    url = rec.get("metrics")
    stats: dict[str, Any] | None = None
    if isinstance(url, str) and url:
        try:
            stats = metrics_summary(fetch_samples(url))
        except (OSError, ValueError) as exc:
            log.warning("cannot read metrics from %s: %s", url, exc)
            out["metrics_error"] = str(exc)
    if stats is None:
        stats = _stats_without_metrics(cfg)
    out.update(stats)
    if controller:
        try:
            out["autoscaler"] = autoscaler_summary(fetch_samples(controller), str(rec.get("dataset") or ""))
        except (OSError, ValueError) as exc:
            out["autoscaler_error"] = f"{controller}: {exc}"
    t0 = time.monotonic()
    summary = cached_summary(mnt, rels)
    out["cached"] = {**asdict(summary), "fraction": summary.fraction, "scan_seconds": time.monotonic() - t0}
    return out


def _stats_without_metrics(cfg: dict[str, Any]) -> dict[str, Any]:
    tiers: dict[str, Any] = {
        "mem": {"used_bytes": None, "quota_bytes": cfg.get("memory_size"), "hit_ratio": None},
        "ssd": {
            "used_bytes": None,
            "quota_bytes": cfg.get("cache_size") if cfg.get("cache_dir") else 0,
            "hit_ratio": None,
        },
    }
    if cfg.get("cache_dir"):
        try:
            tiers["ssd"]["used_bytes"] = SSDTier.inspect(str(cfg["cache_dir"])).used_bytes
        except OSError:
            pass
    return {"tiers": tiers, "hit_ratio": None, "source": None, "readahead": None, "dataset_size": None, "cluster": None}


def _size(v: Any) -> str:
    return format_size(int(v)) if isinstance(v, (int, float)) else "?"


def _pct(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else "n/a"


def render(st: dict[str, Any]) -> str:
    cfg = st["config"]
    lines = [f"fluidfs mount {st['mountpoint']}"]
    up = st.get("uptime_seconds")
    lines.append(
        f"  dataset    {st['dataset']} (pid {st['pid']}"
        + (f", up {format_duration(float(max(1, int(up))))}" if up is not None else "")
        + ")"
    )
    for i, s in enumerate(st["sources"]):
        lines.append(f"  {'sources' if i == 0 else '':<10} {s}")
    lines.append(f"  metrics    {st.get('metrics_url') or 'off'}")

    def ttl(v: Any) -> str:
        return (
            "indefinite" if v == "indefinite" else (format_duration(float(v)) if isinstance(v, (int, float)) else "?")
        )

    lines.append(
        f"  config     cache dir {cfg.get('cache_dir') or 'none (memory only)'}, block size "
        f"{_size(cfg.get('block_size'))}, eviction {cfg.get('eviction')}, readahead {_size(cfg.get('readahead'))}"
    )
    lines.append(
        f"             metadata TTL {ttl(cfg.get('metadata_ttl'))}, negative TTL {ttl(cfg.get('negative_ttl'))}, "
        f"free-space floor {_size(cfg.get('free_space_floor'))}"
    )
    for i, t in enumerate(("mem", "ssd")):
        tier = st["tiers"][t]
        if t == "ssd" and not cfg.get("cache_dir"):
            lines.append(f"  {'':<10} ssd  none")
            continue
        hits = f"  hit ratio {_pct(tier.get('hit_ratio'))}"
        if "hits" in tier:
            hits += f" ({tier['hits']} hits, {tier['misses']} misses)"
        used, quota = _size(tier.get("used_bytes")), _size(tier.get("quota_bytes"))
        lines.append(f"  {'cache' if i == 0 else '':<10} {t}  {used} / {quota}{hits}")
    lines.append(f"  {'':<10} overall hit ratio {_pct(st.get('hit_ratio'))} (since mount)")
    src = st.get("source")
    if src:
        by_op = ", ".join(f"{op} {n}" for op, n in src["requests_by_op"].items())
        lines.append(
            f"  source     {_size(src['bytes'])} in {src['requests']} requests"
            + (f" ({by_op})" if by_op else "")
            + f", {src['errors']} errors"
        )
        ra = st["readahead"]
        lines.append(
            f"  readahead  issued {_size(ra['issued'])}, used {_size(ra['used'])}, wasted {_size(ra['wasted'])}"
        )
    else:
        lines.append(f"  source     unknown (metrics {'unreachable' if st.get('metrics_error') else 'off'})")
    size = st.get("dataset_size")
    if size:
        how = "every directory listed" if size["complete"] else "at least: not every directory listed yet"
        lines.append(f"  size       {_size(size['bytes'])} of files ({how})")
    cl = st.get("cluster")
    if cl:
        lines.append(
            f"  cluster    {cl['members']} members, this one owns {100 * cl['ownership_share']:.0f}% of the blocks; "
            f"from peers {_size(cl['peer_bytes_received'])}, to peers {_size(cl['peer_bytes_served'])}"
        )
    for a in st.get("autoscaler") or []:
        lines.append(
            f"  workers    {a['namespace']}/{st['dataset']}: {a.get('replicas', '?')} cache workers, "
            f"the autoscaler recommends {a.get('recommended', '?')} (kubectl describe dataset for why)"
        )
    if st.get("autoscaler") == []:
        lines.append(f"  workers    the controller has no Dataset named {st['dataset']}")
    if st.get("autoscaler_error"):
        lines.append(f"  workers    unknown: {st['autoscaler_error']}")
    c = st["cached"]
    where = ", ".join(c["paths"])
    lines.append(
        f"  cached     {100 * c['fraction']:.1f}% of {_size(c['bytes'])} ({_size(c['cached_bytes'])}) under {where}: "
        f"{c['fully_cached_files']}/{c['files']} files fully cached"
        + (f", {c['errors']} unreadable" if c["errors"] else "")
    )
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    st = collect(args.mountpoint, args.paths, args.controller)
    if args.json:
        json.dump(st, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(render(st))
    return 0


def add_parser(sub: Any) -> None:
    p = intermixed(sub.add_parser("status", help="show a mount's configuration, cache usage, hit ratios and %% cached"))
    p.add_argument("mountpoint")
    p.add_argument("paths", nargs="*", metavar="PATH", help="paths in the mount for '%% cached' (default: all)")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.add_argument(
        "--controller",
        metavar="URL",
        default=os.environ.get("FLUIDFS_CONTROLLER_METRICS") or None,
        help="fluidfs-controller's metrics URL: show the dataset's cache workers and the autoscaler's "
        "recommendation (default: $FLUIDFS_CONTROLLER_METRICS)",
    )
    p.set_defaults(handler=run)
