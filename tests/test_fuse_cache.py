"""Real FUSE (the CLI daemon) over SeaweedFS with an SSD cache directory: the cache survives
unmount and kill -9 (zero source reads on remount), damaged block files are refetched, a
full cache disk never fails reads, a second mount on the same cache dir is refused cleanly,
a changed object is seen after the metadata TTL without mixing versions, and the metrics
endpoint exports per-dataset cache/source/FUSE/readahead metrics without paths in labels.

Source reads are counted from the mount's own ``fluidfs_source_requests_total{op="read"}``.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fluidfs.cache.ssd import SSDTier
from fluidfs.embedded.s3server import S3Server
from tests.fusehelp import Mount, fluidfs, force_unmount, needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse]

BUCKET = "cachetest"
MiB = 1 << 20
BLOCK = MiB
# 8 MiB in 16 blocks: multi-block files with a short last block, and small files (one GET each)
FILES: dict[str, bytes] = {
    "data/shard-0.bin": random.Random(1).randbytes(3 * MiB + 12345),
    "data/shard-1.bin": random.Random(2).randbytes(2 * MiB),
    "data/shard-2.bin": random.Random(3).randbytes(2 * MiB + 1),
    **{f"data/small/img{i}.jpg": random.Random(10 + i).randbytes(40_000 + i * 1000) for i in range(6)},
}
N_BLOCKS = sum(-(-len(d) // BLOCK) for d in FILES.values())
FLAGS = ("--block-size", "1Mi", "--memory-size", "4Mi", "--cache-size", "64Mi", "--free-space-floor", "0")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server("seaweed", data_dir=tmp_path_factory.mktemp("weed")) as s:
        client = s.client()
        client.create_bucket(Bucket=BUCKET)
        for key, body in FILES.items():
            client.put_object(Bucket=BUCKET, Key=key, Body=body)
        yield s


def drop_page_cache() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def scrape(m: Mount) -> list[tuple[str, dict[str, str], float]]:
    url = m.record()["metrics"]
    assert isinstance(url, str)
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def source_reads(m: Mount) -> int:
    return int(total(scrape(m), "fluidfs_source_requests_total", op="read"))


def read_everything(mnt: str) -> None:
    """Read every file through the mount (1 MiB reads) and compare with the source bytes."""
    for key, data in FILES.items():
        with open(os.path.join(mnt, key), "rb") as f:
            got = bytearray()
            while chunk := f.read(MiB):
                got += chunk
        assert bytes(got) == data, f"bytes differ in {key}"


def wait_blocks_on_disk(cache_dir: str, n: int, timeout: float = 30.0) -> None:
    """Background SSD writes land shortly after the reads that caused them."""
    deadline = time.monotonic() + timeout
    while (blocks := SSDTier.inspect(cache_dir).blocks) < n:
        assert time.monotonic() < deadline, f"only {blocks} of {n} blocks reached the SSD tier"
        time.sleep(0.05)


def block_files(cache_dir: str) -> list[Path]:
    return sorted(p for p in Path(cache_dir, "blocks").glob("*/*") if not p.name.startswith("."))


def kill_daemon(m: Mount) -> None:
    pid = m.record()["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1][:1] == "Z":
                    break
        except OSError:
            break
        time.sleep(0.02)
    subprocess.run(["fusermount3", "-uz", m.mnt], capture_output=True)
    assert not os.path.ismount(m.mnt)


def fill(server: S3Server, mnt: str, cache_dir: str) -> None:
    """Mount, read everything (all from the source), wait for every block to be on SSD, unmount."""
    with Mount(f"s3://{BUCKET}", mnt, "--cache-dir", cache_dir, *FLAGS, env=server.env()) as m:
        read_everything(m.mnt)
        assert source_reads(m) == N_BLOCKS
        wait_blocks_on_disk(cache_dir, N_BLOCKS)


def test_cache_survives_unmount_and_kill9(server: S3Server, tmp_path: Path) -> None:
    mnt, cache_dir = str(tmp_path / "mnt"), str(tmp_path / "cache")
    fill(server, mnt, cache_dir)
    # remount: every block comes from the SSD tier
    with Mount(f"s3://{BUCKET}", mnt, "--cache-dir", cache_dir, *FLAGS, env=server.env()) as m:
        drop_page_cache()
        read_everything(m.mnt)
        samples = scrape(m)
        assert total(samples, "fluidfs_source_requests_total", op="read") == 0
        assert total(samples, "fluidfs_cache_hits_total", tier="ssd") >= N_BLOCKS
        # more reads after a crash: read again, then kill -9 while mounted
        drop_page_cache()
        read_everything(m.mnt)
        kill_daemon(m)
        # the dead daemon's lock is gone with it; its blocks are all reused
        res = fluidfs(
            "mount",
            f"s3://{BUCKET}",
            mnt,
            "--metrics-addr",
            "127.0.0.1:0",
            "--cache-dir",
            cache_dir,
            *FLAGS,
            env=server.env(),
        )
        assert res.returncode == 0, res.stderr
        drop_page_cache()
        read_everything(mnt)
        assert source_reads(m) == 0
    assert SSDTier.inspect(cache_dir).blocks == N_BLOCKS


def test_blocks_written_before_kill9_are_reused(server: S3Server, tmp_path: Path) -> None:
    mnt, cache_dir = str(tmp_path / "mnt"), str(tmp_path / "cache")
    m = Mount(f"s3://{BUCKET}", mnt, "--cache-dir", cache_dir, *FLAGS, env=server.env())
    with m:
        read_everything(m.mnt)
        wait_blocks_on_disk(cache_dir, N_BLOCKS)
        kill_daemon(m)  # no clean shutdown: nothing flushed, lock never released by us
        res = fluidfs(
            "mount",
            f"s3://{BUCKET}",
            mnt,
            "--metrics-addr",
            "127.0.0.1:0",
            "--cache-dir",
            cache_dir,
            *FLAGS,
            env=server.env(),
        )
        assert res.returncode == 0, res.stderr
        drop_page_cache()
        read_everything(mnt)
        assert source_reads(m) == 0


def test_damaged_block_files_are_refetched(server: S3Server, tmp_path: Path) -> None:
    mnt, cache_dir = str(tmp_path / "mnt"), str(tmp_path / "cache")
    fill(server, mnt, cache_dir)
    files = block_files(cache_dir)
    assert len(files) == N_BLOCKS
    flipped, truncated = files[0], files[len(files) // 2]
    with open(flipped, "r+b") as f:  # flip bytes in the payload (and one in the header)
        size = os.fstat(f.fileno()).st_size
        for off in (20, size - 1000, size - 1):
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0xFF]))
    os.truncate(truncated, os.path.getsize(truncated) // 2)
    with Mount(f"s3://{BUCKET}", mnt, "--cache-dir", cache_dir, *FLAGS, env=server.env()) as m:
        drop_page_cache()
        read_everything(m.mnt)
        samples = scrape(m)
        assert total(samples, "fluidfs_source_requests_total", op="read") == 2  # exactly the damaged blocks
        assert total(samples, "fluidfs_cache_hits_total", tier="ssd") >= N_BLOCKS - 2
        wait_blocks_on_disk(cache_dir, N_BLOCKS)  # and they were written back, valid
    info = SSDTier.inspect(cache_dir, verify_headers=True)
    assert info.blocks == N_BLOCKS and info.bad_headers == 0


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "tmpfs"
    d.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_full_cache_disk_never_fails_reads(server: S3Server, tmp_path: Path, tiny_tmpfs: Path) -> None:
    """8 MiB through a cache dir on a 2 MiB tmpfs with a 64 MiB quota and no free-space floor."""
    mnt, cache_dir = str(tmp_path / "mnt"), str(tiny_tmpfs / "cache")
    assert sum(map(len, FILES.values())) > 3 * 2 * MiB
    with Mount(f"s3://{BUCKET}", mnt, "--cache-dir", cache_dir, *FLAGS, env=server.env()) as m:
        for _round in range(2):
            drop_page_cache()
            read_everything(m.mnt)
        assert os.path.ismount(m.mnt)
        samples = scrape(m)
        assert total(samples, "fluidfs_cache_used_bytes", tier="ssd") <= 2 * MiB
        assert total(samples, "fluidfs_cache_rejected_total", tier="ssd") > 0
        assert total(samples, "fluidfs_fuse_errors_total", op="read") == 0
        st = os.statvfs(tiny_tmpfs)
        assert SSDTier.inspect(cache_dir).tmp_files == 0  # failed writes cleaned up
        assert st.f_blocks * st.f_frsize == 2 * MiB


def test_second_mount_on_same_cache_dir_is_refused(server: S3Server, tmp_path: Path) -> None:
    cache_dir = str(tmp_path / "cache")
    other = tmp_path / "other"
    other.mkdir()
    with Mount(f"s3://{BUCKET}", str(tmp_path / "mnt"), "--cache-dir", cache_dir, *FLAGS, env=server.env()) as m:
        pid = m.record()["pid"]
        res = fluidfs(
            "mount",
            f"s3://{BUCKET}",
            str(other),
            "--metrics-addr",
            "127.0.0.1:0",
            "--cache-dir",
            cache_dir,
            *FLAGS,
            env=server.env(),
        )
        try:
            assert res.returncode == 1, (res.returncode, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1, res.stderr
            assert "in use by another fluidfs mount" in lines[0] and f"pid {pid}" in lines[0], lines[0]
            assert "Traceback" not in res.stderr
            assert not os.path.ismount(other)
        finally:
            force_unmount(str(other))
        read_everything(m.mnt)  # the first mount is unharmed


def test_changed_object_new_bytes_after_ttl_open_handle_never_mixes(server: S3Server, tmp_path: Path) -> None:
    key = "change/obj.bin"
    old = random.Random(100).randbytes(3 * MiB + 5)
    new = random.Random(101).randbytes(3 * MiB + 5)
    client = server.client()
    client.put_object(Bucket=BUCKET, Key=key, Body=old)
    with Mount(
        f"s3://{BUCKET}",
        str(tmp_path / "mnt"),
        "--cache-dir",
        str(tmp_path / "cache"),
        *FLAGS,
        "--metadata-ttl",
        "1",
        "--readahead",
        "0",
        env=server.env(),
    ) as m:
        path = os.path.join(m.mnt, key)
        fd_old = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(fd_old, MiB, 0) == old[:MiB]  # block 0 read (and cached) before the change
            client.put_object(Bucket=BUCKET, Key=key, Body=new)
            time.sleep(1.5)  # past the metadata TTL
            fd_new = os.open(path, os.O_RDONLY)  # stays open while the old handle reads
            with open(path, "rb") as f:
                assert f.read() == new
            drop_page_cache()
            # the old handle: old bytes for what it can still get, EIO for the rest, never new bytes
            outcomes = []
            for off in range(0, len(old), 256 * 1024):
                try:
                    got = os.pread(fd_old, 256 * 1024, off)
                except OSError as exc:
                    assert exc.errno == errno.EIO, exc
                    outcomes.append("EIO")
                    continue
                assert got == old[off : off + 256 * 1024], f"old handle returned other bytes at {off}"
                outcomes.append("old")
            assert "old" in outcomes[:4], outcomes  # block 0 is still cached under the old version
            # the old handle's reads put old pages in the inode's page cache: a handle of the new
            # version, open meanwhile, must still read only new bytes
            for off in range(0, len(new), 256 * 1024):
                assert os.pread(fd_new, 256 * 1024, off) == new[off : off + 256 * 1024], f"new handle mixed at {off}"
            os.close(fd_new)
        finally:
            os.close(fd_old)
        with open(path, "rb") as f:
            assert f.read() == new


def test_metrics_endpoint(server: S3Server, tmp_path: Path) -> None:
    with Mount(
        f"s3://{BUCKET}", str(tmp_path / "mnt"), "--cache-dir", str(tmp_path / "cache"), *FLAGS, env=server.env()
    ) as m:
        read_everything(m.mnt)
        wait_blocks_on_disk(str(tmp_path / "cache"), N_BLOCKS)
        drop_page_cache()
        read_everything(m.mnt)  # second pass: SSD (and MEM) hits
        samples = scrape(m)
        dataset = m.record()["dataset"]
        assert isinstance(dataset, str) and dataset
    for tier in ("mem", "ssd"):
        assert total(samples, "fluidfs_cache_hits_total", dataset=dataset, tier=tier) > 0, tier
        assert total(samples, "fluidfs_cache_misses_total", dataset=dataset, tier=tier) > 0, tier
        assert total(samples, "fluidfs_cache_used_bytes", dataset=dataset, tier=tier) > 0, tier
        assert total(samples, "fluidfs_cache_quota_bytes", dataset=dataset, tier=tier) > 0, tier
    assert total(samples, "fluidfs_cache_evictions_total", dataset=dataset, tier="mem") > 0
    tiers_exported = {lab.get("tier") for n, lab, _v in samples if n == "fluidfs_cache_evictions_total"}
    assert tiers_exported == {"mem", "ssd"}, tiers_exported
    assert total(samples, "fluidfs_source_requests_total", dataset=dataset, kind="s3", op="read") == N_BLOCKS
    assert total(samples, "fluidfs_source_bytes_total", dataset=dataset, kind="s3") == sum(map(len, FILES.values()))
    assert total(samples, "fluidfs_source_request_duration_seconds_count", dataset=dataset, op="read") == N_BLOCKS
    assert total(samples, "fluidfs_fuse_operations_total", dataset=dataset, op="read") > 0
    assert total(samples, "fluidfs_fuse_operations_total", dataset=dataset, op="lookup") > 0
    assert total(samples, "fluidfs_fuse_read_bytes_total", dataset=dataset) >= 2 * sum(map(len, FILES.values()))
    assert total(samples, "fluidfs_readahead_issued_bytes_total", dataset=dataset) > 0
    names = {n for n, _lab, _v in samples}
    for expected in (
        "fluidfs_readahead_used_bytes_total",
        "fluidfs_readahead_wasted_bytes_total",
        "fluidfs_fuse_operation_duration_seconds_bucket",
        "fluidfs_metadata_hits_total",
    ):
        assert expected in names, expected
    basenames = {k.rsplit("/", 1)[-1] for k in FILES} | {"data", "small", BUCKET}
    for name, labels, _v in samples:
        if not name.startswith("fluidfs_"):
            continue
        assert labels.get("dataset") == dataset, (name, labels)
        for label, value in labels.items():
            assert "/" not in value and value not in basenames - {dataset}, f"{name}{{{label}={value!r}}} names a path"
