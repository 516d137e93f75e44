"""``fluidfs status MOUNTPOINT [PATH ...] [--json]``: what a running mount is, holds and did.

Everything comes from three places: the mount's runtime record (pid, dataset, sources,
configuration, metrics URL; see mountd.py), its Prometheus endpoint (tier used/quota, hits and
misses, source bytes and requests, readahead), and the mounted tree itself: for "% cached" every
regular file under the given PATHs is visited and its ``user.fluidfs.cached`` xattr (fraction
of its blocks held by any tier) is weighted by its size.

Also home of the mount-side helpers ``fluidfs load`` shares: :func:`mount_record` (is this a
live fluidfs mount?), :func:`resolve_paths` and :func:`iter_files` (a streamed walk of a
mounted tree) and :func:`cached_fraction`.

Hit ratios are since the mount started: per tier ``hits / (hits + misses)``; overall
``(mem hits + ssd hits) / (mem hits + mem misses)`` (every block lookup starts at the MEM tier).

Caveats: the "% cached" walk costs one ``getxattr`` (a FUSE round trip) per file, done by 16
threads; on millions of files give a PATH.  Files that are partly cached count with their
fraction.  Without a metrics endpoint (``--metrics-addr none``) tier usage of the SSD tier is
read from the cache directory and hit ratios are unknown.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import stat as S
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

from fluidfs.daemon.spawn import pid_alive
from fluidfs.errors import ConfigError, MountError
from fluidfs.util.sizes import format_duration, format_size

log = logging.getLogger(__name__)

XATTR_CACHED = "user.fluidfs.cached"
WALK_BATCH = 256


# ----------------------------------------------------------------------------- mount helpers


def mount_record(path: str) -> dict[str, Any] | None:
    """The runtime record of the live fluidfs mount at ``path``, or None if it is not one."""
    from fluidfs.daemon.run import read_record

    if not os.path.isdir(path) or not os.path.ismount(path):
        return None
    rec = read_record(path)
    if not rec or os.path.realpath(str(rec.get("mountpoint", ""))) != os.path.realpath(path):
        return None
    return rec


def require_mount(path: str) -> dict[str, Any]:
    """Like :func:`mount_record` but raises MountError (exit 1) with a one-line reason."""
    rec = mount_record(path)
    if rec is None:
        raise MountError(f"{path} is not a fluidfs mount")
    pid = rec.get("pid")
    if isinstance(pid, int) and not pid_alive(pid):
        raise MountError(f"{path}: its fluidfs daemon (pid {pid}) is not running; unmount it with fluidfs umount --lazy")
    return rec


def resolve_paths(root: str, paths: Sequence[str]) -> list[str]:
    """PATH arguments (relative to the mount, or absolute inside it) → relative paths ("" = all)."""
    real_root = os.path.realpath(root)
    out: list[str] = []
    for p in paths or [""]:
        full = os.path.normpath(os.path.join(real_root, p))  # an absolute p replaces the root
        rel = os.path.relpath(full, real_root)
        if rel == ".":
            rel = ""
        if rel == ".." or rel.startswith("../"):
            raise ConfigError(f"{p}: not inside the mount {root}")
        try:
            os.stat(os.path.join(root, rel) if rel else root)
        except OSError as exc:
            raise ConfigError(f"{p}: {exc.strerror or exc} (in the mount {root})") from None
        out.append(rel)
    return out


def iter_files(root: str, rels: Sequence[str]) -> Iterator[list[tuple[str, int]]]:
    """Batches of (relative path, size) of the regular files at or below each of ``rels``.

    Streamed (depth first, one directory listing at a time); a file named twice (overlapping
    PATHs) is yielded once.
    """
    seen: set[str] = set()
    batch: list[tuple[str, int]] = []
    for rel in rels:
        if any(rel == s or rel.startswith(s + "/") for s in seen if s) or "" in seen:
            continue  # covered by an earlier PATH
        seen.add(rel)
        top = os.path.join(root, rel) if rel else root
        st = os.stat(top)
        if not S.S_ISDIR(st.st_mode):
            if S.S_ISREG(st.st_mode):
                batch.append((rel, st.st_size))
            continue
        stack = [rel]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(os.path.join(root, d) if d else root) as it:
                    subdirs = []
                    for de in it:
                        child = f"{d}/{de.name}" if d else de.name
                        if de.is_dir(follow_symlinks=False):
                            subdirs.append(child)
                        elif de.is_file(follow_symlinks=False):
                            batch.append((child, de.stat(follow_symlinks=False).st_size))
                            if len(batch) >= WALK_BATCH:
                                yield batch
                                batch = []
            except OSError as exc:
                log.warning("cannot list %s: %s", os.path.join(root, d), exc)
                continue
            stack.extend(reversed(sorted(subdirs)))
    if batch:
        yield batch


def cached_fraction(path: str) -> float:
    """The file's ``user.fluidfs.cached`` value (0.0 when the xattr is absent)."""
    try:
        return float(os.getxattr(path, XATTR_CACHED).decode())
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return 0.0
        raise
    except ValueError:
        return 0.0


