"""``fluidfs load``: the progress bar (unit), loading through a real FUSE mount (local source),
loading a SeaweedFS bucket straight into an SSD cache directory and then reading every byte
with the S3 server stopped, and an interrupted load that a rerun completes."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from fluidfs.cache.ssd import SSDTier
from fluidfs.progress import Progress, final_line, format_eta
from tests.fusehelp import Mount, compare_tree, fluidfs, needs_fuse

FINAL = re.compile(r"^cached (\d+)/(\d+) files, (\S+ \S+)/(\S+ \S+) \((\d+\.\d)%\) in \d+\.\ds$", re.M)
BUCKET = "warmup"


def final(stdout: str) -> tuple[int, int, float]:
    m = FINAL.search(stdout)
    assert m, stdout
    return int(m.group(1)), int(m.group(2)), float(m.group(5))


def status_json(mnt: str, *paths: str) -> dict[str, object]:
    res = fluidfs("status", "--json", mnt, *paths)
    assert res.returncode == 0, res.stderr
    data: dict[str, object] = json.loads(res.stdout)
    return data


def make_dataset(root: Path, seed: int = 3) -> None:
    """~20 MiB: small files in a few directories, some multi-block files, an empty file."""
    rng = random.Random(seed)
    files = {f"imgs/c{i % 3}/img{i:03d}.jpg": rng.randint(1, 200_000) for i in range(40)}
    files.update({f"shards/s{i}.tar": 3 * 1024 * 1024 + 4097 * i for i in range(4)})
    files.update({"big/one.bin": 5 * 1024 * 1024 + 1, "empty": 0})
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))


# ------------------------------------------------------------------------------- progress


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_final_line_format() -> None:
    assert final_line(1234, 1234, 6012954214, 6012954214, 12.34) == (
        "cached 1234/1234 files, 5.6 GiB/5.6 GiB (100.0%) in 12.3s"
    )
    # an incomplete load never rounds up to 100.0%
    assert "(99.9%)" in final_line(9, 10, 10**9 - 1, 10**9, 1.0)
    assert format_eta(7) == "0:07" and format_eta(754) == "12:34" and format_eta(10930) == "3:02:10"


def test_progress_log_lines_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=False, log_interval=5.0, clock=clock)
    p.add_total(10, 100_000_000)
    p.tick(force=True)
    assert "listing" in out.getvalue() and "/>=10 files" in out.getvalue()  # totals not final yet
    p.totals_final()
    clock.t += 2.0
    p.advance(files=5, nbytes=50_000_000, loaded=50_000_000)
    p.tick()  # within the interval: nothing new
    assert out.getvalue().count("\n") == 1
    clock.t += 4.0
    p.tick()
    last = out.getvalue().splitlines()[-1]
    assert "5/10 files" in last and "50.0%" in last
    assert "MB/s" in last and "ETA 0:" in last
    assert "\r" not in out.getvalue()
    p.finish(final_line(10, 10, 100, 100, 1.0))
    assert out.getvalue().splitlines()[-1].startswith("cached 10/10 files")


def test_progress_tty_redraws_in_place_and_quiet() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=True, tty_interval=0.2, clock=clock)
    p.add_total(2, 2048)
    p.totals_final()
    for _ in range(3):
        clock.t += 0.5
        p.advance(files=0, nbytes=100, loaded=100)
        p.tick()
    text = out.getvalue()
    assert text.count("\r") == 3 and "\n" not in text
    p.finish("done")
    assert out.getvalue().endswith("\r\x1b[Kdone\n")
    q = io.StringIO()
    pq = Progress(q, tty=True, quiet=True, clock=clock)
    pq.add_total(1, 1)
    pq.tick(force=True)
    pq.finish("only this")
    assert q.getvalue() == "only this\n"


# ------------------------------------------------------------------------------- through a mount (local source)


@pytest.fixture(scope="module")
def local_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("warm-src")
    make_dataset(root)
    return root


@needs_fuse
@pytest.mark.fuse
def test_load_through_mount_then_status_100(local_src: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with Mount(str(local_src), str(mnt), "--cache-dir", str(tmp_path / "cache"), "--block-size", "1Mi") as m:
        before = status_json(m.mnt)["cached"]
        assert isinstance(before, dict) and before["fraction"] < 1.0
        res = fluidfs("load", m.mnt, "--parallel", "8")
        assert res.returncode == 0, res.stderr
        done, total, pct = final(res.stdout)
        assert done == total == 46 and pct == 100.0
        st = status_json(m.mnt)
        cached = st["cached"]
        assert isinstance(cached, dict)
        assert cached["fraction"] == 1.0 and cached["files"] == 46 and cached["fully_cached_files"] == 46
        assert st["dataset"] and st["sources"] == [f"file://{local_src}"]
        tiers = st["tiers"]
        assert isinstance(tiers, dict) and tiers["ssd"]["used_bytes"] > 0 and tiers["ssd"]["quota_bytes"] > 0
        text = fluidfs("status", m.mnt)
        assert text.returncode == 0 and "100.0% of" in text.stdout and "46/46 files" in text.stdout
        assert "hit ratio" in text.stdout and "block size 1 MiB" in text.stdout
        # a rerun finds everything cached and reads nothing
        again = fluidfs("load", m.mnt)
        assert again.returncode == 0 and final(again.stdout)[2] == 100.0
        assert "0 B loaded now; 46 files were already cached" in again.stderr
        # cache flags belong to SOURCE loads
        bad = fluidfs("load", m.mnt, "--cache-dir", str(tmp_path / "x"))
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


@needs_fuse
@pytest.mark.fuse
def test_load_path_subset(local_src: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with Mount(str(local_src), str(mnt), "--block-size", "1Mi") as m:  # memory tier only
        res = fluidfs("load", m.mnt, "big/one.bin", "shards/s0.tar")
        assert res.returncode == 0, res.stderr
        assert final(res.stdout)[:2] == (2, 2)
        res = fluidfs("load", os.path.join(m.mnt, "shards"))  # a directory inside the mount
        assert res.returncode == 0, res.stderr
        assert final(res.stdout)[:2] == (4, 4) and "1 files were already cached" in res.stderr
        sub = status_json(m.mnt, "shards", "big/one.bin")["cached"]
        assert isinstance(sub, dict) and sub["fraction"] == 1.0 and sub["files"] == 5
        whole = status_json(m.mnt)["cached"]
        assert isinstance(whole, dict) and whole["files"] == 46 and whole["fraction"] < 1.0
        missing = fluidfs("load", m.mnt, "no/such/dir")
        assert missing.returncode == 2 and "no/such/dir" in missing.stderr


@needs_fuse
@pytest.mark.fuse
def test_source_load_refuses_a_cache_dir_held_by_a_mount(local_src: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with Mount(str(local_src), str(tmp_path / "mnt"), "--cache-dir", str(cache)) as m:
        res = fluidfs("load", str(local_src), "--cache-dir", str(cache))
        assert res.returncode == 1
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "load through the mountpoint" in res.stderr and m.mnt in res.stderr


def test_source_load_usage_errors(local_src: Path, tmp_path: Path) -> None:
    res = fluidfs("load", str(local_src))
    assert res.returncode == 2 and "--cache-dir" in res.stderr
    res = fluidfs("load", str(local_src), "nope", "--cache-dir", str(tmp_path / "c"))
    assert res.returncode == 2 and "nope" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = fluidfs("load", str(local_src), "--cache-dir", str(tmp_path / "c"), "--parallel", "0")
    assert res.returncode == 2


def test_source_load_local_then_rerun_skips(local_src: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    res = fluidfs("load", str(local_src), "--cache-dir", cache, "--block-size", "1Mi", "imgs")
    assert res.returncode == 0, res.stderr
    assert final(res.stdout)[:3] == (40, 40, 100.0)
    res = fluidfs("load", str(local_src), "--cache-dir", cache, "--block-size", "1Mi")
    assert res.returncode == 0 and final(res.stdout)[:3] == (46, 46, 100.0)
    assert "41 files were already cached" in res.stderr  # the 40 images and the empty file
    # too small a cache with eviction none: loads what fits, says so, exit 1
    small = fluidfs(
        "load",
        str(local_src),
        "--cache-dir",
        str(tmp_path / "small"),
        "--block-size",
        "1Mi",
        "--cache-size",
        "4Mi",
        "--free-space-floor",
        "0",
    )
    assert small.returncode == 1 and "full" in small.stderr
    assert final(small.stdout)[2] < 100.0


# ------------------------------------------------------------------------------- from S3, no mount


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, local_src: Path) -> Iterator[object]:
    from concurrent.futures import ThreadPoolExecutor

    from fluidfs.embedded.s3server import S3Server

    with S3Server("seaweed", data_dir=tmp_path_factory.mktemp("weed")) as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        rels = [os.path.relpath(os.path.join(d, n), local_src) for d, _s, ns in os.walk(local_src) for n in ns]

        def put(rel: str) -> None:
            client.put_object(Bucket=BUCKET, Key=rel, Body=(local_src / rel).read_bytes())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, rels))
        yield server


def running(server: object) -> object:
    """The module's S3 server, restarted if an earlier test killed it (outage tests)."""
    if not server.running:  # type: ignore[attr-defined]
        server.restart()  # type: ignore[attr-defined]
    return server


