"""Real FUSE over a real S3 server (SeaweedFS) on loopback: the whole tree, byte for byte;
an object beside a same-named prefix; an outage gives EIO and the mount recovers."""

from __future__ import annotations

import errno
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from fluidfs.embedded.s3server import S3Server
from tests.fusehelp import Mount, compare_tree, fluidfs, make_tree, mmap_compare, needs_fuse, random_preads

pytestmark = [needs_fuse, pytest.mark.fuse]

BUCKET = "fusetest"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server("seaweed", data_dir=tmp_path_factory.mktemp("weed")) as s:
        yield s


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, server: S3Server) -> tuple[Path, dict[str, float]]:
    """Upload the reference tree under tree/; return it and each key's LastModified."""
    root = tmp_path_factory.mktemp("s3ref")
    make_tree(str(root), many=3000)
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    files = []
    for d, _dirs, names in os.walk(root):
        for n in names:
            files.append(os.path.relpath(os.path.join(d, n), root))

    def put(rel: str) -> None:
        with open(root / rel, "rb") as f:
            client.put_object(Bucket=BUCKET, Key=f"tree/{rel}", Body=f.read())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))
    client.put_object(Bucket=BUCKET, Key="tree/emptydir/", Body=b"")
    client.put_object(Bucket=BUCKET, Key="outage/cold.bin", Body=b"c" * 300_000)
    client.put_object(Bucket=BUCKET, Key="conflict/a", Body=b"object a")
    client.put_object(Bucket=BUCKET, Key="conflict/a/inner", Body=b"inner")
    mtimes = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="tree/"):
        for o in page.get("Contents", []):
            mtimes[o["Key"][len("tree/") :]] = o["LastModified"].timestamp()
    return root, mtimes


@pytest.fixture(scope="module")
def mounted(
    server: S3Server, tree: tuple[Path, dict[str, float]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mount]:
    mnt = tmp_path_factory.mktemp("s3mnt")
    env = server.env()
    with Mount(
        f"s3://{BUCKET}", str(mnt), "--block-size", "1Mi", "--metadata-ttl", "1", "--negative-ttl", "1", env=env
    ) as m:
        yield m


def test_whole_tree_matches(mounted: Mount, tree: tuple[Path, dict[str, float]]) -> None:
    root, mtimes = tree
    n = compare_tree(os.path.join(mounted.mnt, "tree"), str(root), mtime_of=lambda rel, _st: mtimes[rel])
    assert n > 3000


def test_preads_mmap_past_eof(mounted: Mount, tree: tuple[Path, dict[str, float]]) -> None:
    root, _ = tree
    big = os.path.join(mounted.mnt, "tree/big.bin")
    random_preads(big, str(root / "big.bin"), count=200, threads=16)
    mmap_compare(big, str(root / "big.bin"))
    with open(big, "rb") as f:
        f.seek(os.path.getsize(big) + 10)
        assert f.read(10) == b""


def test_object_beside_prefix_directory_wins(mounted: Mount) -> None:
    conflict = os.path.join(mounted.mnt, "conflict")
    assert os.listdir(conflict) == ["a"]
    assert os.path.isdir(os.path.join(conflict, "a"))
    assert open(os.path.join(conflict, "a", "inner"), "rb").read() == b"inner"


def test_writes_refused(mounted: Mount) -> None:
    with pytest.raises(OSError) as ei:
        open(os.path.join(mounted.mnt, "tree", "new"), "wb")
    assert ei.value.errno == errno.EROFS


def test_source_outage_eio_then_recovery(server: S3Server, mounted: Mount, tree: tuple[Path, dict[str, float]]) -> None:
    root, _ = tree
    warm = os.path.join(mounted.mnt, "tree/small.txt")
    assert open(warm, "rb").read() == (root / "small.txt").read_bytes()
    cold = os.path.join(mounted.mnt, "outage/cold.bin")
    os.stat(cold)
    server.kill()
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError) as ei:
            with open(cold, "rb") as f:
                f.read()
        assert ei.value.errno == errno.EIO
        assert time.monotonic() - t0 < 120  # bounded retries, never an indefinite hang
        assert os.path.ismount(mounted.mnt)
        assert open(warm, "rb").read() == (root / "small.txt").read_bytes()  # cache still serves
    finally:
        server.restart()
    deadline = time.monotonic() + 30
    while True:
        try:
            with open(cold, "rb") as f:
                assert f.read() == b"c" * 300_000
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_mount_failure_modes(server: S3Server, tree: object, tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    env = server.env()
    bad_creds = {**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    unreachable = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    cases = [
        (["mount", "s3://no-such-bucket", str(mnt)], env, 3, "does not exist"),
        (["mount", f"s3://{BUCKET}", str(mnt)], bad_creds, 3, "denied"),
        (
            ["mount", f"s3://{BUCKET}", str(mnt), "-o", "connect_timeout=1", "-o", "max_attempts=1"],
            unreachable,
            3,
            "127.0.0.1:9",
        ),
    ]
    for args, e, code, text in cases:
        res = fluidfs(*args, env=e)
        assert res.returncode == code, (args, res.stderr)
        assert text in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "wrong-secret" not in res.stderr
        assert not os.path.ismount(mnt)