@dataclass
class CachedSummary:
    """Bytes of the files under ``paths`` that are held by the mount's cache tiers."""

    paths: list[str]
    files: int = 0
    bytes: int = 0
    cached_bytes: int = 0
    fully_cached_files: int = 0
    errors: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.cached_bytes / self.bytes if self.bytes else (1.0 if not self.errors else 0.0)


def cached_summary(root: str, rels: Sequence[str], threads: int = 16) -> CachedSummary:
    """Walk the mounted tree and add up ``cached xattr × size`` per file."""
    out = CachedSummary(paths=["/" + r for r in rels])

    def one(item: tuple[str, int]) -> tuple[str, int, float | None]:
        rel, size = item
        try:
            return rel, size, cached_fraction(os.path.join(root, rel))
        except OSError:
            return rel, size, None

    with ThreadPoolExecutor(threads, thread_name_prefix="fluidfs-status") as pool:
        for batch in iter_files(root, rels):
            for rel, size, frac in pool.map(one, batch):
                out.files += 1
                out.bytes += size
                if frac is None:
                    out.errors += 1
                    if len(out.examples) < 3:
                        out.examples.append(rel)
                    continue
                out.cached_bytes += size if frac >= 1.0 else int(frac * size)
                out.fully_cached_files += frac >= 1.0
    return out


# ----------------------------------------------------------------------------- metrics