def test_load_interrupted_then_rerun_completes(s3: object, tmp_path: Path) -> None:
    from tools.bench.proxy import ProxyThread

    server = running(s3)
    cache = str(tmp_path / "cache")
    env = {k: v for k, v in {**os.environ, **server.env()}.items() if k != "AWS_ENDPOINT_URL"}  # type: ignore[attr-defined]
    with ProxyThread(("127.0.0.1", server.port), delay_down=0.0, bandwidth_mbit=40) as proxy:  # type: ignore[attr-defined]
        cmd = [
            sys.executable,
            "-m",
            "fluidfs",
            "load",
            f"s3://{BUCKET}",
            "--cache-dir",
            cache,
            "--block-size",
            "1Mi",
            "--parallel",
            "4",
            "--endpoint",
            f"http://127.0.0.1:{proxy.port}",
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (os.path.isdir(cache) and SSDTier.inspect(cache).blocks >= 2):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no block was loaded"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, (out, err)
    assert out.startswith("interrupted: cached ") and "so far" in out, out
    info = SSDTier.inspect(cache, verify_headers=True)
    assert info.blocks >= 2 and info.tmp_files == 0 and info.bad_headers == 0 and info.locked_by is None
    res = fluidfs("load", f"s3://{BUCKET}", "--cache-dir", cache, "--block-size", "1Mi", env=server.env())  # type: ignore[attr-defined]
    assert res.returncode == 0, res.stderr
    assert final(res.stdout)[:3] == (46, 46, 100.0)
    total = FINAL.search(res.stdout).group(4)  # type: ignore[union-attr]
    loaded = re.search(r"fluidfs: (.+) loaded now", res.stderr)
    assert loaded and loaded.group(1) != total, res.stderr  # the rerun skipped what was cached


@needs_fuse
@pytest.mark.fuse
def test_load_source_then_read_everything_with_the_server_down(s3: object, local_src: Path, tmp_path: Path) -> None:
    from fluidfs.demo import drop_page_cache

    server = running(s3)
    cache = str(tmp_path / "cache")
    env = server.env()  # type: ignore[attr-defined]
    res = fluidfs("load", f"s3://{BUCKET}", "--cache-dir", cache, "--block-size", "1Mi", "--quiet", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1 and final(res.stdout)[:3] == (46, 46, 100.0)
    assert not os.listdir(tmp_path / "cache" / "blocks") == []
    with Mount(f"s3://{BUCKET}", str(tmp_path / "mnt"), "--cache-dir", cache, "--block-size", "1Mi", env=env) as m:
        st = status_json(m.mnt)  # the mount finds every block the load stored: same keys
        cached = st["cached"]
        assert isinstance(cached, dict) and cached["fraction"] == 1.0 and cached["files"] == 46
        server.kill()  # type: ignore[attr-defined]
        drop_page_cache()
        n = compare_tree(m.mnt, str(local_src), mtime_of=lambda _rel, _st: None)
        assert n == 46
        after = status_json(m.mnt)
        source = after["source"]
        assert isinstance(source, dict) and source["requests_by_op"].get("read", 0) == 0
        assert after["tiers"]["ssd"]["hits"] > 0  # type: ignore[index]


@needs_fuse
@pytest.mark.fuse
def test_load_through_mount_counts_read_errors(s3: object, local_src: Path, tmp_path: Path) -> None:
    server = running(s3)
    env = server.env()  # type: ignore[attr-defined]
    flags = ("--block-size", "1Mi", "-o", "max_attempts=1", "-o", "connect_timeout=1")
    with Mount(f"s3://{BUCKET}", str(tmp_path / "mnt"), *flags, env=env) as m:
        sum(1 for _ in os.walk(m.mnt))  # listings are cached: the tree stays visible
        ok = fluidfs("load", m.mnt, "big")
        assert ok.returncode == 0, ok.stderr
        server.kill()  # type: ignore[attr-defined]
        res = fluidfs("load", m.mnt, "--parallel", "4")
        assert res.returncode == 1, (res.stdout, res.stderr)
        done, total, pct = final(res.stdout)
        assert total == 46 and 2 <= done < 46 and pct < 100.0  # big/one.bin and the empty file
        assert re.search(r"fluidfs: \d+ files could not be loaded: .*Input/output error", res.stderr), res.stderr
        assert os.path.ismount(m.mnt)


def test_source_load_of_a_dataset_file_with_two_mounts(local_src: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    (other / "x" / "y.bin").write_bytes(b"y" * 3_000_000)
    cache = tmp_path / "cache"
    doc = tmp_path / "ds.yaml"
    doc.write_text(
        "apiVersion: fluidfs.io/v1alpha1\nkind: Dataset\nmetadata: {name: two}\nspec:\n"
        f"  mounts:\n    - {{mountPoint: 'local://{local_src}', path: /data/main}}\n"
        f"    - {{mountPoint: 'local://{other}', path: /data/other}}\n"
        f"  cache: {{directory: '{cache}', blockSize: 1Mi}}\n"
    )
    res = fluidfs("load", str(doc), "/data/other")  # cache dir and block size from the document
    assert res.returncode == 0, res.stderr
    assert final(res.stdout)[:3] == (1, 1, 100.0)
    assert SSDTier.inspect(str(cache)).blocks == 3
    res = fluidfs("load", str(doc), "/data")  # both mounts; /data/other is found cached
    assert res.returncode == 0, res.stderr
    assert final(res.stdout)[:3] == (47, 47, 100.0)
    assert "2 files were already cached" in res.stderr, res.stderr  # y.bin and the empty file
    res = fluidfs("load", str(doc), "/elsewhere")
    assert res.returncode == 2 and "/data/main, /data/other" in res.stderr
