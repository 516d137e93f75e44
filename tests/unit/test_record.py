"""Runtime records: the runtime directory's safety checks, files never opened through a symlink,
and a record's pid trusted only when it names the daemon that wrote it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fluidfs.daemon import record
from fluidfs.errors import MountError


@pytest.fixture
def rtd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the runtime directory at a private temporary one."""
    base = tmp_path / "run"
    base.mkdir(mode=0o700)
    path = base / "fluidfs"
    monkeypatch.setattr(record, "runtime_dir", lambda: str(path))
    return path


def test_runtime_dir_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert record.runtime_dir() == "/run/user/1234/fluidfs"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert record.runtime_dir() == "/tmp/fluidfs-1234"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")  # not absolute: ignored
    assert record.runtime_dir() == "/tmp/fluidfs-1234"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert record.runtime_dir() == "/run/fluidfs"


def test_created_private_and_checked(rtd: Path) -> None:
    assert record.checked_runtime_dir() is None  # absent, not created
    assert record.checked_runtime_dir(create=True) == str(rtd)
    assert stat.S_IMODE(rtd.stat().st_mode) == 0o700
    rtd.chmod(0o755)  # as an older fluidfs left it: nobody else can write, so it is tightened
    record.checked_runtime_dir(create=True)
    assert stat.S_IMODE(rtd.stat().st_mode) == 0o700
    rtd.chmod(0o777)
    with pytest.raises(MountError, match="others can write to it"):
        record.checked_runtime_dir()
    rtd.rmdir()
    (rtd.parent / "elsewhere").mkdir()
    rtd.symlink_to(rtd.parent / "elsewhere")
    with pytest.raises(MountError, match="not a directory"):
        record.checked_runtime_dir(create=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_someone_elses_runtime_dir_is_refused(rtd: Path) -> None:
    rtd.mkdir(mode=0o700)
    os.chown(rtd, 4321, 4321)
    with pytest.raises(MountError, match="owned by uid 4321, not by you"):
        record.checked_runtime_dir(create=True)
    with pytest.raises(MountError):
        record.read_record("/some/mount")


def test_a_parent_others_can_change_is_refused(rtd: Path) -> None:
    rtd.parent.chmod(0o777)  # writable by all and not sticky: our directory could be swapped
    with pytest.raises(MountError, match="can be changed by other users"):
        record.checked_runtime_dir(create=True)
    rtd.parent.chmod(0o1777)  # like /tmp
    assert record.checked_runtime_dir(create=True) == str(rtd)


def test_records_are_never_read_or_written_through_symlinks(rtd: Path, tmp_path: Path) -> None:
    record.checked_runtime_dir(create=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    victim = tmp_path / "victim"
    victim.write_text(json.dumps({"pid": 1, "mountpoint": str(mnt)}))
    path = record.record_path(str(mnt))
    os.symlink(victim, path)
    assert record.read_record(str(mnt)) is None  # not followed
    os.unlink(path)
    os.symlink(victim, f"{path}.{os.getpid()}.tmp")  # planted where the daemon writes first
    record.write_record(path, {"pid": os.getpid(), "mountpoint": str(mnt)})
    assert json.loads(victim.read_text()) == {"pid": 1, "mountpoint": str(mnt)}  # untouched
    assert not os.path.exists(path)
    os.unlink(f"{path}.{os.getpid()}.tmp")
    record.write_record(path, {**record.identity(os.getpid()), "mountpoint": str(mnt)})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert record.read_record(str(mnt)) == {**record.identity(os.getpid()), "mountpoint": str(mnt)}
    record.remove_record(path, os.getpid() + 1)  # not its writer: kept
    assert os.path.exists(path)
    record.remove_record(path, os.getpid())
    assert not os.path.exists(path)


def test_a_record_of_another_mountpoint_is_ignored(rtd: Path, tmp_path: Path) -> None:
    record.checked_runtime_dir(create=True)
    record.write_record(record.record_path(str(tmp_path)), {"pid": os.getpid(), "mountpoint": "/elsewhere"})
    assert record.read_record(str(tmp_path)) is None


def test_daemon_pid_needs_same_process_and_a_fluidfs_command_line() -> None:
    code = "import time; time.sleep(60)"
    fake = subprocess.Popen([sys.executable, "-c", code, "fluidfs", "mount"])  # looks like a daemon
    other = subprocess.Popen([sys.executable, "-c", code])  # does not
    try:
        assert record.daemon_pid(record.identity(fake.pid)) == fake.pid
        assert record.daemon_pid(record.identity(other.pid)) is None  # not a fluidfs command line
        started = record.identity(fake.pid)["start_time"]
        assert record.daemon_pid({"pid": fake.pid, "start_time": started + 1}) is None  # pid reused
        assert record.daemon_pid({"pid": fake.pid}) is None  # no start time: cannot be verified
        assert record.daemon_pid({"pid": "1", "start_time": 0}) is None
        assert record.daemon_pid(None) is None
    finally:
        for p in (fake, other):
            p.kill()
            p.wait()
    assert record.daemon_pid({"pid": fake.pid, "start_time": started}) is None  # gone
