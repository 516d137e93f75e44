"""The shared helpers of fluidfs/util: the ETag rule, the mount table, processes, Prometheus pages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fluidfs.util.etag import normalize_etag
from fluidfs.util.mounts import is_mounted, mount_table, mounts_under, unescape
from fluidfs.util.proc import pid_alive, process_uptime
from fluidfs.util.prom import parse_samples, total

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 0:44 / /mnt/my\\040data rw,nosuid,nodev,relatime shared:2 - fuse.fluidfs fluidfs:imagenet ro\n"
    "41 40 0:45 / /mnt/my\\040data/sub rw - tmpfs tmpfs rw\n"
)


def test_one_etag_rule() -> None:
    assert normalize_etag('"abc-1"') == "abc-1"
    assert normalize_etag('  "abc"  ') == "abc"
    assert normalize_etag("unquoted") == "unquoted"
    assert normalize_etag('W/"abc"') == ""  # weak: never matches If-Match, so no version
    assert normalize_etag(None) == "" and normalize_etag("") == ""


def test_mount_table_parsing(tmp_path: Path) -> None:
    f = tmp_path / "mountinfo"
    f.write_text(MOUNTINFO)
    table = mount_table(str(f))
    assert [(m.mountpoint, m.fstype, m.source) for m in table] == [
        ("/", "ext4", "/dev/sda1"),
        ("/mnt/my data", "fuse.fluidfs", "fluidfs:imagenet"),
        ("/mnt/my data/sub", "tmpfs", "tmpfs"),
    ]
    assert unescape("a\\011b\\134c") == "a\tb\\c"


def test_mount_table_of_this_process(tmp_path: Path) -> None:
    assert is_mounted("/")  # the root is always in the table
    assert not is_mounted(str(tmp_path))
    assert mounts_under(str(tmp_path)) == []
    assert any(m.mountpoint == "/" for m in mount_table())


def test_pid_alive_zombie_and_reap() -> None:
    assert pid_alive(os.getpid())
    up = process_uptime(os.getpid())
    assert up is not None and up >= 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(child.pid)  # exited: a zombie until reaped, which counts as gone
    assert not pid_alive(child.pid, reap=True)
    assert child.poll() is not None  # reaped (by us or by Popen)
    assert process_uptime(child.pid) is None


def test_prometheus_samples_and_totals() -> None:
    page = (
        "# TYPE fluidfs_cache_hits_total counter\n"
        'fluidfs_cache_hits_total{dataset="d",tier="mem"} 3\n'
        'fluidfs_cache_hits_total{dataset="d",tier="ssd"} 4\n'
    )
    samples = parse_samples(page)
    assert samples[0].labels == {"dataset": "d", "tier": "mem"} and samples[0].value == 3.0
    assert total(samples, "fluidfs_cache_hits_total") == 7.0
    assert total(samples, "fluidfs_cache_hits_total", tier="ssd") == 4.0
    assert total(samples, "missing") == 0.0
