"""Command line of the benchmark suite: parse flags, run the suite, print/write the report.

Exit codes: 0 done (even if some systems were skipped or errored: the report says so),
2 usage error, 130 interrupted (everything is still cleaned up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from fluidfs.util import sizes
from tools.bench import report
from tools.bench.datasets import DataSpec
from tools.bench.suite import ALL_WORKLOADS, Options, Suite

ALL_SYSTEMS = ("fluidfs", "s3fs", "rclone", "boto3", "local")

QUICK: dict[str, Any] = dict(
    large_files=2,
    large_size=8 << 20,
    small_files=32,
    small_size=16 << 10,
    classes=4,
    meta_files=200,
    runs=1,
    budget=6.0,
    rand_ops=60,
    ssd_reps=1,
)


def parse_size(text: str) -> int:
    """``256Mi``, ``110Ki``, ``1G``, ``4096`` → bytes (fluidfs's size syntax)."""
    try:
        return sizes.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def csv_list(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {','.join(allowed)}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Benchmark fluidfs against s3fs, rclone, direct boto3 and local disk over an "
        "emulated remote object store (SeaweedFS behind a latency proxy). "
        "'python -m tools.bench cluster --help': the cluster cache benchmark.",
    )
    ap.add_argument("--quick", action="store_true", help="tiny datasets, one run (smoke test, < 90 s)")
    ap.add_argument("--runs", type=int, help="repetitions per measurement (default 3; --quick: 1)")
    ap.add_argument("--systems", type=csv_list(ALL_SYSTEMS), default=list(ALL_SYSTEMS))
    ap.add_argument("--workloads", type=csv_list(ALL_WORKLOADS), default=list(ALL_WORKLOADS))
    ap.add_argument("--latency-ms", type=float, default=20.0, help="delay per response chunk (default 20)")
    ap.add_argument("--bandwidth", type=float, metavar="MBIT", help="cap the store's response bandwidth")
    ap.add_argument(
        "--shaper",
        choices=("auto", "tc", "proxy"),
        default="auto",
        help="bandwidth cap by tc tbf on a veth in a netns (root) or in the proxy; auto: tc if possible",
    )
    ap.add_argument("--large-files", type=int)
    ap.add_argument("--large-size", type=parse_size)
    ap.add_argument("--small-files", type=int)
    ap.add_argument("--small-size", type=parse_size)
    ap.add_argument("--classes", type=int)
    ap.add_argument("--meta-files", type=int)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--budget", type=float, help="seconds per measurement/epoch before it is cut (default 20)")
    ap.add_argument("--rand-ops", type=int, help="random reads per measurement (default 300)")
    ap.add_argument("--ssd-reps", type=int, help="ssd workload: passes per run, page cache dropped (default 3)")
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure the fluidfs of this source tree (e.g. a git worktree of main) as fluidfs-baseline",
    )
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--fluidfs-cache-size", type=parse_size, default=8 << 30)
    ap.add_argument("--fluidfs-memory-size", type=parse_size, default=256 << 20)
    ap.add_argument(
        "--fuse-read-ahead-kb", type=int, default=1024, help="kernel readahead set on every FUSE mount (0: leave)"
    )
    ap.add_argument("--json", type=Path, metavar="FILE")
    ap.add_argument("--chart", type=Path, metavar="FILE", help="PNG chart (needs matplotlib)")
    ap.add_argument("--markdown", type=Path, metavar="FILE", help="also write the report here")
    ap.add_argument("--workdir", type=Path, help="scratch dir (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (datasets, logs)")
    return ap


# Defaults sized so the whole suite stays around 20 minutes on 2 cores at 20 ms: small-file reads
# are latency-bound (2 DataLoader workers, >= 1 round trip per file), so the small-file set is
# small enough for fluidfs's cold epoch to finish within the budget; slower systems are cut at
# the budget and flagged.  The full-size sets: --large-size 256Mi --small-files 10000
# --meta-files 100000 --budget 600 (hours, not minutes, with s3fs and rclone included).
DEFAULTS: dict[str, Any] = dict(
    large_files=4,
    large_size=128 << 20,
    small_files=300,
    small_size=110 << 10,
    classes=30,
    meta_files=2000,
    runs=3,
    budget=20.0,
    rand_ops=300,
    ssd_reps=3,
)


def options(ns: argparse.Namespace) -> Options:
    base: dict[str, Any] = dict(QUICK if ns.quick else DEFAULTS)
    for k in base:
        v = getattr(ns, k, None)
        if v is not None:
            base[k] = v
    spec = DataSpec(
        large_files=base["large_files"],
        large_size=base["large_size"],
        small_files=base["small_files"],
        small_size=base["small_size"],
        classes=base["classes"],
        meta_files=base["meta_files"],
        meta_dirs=min(100, max(1, base["meta_files"] // 50)),
        seed=ns.seed,
    )
    return Options(
        systems=ns.systems,
        workloads=ns.workloads,
        spec=spec,
        runs=base["runs"],
        latency_ms=ns.latency_ms,
        bandwidth_mbit=ns.bandwidth,
        budget=base["budget"],
        rand_ops=base["rand_ops"],
        ssd_reps=base["ssd_reps"],
        baseline=ns.baseline.resolve() if ns.baseline else None,
        loader_workers=ns.loader_workers,
        fluidfs_cache_size=ns.fluidfs_cache_size,
        fluidfs_memory_size=ns.fluidfs_memory_size,
        fuse_read_ahead_kb=ns.fuse_read_ahead_kb,
        quick=ns.quick,
        shaper=ns.shaper,
    )


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    opts = options(ns)
    created = ns.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="fluidfs-bench-")) if created else ns.workdir
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    suite = Suite(opts, workdir)
    code = 0
    try:
        result = suite.run()
    except KeyboardInterrupt:
        print("[bench] interrupted: cleaning up mounts and processes", file=sys.stderr, flush=True)
        code = 130
    except Exception as exc:
        print(f"[bench] failed: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # Ignore a second Ctrl-C while the janitor works.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        suite.janitor.sweep()
        if not ns.keep:
            if created:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                for sub in ("seaweed", "systems"):
                    shutil.rmtree(workdir / sub, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if code:
        sys.exit(code)
    text = report.markdown(result)
    print(text)
    if ns.markdown:
        ns.markdown.write_text(text + "\n")
    if ns.json:
        report.write_json(result, ns.json)
    if ns.chart:
        if not report.chart(result, ns.chart):
            print("[bench] chart skipped: matplotlib not installed", file=sys.stderr)
    print(
        f"[bench] done in {result['meta']['seconds']:.0f}s" + (f"; workdir kept: {workdir}" if ns.keep else ""),
        file=sys.stderr,
    )
    os.sync()


if __name__ == "__main__":
    main()
