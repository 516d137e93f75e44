"""Real FUSE over sources that stop answering (SeaweedFS frozen with SIGSTOP, a paused HTTP
server): a reader gets EIO within the request timeout (not minutes), one paused source does not
starve the other sources of the same dataset, and a mount over a paused or missing source ends
with exit code 3 within its timeout."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fuse import Mount, fluidfs, fuse_control_fs, needs_fuse
from tests.support.httpserver import RangeHTTPServer
from tests.support.s3server import S3Server

pytestmark = needs_fuse

BUCKET = "outage"
MiB = 1 << 20
SLACK = 10.0  # generous: the machine is shared and noisy; the old code took minutes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server("seaweed", data_dir=tmp_path_factory.mktemp("weed")) as s:
        client = s.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="data/seq.bin", Body=os.urandom(8 * MiB))
        client.put_object(Bucket=BUCKET, Key="data/warm.txt", Body=b"warm\n")
        for i in range(40):
            client.put_object(Bucket=BUCKET, Key=f"data/f{i:02d}.bin", Body=os.urandom(2 * MiB))
        yield s


@pytest.fixture
def union(server: S3Server, tmp_path: Path) -> Path:
    """A Dataset of the S3 bucket at /s3 and a local directory at /local."""
    local = tmp_path / "localsrc"
    local.mkdir()
    (local / "local.bin").write_bytes(os.urandom(MiB))
    doc = tmp_path / "union.yaml"
    doc.write_text(
        f"""apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata: {{name: union}}
spec:
  mounts:
    - mountPoint: s3://{BUCKET}/data
      path: /s3
      options: {{endpoint: "{server.endpoint}", region: {server.region}}}
    - mountPoint: {local}
      path: /local
"""
    )
    return doc


@pytest.fixture
def fuse_control() -> Iterator[None]:
    with fuse_control_fs():
        yield


def read_all(path: str) -> tuple[int, float]:
    """Read a file to its end; (errno or 0, seconds taken)."""
    t0 = time.monotonic()
    try:
        with open(path, "rb", buffering=0) as f:
            while f.read(MiB):
                pass
    except OSError as exc:
        return exc.errno or -1, time.monotonic() - t0
    return 0, time.monotonic() - t0


def test_paused_source_gives_eio_within_the_request_timeout(server: S3Server, union: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    flags = ("--request-timeout", "3", "--block-size", "1Mi", "--prefetch-siblings", "0")
    with Mount(str(union), str(mnt), *flags, env=server.env()):
        s3 = mnt / "s3"
        assert "seq.bin" in os.listdir(s3)  # metadata known, no block cached
        assert os.stat(s3).st_mtime > 1.6e9  # an S3 prefix: its newest object's time, not 1970
        assert (s3 / "warm.txt").read_bytes() == b"warm\n"
        server.pause()
        try:
            dd = subprocess.run(
                ["dd", f"if={s3 / 'seq.bin'}", "of=/dev/null", "bs=1M"], capture_output=True, text=True, timeout=300
            )
            assert dd.returncode != 0 and "Input/output error" in dd.stderr, dd.stderr
            code, took = read_all(str(s3 / "f00.bin"))
            assert code == errno.EIO and took < 3 + SLACK, took
            assert (s3 / "warm.txt").read_bytes() == b"warm\n"  # cached blocks keep being served
            assert read_all(str(mnt / "local" / "local.bin"))[0] == 0  # and the other source
        finally:
            server.resume()
        deadline = time.monotonic() + 60
        while read_all(str(s3 / "seq.bin"))[0] != 0:  # it answers again: so does the mount
            assert time.monotonic() < deadline
            time.sleep(0.5)


def test_sequential_reader_of_a_paused_source_fails_within_the_timeout(
    server: S3Server, union: Path, tmp_path: Path
) -> None:
    """The old code added up single-flight waiters and kernel retries: 361 s for one dd."""
    mnt = tmp_path / "m"
    with Mount(str(union), str(mnt), "--request-timeout", "3", "--block-size", "1Mi", env=server.env()):
        assert "seq.bin" in os.listdir(mnt / "s3")
        server.pause()
        try:
            t0 = time.monotonic()
            dd = subprocess.run(
                ["dd", f"if={mnt / 's3' / 'seq.bin'}", "of=/dev/null", "bs=128k"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            took = time.monotonic() - t0
        finally:
            server.resume()
        assert dd.returncode != 0 and "Input/output error" in dd.stderr, dd.stderr
        assert took < 3 + SLACK, took


def test_one_paused_source_does_not_starve_the_others(
    server: S3Server, union: Path, tmp_path: Path, fuse_control: None
) -> None:
    """40 readers hang on the paused S3 source (more than its 32 threads, and more than the
    kernel's default FUSE background queue of 12); a local file of the same dataset is still
    read at once."""
    mnt = tmp_path / "m"
    flags = ("--request-timeout", "20", "--block-size", "1Mi", "--prefetch-siblings", "0")
    with Mount(str(union), str(mnt), *flags, env=server.env()):
        names = sorted(n for n in os.listdir(mnt / "s3") if n.startswith("f"))
        assert len(names) == 40
        results: list[tuple[int, float]] = []
        server.pause()
        try:
            readers = [
                threading.Thread(target=lambda n=n: results.append(read_all(str(mnt / "s3" / n)))) for n in names
            ]
            for t in readers:
                t.start()
            time.sleep(2)  # every S3 thread is now stuck
            code, took = read_all(str(mnt / "local" / "local.bin"))
            assert code == 0 and took < 5, took
            assert len(results) == 0  # the S3 readers are still waiting
        finally:
            server.resume()
            for t in readers:
                t.join(timeout=120)
        assert len(results) == 40


def test_mount_over_a_paused_or_missing_source_is_exit_3(server: S3Server, tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    env = server.env()
    res = fluidfs("mount", f"s3://{BUCKET}/no-such-prefix", str(mnt), env=env)
    assert res.returncode == 3, res.stderr
    assert "no objects under prefix 'no-such-prefix/'" in res.stderr and not os.path.ismount(mnt)
    server.pause()
    try:
        t0 = time.monotonic()
        res = fluidfs("mount", f"s3://{BUCKET}/data", str(mnt), "--request-timeout", "3", env=env)
        took = time.monotonic() - t0
    finally:
        server.resume()
    assert res.returncode == 3, res.stderr
    assert "no answer within 3s" in res.stderr and not os.path.ismount(mnt)
    assert took < 3 + SLACK + 5, took  # + the start of two Python processes
    res = fluidfs("mount", f"s3://{BUCKET}/data", str(mnt), "--request-timeout", "30", "--timeout", "20", env=env)
    assert res.returncode == 2 and "--timeout 20s must exceed the source request timeout" in res.stderr


def test_paused_http_source_gives_eio_within_the_request_timeout(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "big.bin").write_bytes(os.urandom(4 * MiB))
    mnt = tmp_path / "m"
    with RangeHTTPServer(www) as srv, Mount(srv.url, str(mnt), "--request-timeout", "3", "--block-size", "1Mi"):
        assert os.listdir(mnt) == ["big.bin"]
        srv.pause()
        try:
            code, took = read_all(str(mnt / "big.bin"))
        finally:
            srv.resume()
        assert code == errno.EIO and took < 3 + SLACK, took
