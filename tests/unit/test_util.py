"""The shared helpers of fluidfs/util: the ETag rule, the mount table, processes, Prometheus pages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluidfs.util.etag import normalize_etag
from fluidfs.util.mounts import answers, is_mounted, mount_at, mount_table, mounts_under, resolve, unescape
from fluidfs.util.proc import cmdline, pid_alive, process_uptime, start_time, state
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


def test_mount_table_device_and_top_mount(tmp_path: Path) -> None:
    f = tmp_path / "mountinfo"
    f.write_text(MOUNTINFO + "42 40 0:46 / /mnt/my\\040data rw - tmpfs tmpfs rw\n")
    table = mount_table(str(f))
    assert [m.dev for m in table] == ["8:1", "0:44", "0:45", "0:46"]
    top = mount_at("/mnt/my data", table)
    assert top is not None and top.fstype == "tmpfs" and top.dev == "0:46"  # the later one stacks on top
    assert mount_at("/mnt", table) is None


def test_resolve_follows_symlinks_like_realpath(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "abs").symlink_to(tmp_path / "real")
    (tmp_path / "rel").symlink_to("real/sub")
    (tmp_path / "chain").symlink_to("abs")
    (tmp_path / "loop").symlink_to("loop")
    for p in ("abs", "rel", "chain", "abs/sub/..", "rel/../sub", "real/./sub", "missing/x", "abs/missing"):
        assert resolve(str(tmp_path / p)) == os.path.realpath(tmp_path / p), p
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert resolve("chain/sub") == str(tmp_path / "real" / "sub")
    finally:
        os.chdir(old)
    with pytest.raises(OSError):
        resolve(str(tmp_path / "loop"))


def test_resolve_never_stats_a_mount_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    mountpoint = str(tmp_path / "real")
    seen: list[str] = []
    lstat = os.lstat

    def spy(path: str) -> os.stat_result:
        seen.append(path)
        return lstat(path)

    monkeypatch.setattr(os, "lstat", spy)
    assert resolve(str(tmp_path / "link" / "x"), {"/", mountpoint}) == mountpoint + "/x"
    assert str(tmp_path / "link") in seen  # a symlink is looked at ...
    assert mountpoint not in seen  # ... a mount point never (it may hang)


def test_process_identity_and_probe() -> None:
    me = os.getpid()
    assert state(me) in ("R", "S")
    started = start_time(me)
    assert isinstance(started, int) and started > 0 and start_time(me) == started
    assert cmdline(me)[0] == sys.executable or os.path.basename(cmdline(me)[0]).startswith("python")
    assert start_time(2**22 + 12345) is None and cmdline(2**22 + 12345) == [] and state(2**22 + 12345) is None
    assert answers("/", 5.0)
    assert answers("/no/such/path", 5.0)  # an error is an answer
