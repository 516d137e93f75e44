"""Real FUSE: mount a local directory through the CLI daemon and compare everything."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fusehelp import (
    Mount,
    compare_tree,
    fluidfs,
    force_unmount,
    make_tree,
    mmap_compare,
    needs_fuse,
    random_preads,
)

pytestmark = [needs_fuse, pytest.mark.fuse]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("localsrc")
    make_tree(str(root))
    return root


@pytest.fixture(scope="module")
def mounted(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Mount:
    mnt = tmp_path_factory.mktemp("mnt")
    with Mount(f"file://{tree}", str(mnt), "--block-size", "1Mi") as m:
        yield m


def test_whole_tree_matches(mounted: Mount, tree: Path) -> None:
    assert compare_tree(mounted.mnt, str(tree)) > 10_000


def test_random_preads_and_mmap(mounted: Mount, tree: Path) -> None:
    random_preads(os.path.join(mounted.mnt, "big.bin"), str(tree / "big.bin"), count=300)
    mmap_compare(os.path.join(mounted.mnt, "big.bin"), str(tree / "big.bin"))
    mmap_compare(os.path.join(mounted.mnt, "images/cls0/img0.jpg"), str(tree / "images/cls0/img0.jpg"))


def test_read_past_eof_and_empty(mounted: Mount) -> None:
    with open(os.path.join(mounted.mnt, "small.txt"), "rb") as f:
        f.seek(10_000)
        assert f.read(100) == b""
    assert open(os.path.join(mounted.mnt, "empty"), "rb").read() == b""
    assert os.listdir(os.path.join(mounted.mnt, "emptydir")) == []


def test_writes_get_erofs(mounted: Mount) -> None:
    m = mounted.mnt
    attempts = [
        lambda: open(os.path.join(m, "new"), "wb"),
        lambda: open(os.path.join(m, "small.txt"), "r+b"),
        lambda: open(os.path.join(m, "small.txt"), "ab"),
        lambda: os.mkdir(os.path.join(m, "d")),
        lambda: os.unlink(os.path.join(m, "small.txt")),
        lambda: os.rename(os.path.join(m, "small.txt"), os.path.join(m, "x")),
        lambda: os.chmod(os.path.join(m, "small.txt"), 0o777),
        lambda: os.symlink("small.txt", os.path.join(m, "link")),
        lambda: os.truncate(os.path.join(m, "small.txt"), 0),
        lambda: os.setxattr(os.path.join(m, "small.txt"), "user.x", b"1"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as ei:
            attempt()
        assert ei.value.errno == errno.EROFS, attempt


def test_stable_inodes_xattrs_and_statfs(mounted: Mount, tree: Path) -> None:
    p = os.path.join(mounted.mnt, "names/with space.txt")
    assert os.stat(p).st_ino == os.stat(p).st_ino
    assert os.getxattr(p, "user.fluidfs.source").decode() == f"file://{tree}/names/with space.txt"
    assert "user.fluidfs.source" in os.listxattr(p)
    st = os.statvfs(mounted.mnt)
    assert st.f_namemax == 255
    line = next(ln for ln in open("/proc/mounts") if f" {mounted.mnt} " in ln)
    fsname, _, fstype, opts = line.split()[:4]
    assert fsname.startswith("fluidfs:") and fstype == "fuse.fluidfs" and "ro" in opts.split(",")


def test_sigterm_unmounts_cleanly(tree: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    pidfile = tmp_path / "pid"
    res = fluidfs("mount", f"file://{tree}", str(mnt), "--pid-file", str(pidfile), "--metrics-addr", "none")
    assert res.returncode == 0, res.stderr
    try:
        pid = int(pidfile.read_text())
        assert os.listdir(mnt)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.ismount(mnt)
    finally:
        force_unmount(str(mnt))


def test_foreground_mode(tree: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "fg"
    mnt.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fluidfs",
            "mount",
            f"file://{tree}",
            str(mnt),
            "--foreground",
            "--metrics-addr",
            "none",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open(mnt / "small.txt", "rb").read() == b"hello fluidfs\n"
        assert fluidfs("umount", str(mnt)).returncode == 0
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        force_unmount(str(mnt))


def test_mount_failures_leave_nothing_mounted(tree: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "f"
    mnt.mkdir()
    cases = [
        (["mount", str(tmp_path / "nope.yaml"), str(mnt)], 2),
        (["mount", "ftp://host/x", str(mnt)], 2),
        (["mount", f"file://{tree}", str(tmp_path / "missing")], 1),
        (["mount", f"file://{tmp_path}/no-such-dir", str(mnt)], 3),
        (["mount", f"file://{tree}", str(mnt), "--block-size", "100Mi"], 2),
        (["mount", f"file://{tree}", str(mnt), "--cache-size", "lots"], 2),
    ]
    for args, code in cases:
        res = fluidfs(*args)
        assert res.returncode == code, (args, res.returncode, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fluidfs: error: "), res.stderr
        assert "Traceback" not in res.stderr
        assert "--cache-size: --cache-size" not in res.stderr  # the flag is named once
        assert not os.path.ismount(mnt)
    # busy mountpoint
    with Mount(f"file://{tree}", str(mnt)):
        res = fluidfs("mount", f"file://{tree}", str(mnt))
        assert res.returncode == 1 and "busy" in res.stderr
    res = fluidfs("umount", str(mnt))
    assert res.returncode == 1 and "not mounted" in res.stderr


def test_refresh_shows_source_changes_before_ttl(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"old")
    mnt = tmp_path / "m"
    with Mount(f"file://{src}", str(mnt), "--metadata-ttl", "indefinite"):
        assert sorted(os.listdir(mnt)) == ["a.txt"]
        assert (mnt / "a.txt").read_bytes() == b"old"
        (src / "a.txt").write_bytes(b"new content")
        (src / "b.txt").write_bytes(b"b")
        assert (mnt / "a.txt").read_bytes() == b"old"  # indefinite TTL: still the old version
        assert fluidfs("refresh", str(mnt)).returncode == 0
        deadline = time.monotonic() + 20
        while sorted(os.listdir(mnt)) != ["a.txt", "b.txt"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(os.listdir(mnt)) == ["a.txt", "b.txt"]
        assert (mnt / "a.txt").read_bytes() == b"new content"
    assert fluidfs("refresh", str(mnt)).returncode == 1


def test_owner_modes_and_allow_other(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    mnt = tmp_path / "m"
    flags = ("--uid", "1234", "--gid", "5678", "--file-mode", "0440", "--dir-mode", "0550", "--allow-other")
    with Mount(f"file://{src}", str(mnt), *flags):
        f, d = os.stat(mnt / "d" / "f"), os.stat(mnt / "d")
        assert (f.st_uid, f.st_gid, f.st_mode & 0o7777) == (1234, 5678, 0o440)
        assert (d.st_uid, d.st_gid, d.st_mode & 0o7777) == (1234, 5678, 0o550)
        line = next(ln for ln in open("/proc/mounts") if f" {mnt} " in ln)
        assert "allow_other" in line.split()[3].split(",")


def test_umount_after_daemon_crash(tree: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "crash"
    mnt.mkdir()
    pidfile = tmp_path / "pid"
    assert fluidfs("mount", f"file://{tree}", str(mnt), "--pid-file", str(pidfile)).returncode == 0
    try:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(OSError) as ei:
            os.listdir(mnt)
        assert ei.value.errno == errno.ENOTCONN
        res = fluidfs("mount", f"file://{tree}", str(mnt))
        assert res.returncode == 1 and "busy" in res.stderr
        res = fluidfs("umount", str(mnt))
        assert res.returncode == 0, res.stderr
        assert fluidfs("mount", f"file://{tree}", str(mnt)).returncode == 0
        assert (mnt / "small.txt").read_bytes() == b"hello fluidfs\n"
        assert fluidfs("umount", str(mnt)).returncode == 0
    finally:
        force_unmount(str(mnt))
