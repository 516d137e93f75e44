"""Tune fluidfs's block size and readahead window against an emulated remote store.

Starts SeaweedFS behind the benchmark's latency proxy (tools/bench), uploads a few large
files, and for each block size (then each readahead window) mounts fluidfs fresh (cold cache)
and measures: a cold sequential read (1 MiB reads, MB/s), cold random 4 KiB reads (ops/s) and
the bytes fetched from the source per random read (read amplification).  Prints a Markdown
table of medians over ``--runs`` runs.

    python -m tools.bench_blocksize [--latency-ms 20] [--files 2] [--size 256Mi] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fluidfs.daemon.record import read_record
from fluidfs.util.prom import fetch_samples, total
from fluidfs.util.sizes import parse_size
from tools.bench.store import BUCKET, open_store

MiB = 1 << 20


def source_bytes(mnt: str) -> float:
    url = str((read_record(mnt) or {}).get("metrics"))
    return total(fetch_samples(url), "fluidfs_source_bytes_total")


def mount(mnt: str, env: dict[str, str], endpoint: str, *flags: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "fluidfs",
        "mount",
        f"s3://{BUCKET}",
        mnt,
        "--endpoint",
        endpoint,
        "--memory-size",
        "2Gi",
        "--metrics-addr",
        "127.0.0.1:0",
        *flags,
    ]
    subprocess.run(cmd, env={**os.environ, **env}, check=True)


def umount(mnt: str) -> None:
    subprocess.run([sys.executable, "-m", "fluidfs", "umount", mnt], check=True)


def seq_read(paths: list[str]) -> float:
    t0 = time.perf_counter()
    n = 0
    buf = bytearray(MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while k := f.readinto(buf):
                n += k
    return n / (time.perf_counter() - t0) / 1e6


def rand_read(paths: list[str], size: int, ops: int, seed: int) -> float:
    rng = random.Random(seed)
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    t0 = time.perf_counter()
    for _ in range(ops):
        os.pread(rng.choice(fds), 4096, rng.randrange(0, size - 4096))
    dt = time.perf_counter() - t0
    for fd in fds:
        os.close(fd)
    return ops / dt


def measure(
    mnt: str, env: dict[str, str], endpoint: str, files: list[str], size: int, runs: int, ops: int, flags: list[str]
) -> tuple[float, float, float]:
    seq, rops, amp = [], [], []
    for run in range(runs):
        mount(mnt, env, endpoint, *flags)
        try:
            seq.append(seq_read([os.path.join(mnt, f) for f in files]))
        finally:
            umount(mnt)
        mount(mnt, env, endpoint, *flags, "--readahead", "0")
        try:
            rops.append(rand_read([os.path.join(mnt, f) for f in files], size, ops, seed=run))
            amp.append(source_bytes(mnt) / ops / 4096)
        finally:
            umount(mnt)
    return statistics.median(seq), statistics.median(rops), statistics.median(amp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--size", default="256Mi")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ops", type=int, default=100, help="random 4 KiB reads per run")
    ap.add_argument("--block-sizes", default="1Mi,2Mi,4Mi,8Mi,16Mi")
    ap.add_argument("--readaheads", default="8Mi,32Mi,64Mi")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="fluidfs-tune-"))
    store = open_store(work, args.latency_ms)
    mnt = str(work / "mnt")
    os.makedirs(mnt)
    try:
        client = store.direct_client()
        files = [f"large/shard-{i}.bin" for i in range(args.files)]
        for key in files:
            client.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(size))
        env = store.env()
        print(f"SeaweedFS behind a {args.latency_ms:g} ms proxy; {args.files} x {args.size}; median of {args.runs}\n")
        print("| block size | readahead | cold seq MB/s | cold random 4 KiB ops/s | source bytes per 4 KiB read |")
        print("|---|---|---|---|---|")
        for bs in args.block_sizes.split(","):
            seq, rops, amp = measure(mnt, env, store.endpoint, files, size, args.runs, args.ops, ["--block-size", bs])
            print(f"| {bs} | 32Mi | {seq:.0f} | {rops:.1f} | {amp:.0f}x |", flush=True)
        for ra in args.readaheads.split(","):
            seq, rops, amp = measure(mnt, env, store.endpoint, files, size, args.runs, args.ops, ["--readahead", ra])
            print(f"| 4Mi | {ra} | {seq:.0f} | {rops:.1f} | {amp:.0f}x |", flush=True)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
