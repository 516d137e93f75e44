"""The mount daemon's life cycle through the CLI: start-up with a 0 s TTL, bounded waits, hung and
crashed daemons, symlinked and non-empty mountpoints, other filesystems, the working directory, a
forged runtime record, and the cache directory's mode."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluidfs.daemon.record import read_record, record_path
from fluidfs.daemon.spawn import spawn_and_wait
from fluidfs.util.mounts import is_mounted, mount_table
from fluidfs.util.proc import pid_alive
from tests.support.fuse import Mount, fluidfs, force_unmount, needs_fuse

CLI_TIMEOUT = 30.0


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    return root


def _wait_gone(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running"
        time.sleep(0.05)


@needs_fuse
def test_metadata_ttl_zero_mounts_serves_and_unmounts(src: Path, tmp_path: Path) -> None:
    """Nothing on the daemon's loop thread touches its own mountpoint (that deadlocked with TTL 0)."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    t0 = time.monotonic()
    with Mount(str(src), str(mnt), "--metadata-ttl", "0", "--negative-ttl", "0", "--timeout", "30"):
        assert time.monotonic() - t0 < 30
        assert (mnt / "d" / "f.txt").read_bytes() == b"hello\n"
        assert sorted(os.listdir(mnt)) == ["big.bin", "d"]
        res = fluidfs("status", "--json", str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["config"]["metadata_ttl"] == 0
        assert fluidfs("refresh", str(mnt), timeout=CLI_TIMEOUT).returncode == 0


def test_parent_kills_a_child_that_ignores_terminate(tmp_path: Path) -> None:
    """A daemon that never reports and ignores SIGTERM is killed when the mount times out."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    pidfile = tmp_path / "child.pid"
    cmd = [sys.executable, "-c", f"import os; open({str(pidfile)!r}, 'w').write(str(os.getpid())); {code}"]
    t0 = time.monotonic()
    rc = spawn_and_wait(cmd, str(tmp_path / "nowhere"), str(tmp_path / "log"), timeout=1.0)
    assert rc == 1
    assert time.monotonic() - t0 < 20
    _wait_gone(int(pidfile.read_text()), timeout=5)


@needs_fuse
def test_hung_daemon_cli_answers_and_umount_lazy_rescues(src: Path, tmp_path: Path) -> None:
    """A stopped (SIGSTOP) daemon: status says so instead of hanging, refresh refuses, and
    ``umount --lazy`` detaches the mount and kills the daemon that cannot exit by itself."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    pidfile = tmp_path / "pid"
    res = fluidfs("mount", str(src), str(mnt), "--pid-file", str(pidfile), "--metadata-ttl", "0")
    assert res.returncode == 0, res.stderr
    pid = int(pidfile.read_text())
    reader = None
    try:
        os.kill(pid, signal.SIGSTOP)
        reader = subprocess.Popen([sys.executable, "-c", f"open({str(mnt / 'big.bin')!r}, 'rb').read()"])
        time.sleep(0.3)  # the reader is now blocked in the mount: a plain unmount would be refused (busy)
        res = fluidfs("status", str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 1 and "does not answer" in res.stderr and f"pid {pid}" in res.stderr, res.stderr
        res = fluidfs("refresh", str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 1 and "stopped" in res.stderr, res.stderr
        t0 = time.monotonic()
        res = fluidfs("umount", "--lazy", "--timeout", "2", str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 0, res.stderr
        assert "did not exit within 2s; ended it with SIG" in res.stderr, res.stderr  # one line says what happened
        assert time.monotonic() - t0 < CLI_TIMEOUT
        assert not is_mounted(str(mnt))
        _wait_gone(pid)
        reader.wait(timeout=CLI_TIMEOUT)  # its read ended (answered or failed) instead of hanging forever
        assert read_record(str(mnt)) is None  # the dead daemon's record went with it
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        if reader is not None and reader.poll() is None:
            reader.kill()
        force_unmount(str(mnt))


@needs_fuse
def test_crashed_mount_says_what_to_do(src: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    pidfile = tmp_path / "pid"
    assert fluidfs("mount", str(src), str(mnt), "--pid-file", str(pidfile)).returncode == 0
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        res = fluidfs("mount", str(src), str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 1, res.stderr
        assert "no longer running" in res.stderr and f"fluidfs umount {mnt}" in res.stderr, res.stderr
        res = fluidfs("status", str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 1 and f"fluidfs umount {mnt}" in res.stderr, res.stderr
        assert fluidfs("umount", str(mnt), timeout=CLI_TIMEOUT).returncode == 0
        assert read_record(str(mnt)) is None  # the stale record is cleaned up by umount
    finally:
        force_unmount(str(mnt))


@needs_fuse
def test_mount_through_a_symlink_never_stacks(src: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    res = fluidfs("mount", str(src), str(link), "--pid-file", str(tmp_path / "pid"))
    assert res.returncode == 0, res.stderr
    pid = int((tmp_path / "pid").read_text())
    try:
        assert [m.mountpoint for m in mount_table() if m.mountpoint == str(real)] == [str(real)]
        rec = read_record(str(link))
        assert rec is not None and rec["mountpoint"] == str(real) and read_record(str(real)) == rec
        for again in (real, link):
            res = fluidfs("mount", str(src), str(again), timeout=CLI_TIMEOUT)
            assert res.returncode == 1 and "already a fluidfs mount" in res.stderr, res.stderr
        assert len([m for m in mount_table() if m.mountpoint == str(real)]) == 1
        res = fluidfs("status", "--json", str(link), timeout=CLI_TIMEOUT)
        assert res.returncode == 0 and json.loads(res.stdout)["mountpoint"] == str(real), res.stderr
        assert fluidfs("refresh", str(link), timeout=CLI_TIMEOUT).returncode == 0
        res = fluidfs("umount", str(link), timeout=CLI_TIMEOUT)
        assert res.returncode == 0, res.stderr
        assert not is_mounted(str(real))
        _wait_gone(pid)
        assert read_record(str(real)) is None
    finally:
        force_unmount(str(real))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_umount_refuses_other_filesystems(tmp_path: Path) -> None:
    d = tmp_path / "t"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        for args in (("umount",), ("umount", "--lazy")):
            res = fluidfs(*args, str(d), timeout=CLI_TIMEOUT)
            assert res.returncode == 1, res.stderr
            assert res.stderr.strip() == (
                f"fluidfs: error: {d} is not a fluidfs mount (a tmpfs is mounted there); use umount(8) for it"
            )
            assert is_mounted(str(d))
        res = fluidfs("mount", str(tmp_path), str(d), timeout=CLI_TIMEOUT)
        assert res.returncode == 1 and "busy (a tmpfs is mounted there)" in res.stderr, res.stderr
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@needs_fuse
def test_mount_over_a_non_empty_directory_needs_nonempty(src: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    (mnt / "mine.txt").write_bytes(b"would be hidden")
    try:
        res = fluidfs("mount", str(src), str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 1, res.stderr
        assert res.stderr.strip() == (
            f"fluidfs: error: mountpoint {mnt} is not empty (its files would be hidden while mounted); "
            "use --nonempty to mount over it anyway"
        )
        assert not is_mounted(str(mnt))
        with Mount(str(src), str(mnt), "--nonempty"):
            assert sorted(os.listdir(mnt)) == ["big.bin", "d"]
        assert (mnt / "mine.txt").read_bytes() == b"would be hidden"
    finally:
        force_unmount(str(mnt))


@needs_fuse
def test_daemon_runs_in_root_dir_and_keeps_no_mount_busy(src: Path, tmp_path: Path) -> None:
    """Started from inside another mount with relative paths, the daemon does not keep that mount busy."""
    outer = tmp_path / "outer"
    outer.mkdir()
    assert fluidfs("mount", str(src), str(outer)).returncode == 0
    inner = tmp_path / "inner"
    inner.mkdir()
    try:
        rel = os.path.relpath(tmp_path, outer / "d")
        res = subprocess.run(
            [sys.executable, "-m", "fluidfs", "mount", f"{rel}/src", f"{rel}/inner", "--pid-file", f"{rel}/pid"],
            cwd=outer / "d",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        pid = int((tmp_path / "pid").read_text())
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert (inner / "d" / "f.txt").read_bytes() == b"hello\n"
        res = fluidfs("umount", str(outer), timeout=CLI_TIMEOUT)  # not lazy: nothing holds it
        assert res.returncode == 0, res.stderr
        assert (inner / "d" / "f.txt").read_bytes() == b"hello\n"
        assert fluidfs("umount", str(inner), timeout=CLI_TIMEOUT).returncode == 0
    finally:
        force_unmount(str(inner))
        force_unmount(str(outer))


@needs_fuse
def test_foreground_daemon_runs_in_root_dir(src: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluidfs", "mount", "src", "m", "--foreground", "--metrics-addr", "none"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while read_record(str(mnt)) is None:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert os.readlink(f"/proc/{proc.pid}/cwd") == "/"
        assert (mnt / "d" / "f.txt").read_bytes() == b"hello\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not is_mounted(str(mnt))
    finally:
        if proc.poll() is None:
            proc.kill()
        force_unmount(str(mnt))


@needs_fuse
def test_forged_record_pid_is_never_signalled(src: Path, tmp_path: Path) -> None:
    """A record whose pid names another process: refresh refuses, umount unmounts but signals nobody."""
    bystander = subprocess.Popen(["sleep", "600"])  # SIGUSR1 or SIGTERM would end it
    mnt = tmp_path / "m"
    mnt.mkdir()
    pidfile = tmp_path / "pid"
    assert fluidfs("mount", str(src), str(mnt), "--pid-file", str(pidfile)).returncode == 0
    daemon = int(pidfile.read_text())
    try:
        path = record_path(str(mnt))
        rec = json.loads(Path(path).read_text())
        rec["pid"] = bystander.pid
        Path(path).write_text(json.dumps(rec))
        res = fluidfs("refresh", str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 1 and "cannot be verified" in res.stderr, res.stderr
        res = fluidfs("umount", "--timeout", "1", str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 0, res.stderr
        assert not is_mounted(str(mnt))
        time.sleep(0.5)
        assert bystander.poll() is None  # never signalled
        _wait_gone(daemon)  # the real daemon exited by itself once unmounted
    finally:
        bystander.kill()
        bystander.wait()
        if pid_alive(daemon):
            os.kill(daemon, signal.SIGKILL)
        force_unmount(str(mnt))


@needs_fuse
def test_new_cache_directory_is_private(src: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with Mount(str(src), str(tmp_path / "m"), "--cache-dir", str(cache)) as m:
        assert len((Path(m.mnt) / "big.bin").read_bytes()) == 3 * 1024 * 1024
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700


def test_umount_and_status_of_what_is_not_mounted(tmp_path: Path) -> None:
    for cmd in (("umount",), ("refresh",), ("status",)):
        res = fluidfs(*cmd, str(tmp_path), timeout=CLI_TIMEOUT)
        assert res.returncode == 1, (cmd, res.stderr)
        assert res.stderr.strip().startswith("fluidfs: error: "), res.stderr
    with pytest.raises(OSError) as ei:
        os.listdir(tmp_path / "missing")
    assert ei.value.errno == errno.ENOENT
