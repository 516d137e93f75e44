"""``fluidfs demo``: the whole data path on one machine, no internet.

Starts an embedded S3 server (moto) on loopback, fills a bucket with a generated sample
dataset (image-sized files in class folders plus a few larger shards), mounts it with
``fluidfs mount`` (the real daemon), lists it, reads everything cold, then again with the page
cache dropped (served by the fluidfs cache) and once more (served by the page cache), checks
every byte, prints a table with times and cache hit ratios, and cleans up — also on Ctrl-C.

The S3 server is moto, an optional dependency (``pip install 'fluidfs[demo]'``; ``tools/setup.sh``
installs it); without it the command exits 2 with one line saying so.

Caveats: moto keeps the bucket in memory (the demo's default dataset is ~130 MiB); the server is
a child process in the demo's own process group, stopped on exit and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fluidfs.daemon.record import read_record
from fluidfs.errors import ConfigError
from fluidfs.util.proc import drop_page_cache
from fluidfs.util.prom import fetch_samples
from fluidfs.util.sizes import format_size, parse_size

BUCKET = "demo"
MOTO_MISSING = "fluidfs demo needs the moto S3 server, an optional extra: pip install 'fluidfs[demo]'"
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer:
    """moto's S3 server (``python -m moto.server``) as a child process on a free loopback port."""

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """AWS_* variables pointing a client (or a ``fluidfs mount``) at this server."""
        return {**_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> Any:
        import boto3.session  # boto3 is a runtime dependency; imported here to keep start-up light

        session = boto3.session.Session(
            aws_access_key_id=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=_CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        return session.client("s3", endpoint_url=self.endpoint)

    def __enter__(self) -> MotoServer:
        for _attempt in range(3):  # a port picked free may be taken before moto binds it
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                self.port = int(s.getsockname()[1])
            cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_ready():
                return self
            self.stop()
        raise ConfigError(f"the demo's S3 server (moto) did not start on 127.0.0.1 within {self.startup_timeout:.0f}s")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def generate(client: object, files: int, shards: int, shard_size: int) -> dict[str, str]:
    """Upload the deterministic sample dataset; return {relative path: sha256}."""
    rng = random.Random(42)
    digests: dict[str, str] = {}
    classes = max(1, min(10, files // 20))
    items: list[tuple[str, int]] = []
    for i in range(files):
        items.append((f"train/class_{i % classes:02d}/img_{i:05d}.jpg", rng.randint(20_000, 200_000)))
    for i in range(shards):
        items.append((f"shards/shard-{i:03d}.tar", shard_size))

    def put(item: tuple[str, int]) -> tuple[str, str]:
        key, size = item
        data = random.Random(key).randbytes(size)
        client.put_object(Bucket=BUCKET, Key=key, Body=data)  # type: ignore[attr-defined]
        return key, hashlib.sha256(data).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        for key, digest in pool.map(put, items):
            digests[key] = digest
    return digests


def read_all(root: str, paths: list[str]) -> tuple[float, int, dict[str, str]]:
    t0 = time.perf_counter()
    total = 0
    digests: dict[str, str] = {}

    def one(rel: str) -> tuple[str, int, str]:
        h = hashlib.sha256()
        n = 0
        with open(os.path.join(root, rel), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
        return rel, n, h.hexdigest()

    with ThreadPoolExecutor(8) as pool:
        for rel, n, digest in pool.map(one, paths):
            total += n
            digests[rel] = digest
    return time.perf_counter() - t0, total, digests


def scrape(url: str) -> dict[str, float]:
    """Each metric of the mount's endpoint summed over its labels (the tier kept apart)."""
    out: dict[str, float] = {}
    for name, labels, value in fetch_samples(url):
        key = f"{name}:{labels['tier']}" if "tier" in labels else name
        out[key] = out.get(key, 0.0) + value
    return out


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if importlib.util.find_spec("moto") is None:
        raise ConfigError(MOTO_MISSING)
    work = tempfile.mkdtemp(prefix="fluidfs-demo-")
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    try:
        shard_size = parse_size(args.shard_size, "--shard-size")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    mounted = False
    print(f"fluidfs demo — working in {work}")
    try:
        with MotoServer() as server:
            print(f"  embedded S3 server (moto) on {server.endpoint}")
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            t0 = time.perf_counter()
            expected = generate(client, args.files, args.shards, shard_size)
            size = sum(
                o["Size"]
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])
            )
            print(f"  generated {len(expected)} objects, {format_size(size)} in {time.perf_counter() - t0:.1f}s")
            env = {**os.environ, **server.env()}
            cmd = [
                sys.executable,
                "-m",
                "fluidfs",
                "mount",
                f"s3://{BUCKET}",
                mnt,
                "--cache-dir",
                os.path.join(work, "cache"),
                "--memory-size",
                "256Mi",
                "--metrics-addr",
                "127.0.0.1:0",
            ]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr.strip(), file=sys.stderr)
                return res.returncode
            mounted = True
            rec = read_record(mnt) or {}
            metrics_url = str(rec.get("metrics") or "")
            print(f"  mounted s3://{BUCKET} at {mnt} (metrics: {metrics_url or 'off'})")

            t0 = time.perf_counter()
            paths = []
            for dirpath, _dirs, names in os.walk(mnt):
                for n in names:
                    paths.append(os.path.relpath(os.path.join(dirpath, n), mnt))
            print(f"  listed {len(paths)} files in {time.perf_counter() - t0:.2f}s")
            for top in sorted(os.listdir(mnt)):
                print(f"    {top}/  ({len(os.listdir(os.path.join(mnt, top)))} entries)")

            rows = []
            passes = [
                ("cold (from S3)", False),
                ("warm, page cache dropped (fluidfs cache)", True),
                ("warm (page cache)", False),
            ]
            before = scrape(metrics_url) if metrics_url else {}
            for label, drop in passes:
                if drop and not drop_page_cache():
                    label += " [could not drop page cache: not root]"
                secs, nbytes, got = read_all(mnt, paths)
                after = scrape(metrics_url) if metrics_url else {}
                d: dict[str, float] = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
                before = after
                hits = d.get("fluidfs_cache_hits_total:mem", 0) + d.get("fluidfs_cache_hits_total:ssd", 0)
                # every block lookup either hits the MEM tier or misses it (then SSD or source)
                lookups = d.get("fluidfs_cache_hits_total:mem", 0) + d.get("fluidfs_cache_misses_total:mem", 0)
                ratio = f"{hits / lookups:.2f}" if lookups else "n/a (page cache)"
                ok = all(got.get(k) == v for k, v in expected.items())
                rows.append(
                    (
                        label,
                        secs,
                        nbytes / secs / 1e6,
                        format_size(int(d.get("fluidfs_source_bytes_total", 0))),
                        ratio,
                        ok,
                    )
                )
            print()
            print(f"  {'pass':<44} {'seconds':>8} {'MB/s':>8} {'from S3':>10} {'hit ratio':>16}  bytes")
            for label, secs, mbs, src, ratio, ok in rows:
                print(
                    f"  {label:<44} {secs:>8.2f} {mbs:>8.1f} {src:>10} {ratio:>16}  {'verified' if ok else 'MISMATCH'}"
                )
            print()
            speedup = rows[0][1] / rows[1][1] if rows[1][1] else float("inf")
            print(f"  warm (fluidfs cache) vs cold: {speedup:.1f}x faster")
            subprocess.run([sys.executable, "-m", "fluidfs", "umount", mnt], check=False)
            mounted = False
            print("  unmounted and stopped the S3 server")
            return 0 if all(r[5] for r in rows) else 1
    except KeyboardInterrupt:
        print("\n  interrupted — cleaning up", file=sys.stderr)
        return 130
    finally:
        if mounted or os.path.ismount(mnt):
            subprocess.run([sys.executable, "-m", "fluidfs", "umount", "--lazy", mnt], capture_output=True)
        if not getattr(args, "keep", False):
            shutil.rmtree(work, ignore_errors=True)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the self-contained demo (embedded S3 server, no internet)")
    p.add_argument("--files", type=int, default=300, help="number of image-sized files (default 300)")
    p.add_argument("--shards", type=int, default=3, help="number of larger shard files (default 3)")
    p.add_argument("--shard-size", default="32Mi", help="size of each shard (default 32Mi)")
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=run)
