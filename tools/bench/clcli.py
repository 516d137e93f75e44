"""Command line of the cluster benchmark: ``python -m tools.bench cluster [options]``.

Exit codes: 0 done (a phase that failed is listed under "Errors" in the report), 1 the harness
failed, 2 usage error or no network namespaces here (needs root and iproute2), 130 interrupted
(everything is still cleaned up).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools.bench import clreport
from tools.bench.cli import csv_list, parse_size
from tools.bench.cluster import PHASES, ClusterBench, ClusterOptions
from tools.bench.store import netns_available

MiB = 1 << 20

QUICK: dict[str, Any] = dict(
    runs=1, large_files=2, large_size=4 * MiB, quota=4 * MiB, small_size=64 * 1024, kill_duration=6.0, kill_at=2.0,
    source_mbit=200.0, member_mbit=400.0, latency_ms=5.0,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    d = ClusterOptions()
    ap = argparse.ArgumentParser(
        prog="python -m tools.bench cluster",
        description="Benchmark fluidfs's cluster cache: members in their own network namespaces (shaped veths), "
        "one object store (SeaweedFS behind the latency proxy) behind a shared capped link.",
    )
    ap.add_argument("--quick", action="store_true", help="tiny sets, one run (harness smoke test)")
    ap.add_argument("--runs", type=int, help=f"repetitions (default {d.runs}); the report shows medians")
    ap.add_argument("--phases", type=csv_list(PHASES), help=f"subset of {','.join(PHASES)} (default all)")
    ap.add_argument("--latency-ms", type=float, help=f"delay per store response chunk (default {d.latency_ms:g})")
    ap.add_argument("--source-mbit", type=float, help=f"the store's link, shared (default {d.source_mbit:g})")
    ap.add_argument("--member-mbit", type=float, help=f"each member's link (default {d.member_mbit:g})")
    ap.add_argument("--large-files", type=int, help=f"large set: files (default {d.large_files})")
    ap.add_argument("--large-size", type=parse_size, help="large set: bytes per file (default 16Mi)")
    ap.add_argument("--small-size", type=parse_size, help="small set: mean file size (default 110Ki)")
    ap.add_argument("--quota", type=parse_size, help="one member's SSD quota in the epoch phases (default 48Mi)")
    ap.add_argument("--dataset-ratio", type=float, help=f"small set / quota (default {d.dataset_ratio:g})")
    ap.add_argument("--memory-size", type=parse_size, help="memory tier in the epoch phases (default 8Mi)")
    ap.add_argument("--threads", type=int, help=f"reader threads per member, small set (default {d.threads})")
    ap.add_argument(
        "--kill-duration", type=float, help=f"seconds of reading in the kill phase (default {d.kill_duration:g})"
    )
    ap.add_argument("--kill-at", type=float, help=f"SIGKILL the worker after this many seconds (default {d.kill_at:g})")
    ap.add_argument("--seed", type=int)
    ap.add_argument(
        "--fluidfs-arg",
        dest="fluidfs_args",
        action="append",
        metavar="ARG",
        help="pass ARG to every member's fluidfs command (repeatable; e.g. --fluidfs-arg=--prefetch-siblings=0)",
    )
    ap.add_argument("--json", type=Path, metavar="FILE", help="write the result (records, series, targets) here")
    ap.add_argument("--markdown", type=Path, metavar="FILE", help="also write the report here")
    ap.add_argument("--workdir", type=Path, help="scratch dir (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (datasets, member logs)")
    return ap


def options(ns: argparse.Namespace) -> ClusterOptions:
    values: dict[str, Any] = dict(QUICK) if ns.quick else {}
    for name in ClusterOptions.__dataclass_fields__:
        v = getattr(ns, name, None)
        if v is not None and name != "quick":
            values[name] = v
    opts = ClusterOptions(**values, quick=ns.quick)
    if opts.runs < 1 or opts.threads < 1 or opts.kill_at >= opts.kill_duration - 5.0 and not ns.quick:
        raise SystemExit(
            "python -m tools.bench cluster: need --runs >= 1, --threads >= 1, --kill-at <= --kill-duration - 5"
        )
    return opts


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    opts = options(ns)
    why = netns_available()
    if why:
        print(f"python -m tools.bench cluster: network namespaces unavailable: {why}", file=sys.stderr)
        sys.exit(2)
    created = ns.workdir is None
    workdir = (Path(tempfile.mkdtemp(prefix="fluidfs-clbench-")) if created else ns.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    bench = ClusterBench(opts, workdir)
    code = 0
    try:
        result = bench.run()
    except KeyboardInterrupt:
        print("[cluster] interrupted: cleaning up", file=sys.stderr, flush=True)
        code = 130
    except Exception as exc:
        print(f"[cluster] failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.janitor.sweep()
        if not ns.keep:
            shutil.rmtree(workdir if created else workdir / "members", ignore_errors=True)
            if not created:
                shutil.rmtree(workdir / "seaweed", ignore_errors=True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if code:
        sys.exit(code)
    text = clreport.markdown(result)
    print(text)
    if ns.markdown:
        ns.markdown.write_text(text + "\n")
    if ns.json:
        clreport.write_json(result, ns.json)
