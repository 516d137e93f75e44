"""Peak RSS of a real fluidfs daemon under many random readers, against its documented bound.

Mounts one large file (a local directory; SeaweedFS on loopback with ``--source s3``; the test
HTTP server answering each request after ``--latency-ms`` at 8 MB/s per connection with
``--source http``, so that many fetches are in flight at once) with the given memory settings,
lets ``--readers`` threads pread 4 KiB at random offsets for ``--seconds``, and prints the
daemon's RSS when idle, its peak (``VmHWM``) and the bound of docs/cache.md: ``idle RSS +
memory-size + inflight-memory`` (block data) plus the same again for the transient buffers of
the HTTP/S3 client libraries while blocks arrive.  Mount the FUSE control filesystem first
(``mount -t fusectl none /sys/fs/fuse/connections``) to measure with the kernel's background
queue raised, as a production host has it.

    python -m tools.rss_bound [--source local|s3|http] [--latency-ms 100] [--size 512Mi] [--memory-size 64Mi]
                              [--inflight-memory SIZE] [--block-size 4Mi] [--readers 32] [--seconds 15] [--ssd]

:func:`measure` is what ``tests/fuse/test_memory_bound.py`` runs (with a smaller file).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fluidfs.config import MountConfig
from fluidfs.daemon.record import read_record
from fluidfs.util.sizes import format_size, parse_size

MiB = 1 << 20


@dataclass
class Result:
    idle_rss: int  # bytes, once the mount answers
    peak_rss: int  # bytes, VmHWM after the readers
    reads: int  # random reads done
    block_data: int  # memory-size + inflight-memory: the block data the daemon may hold
    bound: int  # idle_rss + block_data + inflight-memory (transient library buffers)


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _fluidfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fluidfs", *args], env={**os.environ, **(env or {})}, capture_output=True, text=True
    )


def _write_random(path: str, size: int) -> None:
    rng = random.Random(1)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(rng.randbytes(n))
            left -= n


@contextmanager
def _source(kind: str, size: int, workdir: str, latency: float = 0.0) -> Iterator[tuple[str, dict[str, str]]]:
    """(SOURCE argument, environment) of a dataset holding ``big.bin`` of ``size`` bytes."""
    if kind in ("local", "http"):
        d = os.path.join(workdir, "src")
        os.makedirs(d, exist_ok=True)
        _write_random(os.path.join(d, "big.bin"), size)
        if kind == "local":
            yield d, {}
            return
        from tests.support.httpserver import RangeHTTPServer, RangeRequestHandler

        class Slow(RangeRequestHandler):
            """A far-away server: every answer starts after ``latency`` and its body arrives at
            8 MB/s per connection, so many fetches are in flight (and half-received) at once."""

            def setup(self) -> None:
                super().setup()
                inner = self.wfile

                class Throttled:
                    def write(self, b: bytes) -> int:
                        time.sleep(len(b) / 8e6)
                        return inner.write(b)

                    def flush(self) -> None:
                        inner.flush()

                self.wfile = Throttled()  # type: ignore[assignment]

            def authorize(self) -> bool:
                time.sleep(latency)
                return True

        with RangeHTTPServer(d, handler_class=Slow) as srv:
            yield srv.url + "big.bin", {}
        return
    from tests.support.s3server import S3Server  # the benchmark's embedded server

    os.makedirs(os.path.join(workdir, "weed"), exist_ok=True)
    with S3Server("seaweed", data_dir=os.path.join(workdir, "weed")) as s3:
        s3.client().create_bucket(Bucket="rss")
        path = os.path.join(workdir, "big.bin")
        _write_random(path, size)
        s3.client().upload_file(path, "rss", "data/big.bin")
        os.unlink(path)
        yield "s3://rss/data", s3.env()


def measure(
    kind: str,
    size: int,
    memory_size: int,
    inflight_memory: int | None,
    block_size: int,
    readers: int,
    seconds: float,
    workdir: str,
    ssd: bool = False,
    latency: float = 0.0,
) -> Result:
    """Mount, read at random with ``readers`` threads for ``seconds``, unmount; the RSS figures."""
    cfg = MountConfig(memory_size=memory_size, inflight_memory=inflight_memory or 0, block_size=block_size)
    flags = ["--memory-size", str(memory_size), "--block-size", str(block_size)]
    if inflight_memory is not None:
        flags += ["--inflight-memory", str(inflight_memory)]
    if ssd:
        flags += ["--cache-dir", os.path.join(workdir, "cache"), "--free-space-floor", "0"]
    mnt = os.path.join(workdir, "mnt")
    os.makedirs(mnt, exist_ok=True)
    with _source(kind, size, workdir, latency) as (source, env):
        res = _fluidfs("mount", source, mnt, "--metrics-addr", "none", *flags, env=env)
        if res.returncode != 0:
            raise RuntimeError(f"mount failed: {res.stderr.strip()}")
        try:
            rec = read_record(mnt) or {}
            pid = int(rec["pid"])
            path = os.path.join(mnt, "big.bin")
            fsize = os.path.getsize(path)
            idle = _status_kib(pid, "VmRSS") * 1024
            stop = time.monotonic() + seconds
            counts = [0] * readers

            def reader(i: int) -> None:
                rng = random.Random(i)
                fd = os.open(path, os.O_RDONLY)
                try:
                    while time.monotonic() < stop:
                        os.pread(fd, 4096, rng.randrange(0, fsize - 4096))
                        counts[i] += 1
                finally:
                    os.close(fd)

            threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            peak = _status_kib(pid, "VmHWM") * 1024
        finally:
            _fluidfs("umount", mnt)
    data = cfg.memory_size + cfg.inflight_bytes
    return Result(idle, peak, sum(counts), data, idle + data + cfg.inflight_bytes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.rss_bound", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", choices=("local", "s3", "http"), default="local")
    p.add_argument("--latency-ms", type=float, default=100.0, help="http: delay of every request")
    p.add_argument("--size", default="512Mi")
    p.add_argument("--memory-size", default="64Mi")
    p.add_argument("--inflight-memory", default=None)
    p.add_argument("--block-size", default="4Mi")
    p.add_argument("--readers", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--ssd", action="store_true", help="with an SSD tier (a cache directory)")
    args = p.parse_args(argv)
    inflight = parse_size(args.inflight_memory) if args.inflight_memory else None
    with tempfile.TemporaryDirectory(prefix="fluidfs-rss-") as tmp:
        r = measure(
            args.source,
            parse_size(args.size),
            parse_size(args.memory_size),
            inflight,
            parse_size(args.block_size),
            args.readers,
            args.seconds,
            tmp,
            args.ssd,
            args.latency_ms / 1000,
        )
    print("| source | memory-size | block data bound | readers | reads | idle RSS | peak RSS | bound |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.source} | {args.memory_size} | {format_size(r.block_data)} | {args.readers} | {r.reads} "
        f"| {format_size(r.idle_rss)} | {format_size(r.peak_rss)} | {format_size(r.bound)} |"
    )
    return 0 if r.peak_rss <= r.bound else 1


if __name__ == "__main__":
    sys.exit(main())
