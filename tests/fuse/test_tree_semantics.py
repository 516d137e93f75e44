"""Real FUSE: what the mounted tree shows at its edges — directory loops, ``.``/``..``, directory
times — and what a read of an object deleted while open returns."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.fuse import Mount, needs_fuse

pytestmark = needs_fuse


def test_directory_loops_are_hidden_du_counts_real_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "data.bin").write_bytes(os.urandom(300_000))
    (src / "top.bin").write_bytes(os.urandom(200_000))
    os.symlink("..", src / "a" / "up")
    os.symlink("../..", src / "a" / "b" / "back")
    mnt = tmp_path / "m"
    with Mount(f"file://{src}", str(mnt)):
        assert sorted(os.listdir(mnt / "a")) == ["b"]
        assert not os.path.exists(mnt / "a" / "up")
        du = subprocess.run(["du", "-sb", "--apparent-size", str(mnt)], capture_output=True, text=True, timeout=60)
        assert du.returncode == 0, du.stderr
        files = 500_000
        assert files <= int(du.stdout.split()[0]) < files + 64 * 1024  # the files once, plus directories
        found = subprocess.run(["find", str(mnt), "-type", "f"], capture_output=True, text=True, timeout=60)
        assert sorted(found.stdout.split()) == [str(mnt / "a" / "b" / "data.bin"), str(mnt / "top.bin")]


def test_dot_entries_and_directory_times(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    mnt = tmp_path / "m"
    with Mount(f"file://{src}", str(mnt)):
        ls = subprocess.run(["ls", "-a", str(mnt / "d")], capture_output=True, text=True, timeout=30)
        assert ls.stdout.split() == [".", "..", "f"]
        ls = subprocess.run(["ls", "-la", str(mnt)], capture_output=True, text=True, timeout=30)
        names = [line.split()[-1] for line in ls.stdout.splitlines()[1:]]
        assert names == [".", "..", "d"]
        assert os.listdir(mnt) == ["d"]  # Python hides the dot entries, as always


def test_read_of_object_deleted_while_open_is_eio(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "gone.bin").write_bytes(os.urandom(3 << 20))
    mnt = tmp_path / "m"
    log = tmp_path / "daemon.log"
    with Mount(f"file://{src}", str(mnt), "--block-size", "1Mi", "--readahead", "0", "--log-file", str(log)):
        fd = os.open(mnt / "gone.bin", os.O_RDONLY | os.O_DIRECT if hasattr(os, "O_DIRECT") else os.O_RDONLY)
        try:
            os.unlink(src / "gone.bin")
            for _ in range(30):  # a reader retrying: every read fails, one warning is logged
                with pytest.raises(OSError) as ei:
                    os.pread(fd, 4096, 2 << 20)
                assert ei.value.errno == errno.EIO
        finally:
            os.close(fd)
        deadline = time.monotonic() + 10
        while "deleted at the source" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log.read_text().count("deleted at the source") == 1  # the others are suppressed, counted