def fetch_metrics(url: str, timeout: float = 5.0) -> list[tuple[str, dict[str, str], float]]:
    """All samples of a Prometheus text page: (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode("utf-8", "replace")
    return [(s.name, dict(s.labels), float(s.value)) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _sum(samples: list[tuple[str, dict[str, str], float]], name: str, **match: str) -> float:
    return sum(v for n, labels, v in samples if n == name and all(labels.get(k) == x for k, x in match.items()))


def _ratio(hits: float, misses: float) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def metrics_summary(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, Any]:
    tiers: dict[str, Any] = {}
    for t in ("mem", "ssd"):
        hits = _sum(samples, "fluidfs_cache_hits_total", tier=t)
        misses = _sum(samples, "fluidfs_cache_misses_total", tier=t)
        tiers[t] = {
            "used_bytes": int(_sum(samples, "fluidfs_cache_used_bytes", tier=t)),
            "quota_bytes": int(_sum(samples, "fluidfs_cache_quota_bytes", tier=t)),
            "hits": int(hits),
            "misses": int(misses),
            "hit_bytes": int(_sum(samples, "fluidfs_cache_hit_bytes_total", tier=t)),
            "evictions": int(_sum(samples, "fluidfs_cache_evictions_total", tier=t)),
            "hit_ratio": _ratio(hits, misses),
        }
    mem_hits, mem_misses = tiers["mem"]["hits"], tiers["mem"]["misses"]
    overall = (mem_hits + tiers["ssd"]["hits"]) / (mem_hits + mem_misses) if mem_hits + mem_misses else None
    ops = sorted({labels.get("op", "") for n, labels, _ in samples if n == "fluidfs_source_requests_total"})
    return {
        "tiers": tiers,
        "hit_ratio": overall,
        "source": {
            "bytes": int(_sum(samples, "fluidfs_source_bytes_total")),
            "requests": int(_sum(samples, "fluidfs_source_requests_total")),
            "errors": int(_sum(samples, "fluidfs_source_errors_total")),
            "requests_by_op": {op: int(_sum(samples, "fluidfs_source_requests_total", op=op)) for op in ops},
        },
        "readahead": {
            k: int(_sum(samples, f"fluidfs_readahead_{k}_bytes_total")) for k in ("issued", "used", "wasted")
        },
    }


def _uptime(pid: int) -> float | None:
    """Seconds since process ``pid`` started (from /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start_ticks = int(f.read().rsplit(") ", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            boot_uptime = float(f.read().split()[0])
        return max(0.0, boot_uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------- the command


def collect(mountpoint: str, paths: Sequence[str]) -> dict[str, Any]:
    """Everything ``fluidfs status`` shows, as a JSON-able dict."""
    rec = require_mount(mountpoint)
    rels = resolve_paths(mountpoint, paths)
    cfg = dict(rec.get("config") or {})
    pid = rec.get("pid")
    out: dict[str, Any] = {
        "mountpoint": os.path.abspath(mountpoint),
        "dataset": rec.get("dataset"),
        "pid": pid,
        "uptime_seconds": _uptime(pid) if isinstance(pid, int) else None,
        "sources": rec.get("sources") or [],
        "metrics_url": rec.get("metrics"),
        "config": cfg,
    }
    url = rec.get("metrics")
    stats: dict[str, Any] | None = None
    if isinstance(url, str) and url:
        try:
            stats = metrics_summary(fetch_metrics(url))
        except (OSError, ValueError) as exc:
            log.warning("cannot read metrics from %s: %s", url, exc)
            out["metrics_error"] = str(exc)
    if stats is None:
        stats = _stats_without_metrics(cfg)
    out.update(stats)
    t0 = time.monotonic()
    summary = cached_summary(mountpoint, rels)
    out["cached"] = {**asdict(summary), "fraction": summary.fraction, "scan_seconds": time.monotonic() - t0}
    return out


def _stats_without_metrics(cfg: dict[str, Any]) -> dict[str, Any]:
    tiers: dict[str, Any] = {
        "mem": {"used_bytes": None, "quota_bytes": cfg.get("memory_size"), "hit_ratio": None},
        "ssd": {"used_bytes": None, "quota_bytes": cfg.get("cache_size") if cfg.get("cache_dir") else 0, "hit_ratio": None},
    }
    if cfg.get("cache_dir"):
        try:
            from fluidfs.cache.ssd import SSDTier

            tiers["ssd"]["used_bytes"] = SSDTier.inspect(str(cfg["cache_dir"])).used_bytes
        except OSError:
            pass
    return {"tiers": tiers, "hit_ratio": None, "source": None, "readahead": None}


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
        return "indefinite" if v == "indefinite" else (format_duration(float(v)) if isinstance(v, (int, float)) else "?")

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
        lines.append(
            f"  {'cache' if i == 0 else '':<10} {t}  {_size(tier.get('used_bytes'))} / {_size(tier.get('quota_bytes'))}{hits}"
        )
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
    c = st["cached"]
    where = ", ".join(c["paths"])
    lines.append(
        f"  cached     {100 * c['fraction']:.1f}% of {_size(c['bytes'])} ({_size(c['cached_bytes'])}) under {where}: "
        f"{c['fully_cached_files']}/{c['files']} files fully cached"
        + (f", {c['errors']} unreadable" if c["errors"] else "")
    )
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    st = collect(args.mountpoint, args.paths)
    if args.json:
        json.dump(st, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(render(st))
    return 0


def add_parser(sub: Any) -> None:
    from fluidfs.warmup.pipeline import _intermixed

    p = _intermixed(sub.add_parser("status", help="show a mount's configuration, cache usage, hit ratios and %% cached"))
    p.add_argument("mountpoint")
    p.add_argument("paths", nargs="*", metavar="PATH", help="paths in the mount for '%% cached' (default: all)")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.set_defaults(handler=cmd_status)
