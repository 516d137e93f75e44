"""Helpers for real-FUSE tests: mount through the real CLI daemon, compare a mounted tree
with its reference byte by byte and stat by stat, and always unmount."""

from __future__ import annotations

import mmap
import os
import random
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

FUSE_MISSING = ""
if not os.path.exists("/dev/fuse"):
    FUSE_MISSING = "/dev/fuse does not exist on this machine"
elif not (shutil.which("fusermount3") or shutil.which("fusermount")):
    FUSE_MISSING = "fusermount3 is not installed (apt-get install fuse3)"

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING or "fuse available")


def fluidfs(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fluidfs", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def fuse_control_fs() -> Iterator[None]:
    """The FUSE control filesystem (``/sys/fs/fuse/connections``), through which the daemon raises
    the kernel's background queue: mounted for the body if the host has not mounted it (and then
    unmounted again); the test is skipped where it cannot be mounted."""
    path = "/sys/fs/fuse/connections"
    ours = False
    if not os.path.ismount(path):
        res = subprocess.run(["mount", "-t", "fusectl", "none", path], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"the FUSE control filesystem cannot be mounted here: {res.stderr.strip()}")
        ours = True
    try:
        yield
    finally:
        if ours:
            subprocess.run(["umount", path], capture_output=True)


def force_unmount(mnt: str) -> None:
    from fluidfs.util.mounts import is_mounted

    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)


class Mount:
    """``with Mount(source, mnt, *flags, env=...) as m:`` mounts with ``fluidfs mount``."""

    def __init__(self, source: str, mnt: str, *flags: str, env: dict[str, str] | None = None) -> None:
        self.source, self.mnt, self.flags, self.env = source, str(mnt), flags, env or {}

    def __enter__(self) -> Mount:
        os.makedirs(self.mnt, exist_ok=True)
        res = fluidfs("mount", self.source, self.mnt, "--metrics-addr", "127.0.0.1:0", *self.flags, env=self.env)
        if res.returncode != 0:
            force_unmount(self.mnt)
            raise AssertionError(f"mount failed ({res.returncode}): {res.stderr}")
        assert os.path.ismount(self.mnt)
        return self

    def __exit__(self, *exc: object) -> None:
        res = fluidfs("umount", self.mnt)
        if res.returncode != 0:
            force_unmount(self.mnt)
            if exc[0] is None:
                raise AssertionError(f"umount failed: {res.stderr}")
        assert not os.path.ismount(self.mnt)

    def record(self) -> dict[str, object]:
        from fluidfs.daemon.record import read_record

        rec = read_record(self.mnt)
        assert rec is not None
        return rec


def walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for everything under root, sorted."""
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            full = os.path.join(d, name)
            yield os.path.relpath(full, root), os.lstat(full)


def compare_tree(
    mnt: str,
    ref: str,
    *,
    mtime_of: Callable[[str, os.stat_result], float | None] | None = None,
    check_dir_mtime: bool = False,
    threads: int = 8,
) -> int:
    """Assert ``mnt`` shows exactly ``ref``: names, types, sizes, mtimes, every byte.

    ``mtime_of(rel, ref_stat)`` gives the expected mtime in seconds for a file (default: the
    reference file's ``st_mtime_ns`` exactly); returning None skips the check.
    Returns the number of files compared.
    """
    got = dict(walk(mnt))
    want = dict(walk(ref))
    assert sorted(got) == sorted(want), f"names differ: extra={set(got) - set(want)} missing={set(want) - set(got)}"
    files = []
    for rel, w in want.items():
        g = got[rel]
        assert stat.S_IFMT(g.st_mode) == stat.S_IFMT(w.st_mode), rel
        if stat.S_ISREG(w.st_mode):
            assert g.st_size == w.st_size, rel
            exp = mtime_of(rel, w) if mtime_of else w.st_mtime_ns / 1e9
            if exp is not None:
                if mtime_of is None:
                    assert g.st_mtime_ns == w.st_mtime_ns, rel
                else:
                    assert abs(g.st_mtime - exp) < 1e-6, (rel, g.st_mtime, exp)
            assert not (g.st_mode & 0o222), f"{rel} is writable"
            files.append(rel)

    def same(rel: str) -> None:
        with open(os.path.join(mnt, rel), "rb") as a, open(os.path.join(ref, rel), "rb") as b:
            while True:
                x, y = a.read(1 << 20), b.read(1 << 20)
                assert x == y, f"bytes differ in {rel}"
                if not x:
                    break

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(same, files))
    return len(files)


def random_preads(mnt_file: str, ref_file: str, count: int = 200, threads: int = 8, seed: int = 0) -> None:
    """Many threads pread random ranges (including past EOF) and compare with the reference."""
    with open(ref_file, "rb") as f:
        ref = f.read()
    size = len(ref)
    fd = os.open(mnt_file, os.O_RDONLY)
    try:

        def one(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            off = rng.randrange(0, size + 4096)
            n = rng.choice([1, 100, 4096, 65536, 1 << 20, 3 << 20])
            assert os.pread(fd, n, off) == ref[off : off + n], (off, n)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(count)))
    finally:
        os.close(fd)


def mmap_compare(mnt_file: str, ref_file: str) -> None:
    with open(mnt_file, "rb") as f, open(ref_file, "rb") as r:
        ref = r.read()
        if not ref:
            return
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert len(m) == len(ref)
            step = max(1, len(ref) // 97)
            for off in range(0, len(ref), step):
                assert m[off : off + 4096] == ref[off : off + 4096], off
            assert m[:] == ref


def make_tree(root: str, *, big: int = 9 * 1024 * 1024 + 17, many: int = 10_000) -> None:
    """The reference tree every FUSE test mounts: the awkward cases from the issue."""
    rng = random.Random(7)

    def put(rel: str, data: bytes) -> None:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    put("big.bin", rng.randbytes(big))
    put("empty", b"")
    put("small.txt", b"hello fluidfs\n")
    put("deep/a/b/c/d/e/f/g/leaf.txt", b"deep leaf\n")
    put("names/with space.txt", b"space\n")
    put("names/ünïcødé-文件.txt", b"unicode\n")
    put("images/cls0/img0.jpg", rng.randbytes(110 * 1024))
    put("images/cls1/img1.jpg", rng.randbytes(90 * 1024))
    os.makedirs(os.path.join(root, "emptydir"), exist_ok=True)
    many_dir = os.path.join(root, "many")
    os.makedirs(many_dir, exist_ok=True)
    for i in range(many):
        with open(os.path.join(many_dir, f"f{i:05d}"), "wb") as f:
            f.write(str(i).encode())
