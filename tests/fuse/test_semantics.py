"""Real FUSE: the POSIX contract of docs/SEMANTICS.md over local sources, one mount for the module.

The mount is a union of two local directories (``/data`` and ``/extra/more``) with indefinite
metadata and negative TTLs, so what a cached answer hides stays hidden until a test runs
``fluidfs refresh``.  The whole source tree is made before mounting and each test works in its own
directory of it, so the tests do not depend on their order.  S3-specific behaviour is checked in
``test_semantics_s3.py``; docs/SEMANTICS.md names the test that checks each statement.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fuse import Mount, needs_fuse

pytestmark = needs_fuse

MiB = 1 << 20
MEMORY = 64 * MiB
NOBODY = 65534
REFRESHED = "metadata refreshed"
OPEN_OLD = random.Random(5).randbytes(3 * MiB)
TWO_OLD = random.Random(6).randbytes(MiB + 100)
SHRINK_OLD = random.Random(8).randbytes(2 * MiB)
FLAGS = (
    "--metadata-ttl",
    "indefinite",
    "--negative-ttl",
    "indefinite",
    "--block-size",
    "1Mi",
    "--memory-size",
    "64Mi",
    "--readahead",
    "0",
    "--prefetch-siblings",
    "0",
    "--file-mode",
    "0440",
    "--allow-other",
)


@dataclass(frozen=True)
class Union:
    mnt: Path  # the mount point
    data: Path  # the source mounted at /data
    more: Path  # the source mounted at /extra/more
    pid: int  # the daemon
    log: Path  # its log

    def refresh(self) -> None:
        """What ``fluidfs refresh`` does (signal the daemon), then wait until the daemon has done it."""
        done = self.log.read_text().count(REFRESHED)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while self.log.read_text().count(REFRESHED) == done:
            assert time.monotonic() < deadline, "the daemon did not refresh"
            time.sleep(0.02)


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_sources(data: Path, more: Path) -> None:
    put(data / "hello.txt", b"hello\n")
    put(more / "other.txt", b"other\n")
    put(data / "lookup" / "present.txt", b"p")
    (data / "negative" / "unlisted").mkdir(parents=True)
    for i in range(50):
        put(data / "readdir" / f"f{i:03d}", b"x")
    put(data / "flags" / "f.txt", b"flags\n")
    put(data / "changed" / "grows.txt", b"old\n")
    put(data / "changed-kept" / "kept.txt", b"first\n")
    put(data / "changed-open" / "open.bin", OPEN_OLD)
    put(data / "changed-two" / "f.bin", TWO_OLD)
    put(data / "changed-shrinks" / "f.bin", SHRINK_OLD)
    put(data / "deleted" / "gone.txt", b"still here\n")
    put(data / "mmap" / "m.bin", bytes(range(256)) * 256)
    put(data / "xattr" / "f.txt", b"x")
    (data / "xattr" / "d").mkdir()
    put(data / "stat" / "f.bin", b"s" * 1000)
    (data / "stat" / "d" / "sub").mkdir(parents=True)
    put(data / "inodes" / "a.txt", b"a")
    put(data / "inodes" / "b.txt", b"b")
    os.link(data / "inodes" / "a.txt", data / "inodes" / "hard.txt")
    (data / "inodes" / "kind").mkdir()
    put(data / "links" / "target.txt", b"target\n")
    (data / "links" / "sub").mkdir()
    os.symlink("target.txt", data / "links" / "to-file")
    os.symlink("sub", data / "links" / "to-dir")
    os.symlink("/etc/hostname", data / "links" / "escapes")
    os.symlink("nowhere", data / "links" / "broken")
    os.mkfifo(data / "links" / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(data / "links" / "socket"))
    put(data / "names" / "with space.txt", b"space")
    (data / "names").joinpath(os.fsdecode(b"\xff\xfe-latin1.bin")).write_bytes(b"not utf-8")
    put(data / "write" / "f.txt", b"w")
    put(data / "other" / "f.txt", b"o")
    put(data / "access" / "f.txt", b"secret")


@pytest.fixture(scope="module")
def u() -> Iterator[Union]:
    # every user can reach the mount point (the access test reads as nobody); pytest's tmp is root's only
    root = Path(tempfile.mkdtemp(prefix="fluidfs-semantics-", dir="/tmp"))
    try:
        root.chmod(0o755)
        data, more = root / "data", root / "more"
        make_sources(data, more)
        doc = root / "union.yaml"
        doc.write_text(
            "apiVersion: fluidfs.io/v1alpha1\nkind: Dataset\nmetadata:\n  name: semantics\nspec:\n  mounts:\n"
            f"    - mountPoint: {data}\n      path: /data\n"
            f"    - mountPoint: {more}\n      path: /extra/more\n"
        )
        log = root / "daemon.log"
        with Mount(str(doc), str(root / "mnt"), *FLAGS, "--log-file", str(log)) as m:
            pid = m.record()["pid"]
            assert isinstance(pid, int)
            yield Union(root / "mnt", data, more, pid, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def errno_of(fn: object, *args: object) -> int:
    """The errno ``fn(*args)`` fails with (0 if it succeeds)."""
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or -1
    return 0


def open_close(path: Path, flags: int) -> None:
    os.close(os.open(path, flags))


# --- lookup ----------------------------------------------------------------------------------


def test_lookup_missing_is_enoent_below_a_file_enotdir(u: Union) -> None:
    d = u.mnt / "data" / "lookup"
    assert (d / "present.txt").read_bytes() == b"p"
    assert errno_of(os.stat, d / "absent") == errno.ENOENT
    assert errno_of(os.stat, d / "present.txt" / "x") == errno.ENOTDIR
    assert errno_of(os.listdir, d / "present.txt") == errno.ENOTDIR
    assert errno_of(os.stat, u.mnt / "no-such-mount") == errno.ENOENT  # a directory of the Dataset


def test_negative_lookup_cached_until_refresh(u: Union) -> None:
    # two levels down: a listing of /data prefetches the listings of its subdirectories in the
    # background, and a listing newer than a "no such file" answer rightly wins over it; nothing
    # ever lists negative/unlisted, so only the negative cache can hide the file here
    path = u.mnt / "data" / "negative" / "unlisted" / "late.txt"
    assert errno_of(os.stat, path) == errno.ENOENT
    put(u.data / "negative" / "unlisted" / "late.txt", b"late")
    assert errno_of(os.stat, path) == errno.ENOENT  # the cached "no such file" (negative TTL)
    u.refresh()
    assert path.read_bytes() == b"late"


# --- readdir -------------------------------------------------------------------------------------


class Dirent(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


class Dir:
    """A libc directory stream: ``readdir``, ``telldir``, ``seekdir``, ``rewinddir``."""

    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = [ctypes.c_char_p]
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.telldir.argtypes = [ctypes.c_void_p]
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.rewinddir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]

    def __init__(self, path: Path) -> None:
        self.d = self.libc.opendir(os.fsencode(path))
        assert self.d, os.strerror(ctypes.get_errno())

    def read(self) -> str | None:
        p = self.libc.readdir(self.d)
        return None if not p else os.fsdecode(ctypes.cast(p, ctypes.POINTER(Dirent)).contents.d_name)

    def rest(self) -> list[str]:
        names = []
        while (name := self.read()) is not None:
            names.append(name)
        return names

    def tell(self) -> int:
        return int(self.libc.telldir(self.d))

    def seek(self, pos: int) -> None:
        self.libc.seekdir(self.d, pos)

    def rewind(self) -> None:
        self.libc.rewinddir(self.d)

    def close(self) -> None:
        self.libc.closedir(self.d)


def test_readdir_dots_first_then_every_name_once_with_types(u: Union) -> None:
    d = u.mnt / "data" / "readdir"
    stream = Dir(d)
    try:
        names = stream.rest()
    finally:
        stream.close()
    assert names[:2] == [".", ".."]
    assert sorted(names[2:]) == [f"f{i:03d}" for i in range(50)]
    with os.scandir(u.mnt / "data" / "stat") as it:
        kinds = {e.name: (e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in it}
    assert kinds == {"f.bin": (False, True), "d": (True, False)}


def test_readdir_handle_is_a_snapshot_with_stable_offsets(u: Union) -> None:
    d = u.mnt / "data" / "readdir"
    stream = Dir(d)
    try:
        positions, names = [], []
        for _ in range(12):
            positions.append(stream.tell())
            names.append(stream.read())
        # the source changes while the stream is open
        os.unlink(u.data / "readdir" / "f007")
        put(u.data / "readdir" / "f999", b"new")
        stream.seek(positions[5])
        assert stream.read() == names[5]  # telldir/seekdir: a position names the same entry again
        rest = names[:6] + stream.rest()
        assert len(rest) == 52 and "f007" in rest and "f999" not in rest  # the stream's snapshot, each name once
        stream.rewind()
        assert stream.rest() == rest  # rewinddir: the same snapshot, in the same order
    finally:
        stream.close()
    assert "f007" in os.listdir(d)  # a new opendir: the cached listing (indefinite TTL) ...
    u.refresh()
    after = os.listdir(d)
    assert "f007" not in after and "f999" in after  # ... until a refresh


# --- open ----------------------------------------------------------------------------------------


def test_open_flags(u: Union) -> None:
    f = u.mnt / "data" / "flags" / "f.txt"
    d = u.mnt / "data" / "flags"
    ok = [
        os.O_RDONLY,
        os.O_RDONLY | os.O_APPEND,
        os.O_RDONLY | os.O_CREAT,  # the file exists: nothing to create
        os.O_RDONLY | os.O_DIRECT,
        os.O_RDONLY | os.O_NOATIME,
        os.O_RDONLY | os.O_SYNC,
        os.O_RDONLY | os.O_NONBLOCK,
        os.O_PATH,
    ]
    for flags in ok:
        assert errno_of(open_close, f, flags) == 0, oct(flags)
    refused = {
        os.O_WRONLY: errno.EROFS,
        os.O_RDWR: errno.EROFS,
        os.O_WRONLY | os.O_APPEND: errno.EROFS,
        os.O_RDONLY | os.O_TRUNC: errno.EROFS,
        os.O_RDONLY | os.O_CREAT | os.O_EXCL: errno.EEXIST,
        os.O_RDONLY | os.O_DIRECTORY: errno.ENOTDIR,
    }
    for flags, code in refused.items():
        assert errno_of(open_close, f, flags) == code, oct(flags)
    assert errno_of(open_close, d / "new.txt", os.O_RDONLY | os.O_CREAT) == errno.EROFS
    assert errno_of(open_close, d / "new.txt", os.O_RDONLY) == errno.ENOENT
    assert errno_of(open_close, d, os.O_RDONLY | os.O_DIRECTORY) == 0
    assert errno_of(open_close, d, os.O_WRONLY) == errno.EISDIR
    assert errno_of(open_close, d, os.O_RDWR | os.O_TMPFILE) == errno.EROFS
    assert f.read_bytes() == b"flags\n"


# --- reads of an object that changed at the source ------------------------------------------


def test_changed_within_ttl_first_read_eio_then_whole_new_version(u: Union) -> None:
    src = u.data / "changed" / "grows.txt"
    path = u.mnt / "data" / "changed" / "grows.txt"
    assert os.stat(path).st_size == 4  # attributes cached, no byte read yet
    new = b"the new version, longer than the old one\n"
    put(src, new)
    assert os.stat(path).st_size == 4  # within the TTL: the cached attributes
    with pytest.raises(OSError) as ei:
        path.read_bytes()  # the open takes the cached (old) version; the source no longer has it
    assert ei.value.errno == errno.EIO
    assert "re-open the file to read the new version" in u.log.read_text()
    # the failed read taught the mount the new version: the next open reads all of it, with its size
    assert path.read_bytes() == new
    assert os.stat(path).st_size == len(new)


def test_read_then_changed_within_ttl_keeps_old_bytes_until_refresh(u: Union) -> None:
    src = u.data / "changed-kept" / "kept.txt"
    path = u.mnt / "data" / "changed-kept" / "kept.txt"
    assert path.read_bytes() == b"first\n"
    put(src, b"second, longer\n")
    assert path.read_bytes() == b"first\n"  # within the TTL: the cached version, whole
    u.refresh()
    assert path.read_bytes() == b"second, longer\n"
    assert os.stat(path).st_size == len(b"second, longer\n")


def test_changed_while_open_cached_blocks_old_others_eio_reopen_new(u: Union) -> None:
    src = u.data / "changed-open" / "open.bin"
    path = u.mnt / "data" / "changed-open" / "open.bin"
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, MiB, 0) == OPEN_OLD[:MiB]  # block 0 is now cached under the old version
        new = os.urandom(3 * MiB + 5)
        put(src, new)
        assert os.pread(fd, MiB, 0) == OPEN_OLD[:MiB]  # the handle keeps reading its version
        assert errno_of(os.pread, fd, MiB, 2 * MiB) == errno.EIO  # never a byte of the new one
    finally:
        os.close(fd)
    assert path.read_bytes() == new  # a new open: the new version, whole (it grew)
    put(src, b"short")
    u.refresh()
    assert path.read_bytes() == b"short"  # and shrunk
    assert os.stat(path).st_size == 5


def test_two_versions_open_each_reads_its_own_then_the_new_size(u: Union) -> None:
    src = u.data / "changed-two" / "f.bin"
    path = u.mnt / "data" / "changed-two" / "f.bin"
    with open(path, "rb") as old:
        assert old.read() == TWO_OLD
        new = random.Random(7).randbytes(3 * MiB)
        put(src, new)
        u.refresh()
        with open(path, "rb") as fresh:
            assert fresh.read() == new  # the whole new version, while the old one is open
            assert old.read() == b""  # the old handle: its own end of file, never new bytes
            assert os.pread(old.fileno(), 100, MiB) == TWO_OLD[MiB:]
            assert os.stat(path).st_size == len(TWO_OLD)  # the kernel took the old handle's end as the size
    assert os.stat(path).st_size == len(new)  # until the old handle was closed
    assert path.read_bytes() == new


def test_older_larger_version_open_reads_end_at_the_new_size(u: Union) -> None:
    src = u.data / "changed-shrinks" / "f.bin"
    path = u.mnt / "data" / "changed-shrinks" / "f.bin"
    with open(path, "rb") as old:
        assert old.read() == SHRINK_OLD  # every block cached under the old version
        put(src, b"short")
        u.refresh()
        with open(path, "rb") as fresh:
            assert fresh.read() == b"short"
            # one size per file, the newest version's: the old handle reads its own bytes, cut to it
            assert os.pread(old.fileno(), 100, 0) == SHRINK_OLD[:5]
            assert os.pread(old.fileno(), 100, MiB) == b""
    assert path.read_bytes() == b"short"


def test_deleted_within_ttl_cached_bytes_then_enoent_after_refresh(u: Union) -> None:
    path = u.mnt / "data" / "deleted" / "gone.txt"
    assert path.read_bytes() == b"still here\n"
    os.unlink(u.data / "deleted" / "gone.txt")
    assert path.read_bytes() == b"still here\n"  # within the TTL, from the caches
    assert os.listdir(u.mnt / "data" / "deleted") == ["gone.txt"]
    u.refresh()
    assert errno_of(os.stat, path) == errno.ENOENT
    assert os.listdir(u.mnt / "data" / "deleted") == []


# --- union of sources ----------------------------------------------------------------------------


def test_union_mount_paths_and_dataset_directories(u: Union) -> None:
    assert os.listdir(u.mnt) == ["data", "extra"]  # the mount paths, in the Dataset's order
    assert os.listdir(u.mnt / "extra") == ["more"]
    assert (u.mnt / "extra" / "more" / "other.txt").read_bytes() == b"other\n"
    assert (u.mnt / "data" / "hello.txt").read_bytes() == b"hello\n"
    extra = os.stat(u.mnt / "extra")
    assert stat.S_ISDIR(extra.st_mode) and stat.S_IMODE(extra.st_mode) == 0o555
    assert os.listxattr(u.mnt / "extra") == []  # a directory of the Dataset: no source behind it
    assert os.getxattr(u.mnt / "extra" / "more", "user.fluidfs.source").decode() == f"file://{u.more}"
    assert errno_of(os.mkdir, u.mnt / "extra" / "new") == errno.EROFS
    assert errno_of(os.stat, u.mnt / "extra" / "other.txt") == errno.ENOENT  # no name falls through


# --- mmap ----------------------------------------------------------------------------------------


def test_mmap_shared_and_private_reads_shared_writes_refused(u: Union) -> None:
    path = u.mnt / "data" / "mmap" / "m.bin"
    want = bytes(range(256)) * 256
    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
            assert m[:] == want
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[0:4] = b"COPY"  # copy-on-write pages of this process only
            assert m[:4] == b"COPY" and m[4:] == want[4:]
        with pytest.raises(OSError) as ei:
            mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        assert ei.value.errno == errno.EACCES
    assert path.read_bytes() == want and (u.data / "mmap" / "m.bin").read_bytes() == want


# --- xattrs --------------------------------------------------------------------------------------


def test_xattrs(u: Union) -> None:
    f, d = u.mnt / "data" / "xattr" / "f.txt", u.mnt / "data" / "xattr" / "d"
    assert os.listxattr(f) == ["user.fluidfs.source", "user.fluidfs.version", "user.fluidfs.cached"]
    assert os.listxattr(d) == ["user.fluidfs.source"]
    assert os.getxattr(f, "user.fluidfs.source").decode() == f"file://{u.data}/xattr/f.txt"
    st = os.stat(u.data / "xattr" / "f.txt")
    assert os.getxattr(f, "user.fluidfs.version").decode() == f"{st.st_mtime_ns}-{st.st_size}"
    assert os.getxattr(f, "user.fluidfs.cached") == b"0.0000"
    f.read_bytes()
    assert os.getxattr(f, "user.fluidfs.cached") == b"1.0000"
    u.refresh()
    assert os.getxattr(f, "user.fluidfs.cached") == b"1.0000"  # a refresh keeps the cached blocks
    for name in ("user.fluidfs.version", "user.other", "security.selinux", "system.posix_acl_access"):
        assert errno_of(os.getxattr, d if name == "user.fluidfs.version" else f, name) == errno.ENODATA, name
    assert errno_of(os.setxattr, f, "user.x", b"1") == errno.EROFS
    assert errno_of(os.removexattr, f, "user.fluidfs.source") == errno.EROFS


# --- statfs --------------------------------------------------------------------------------------


def test_statfs_reports_the_cache(u: Union) -> None:
    st = os.statvfs(u.mnt)
    assert (st.f_bsize, st.f_frsize, st.f_namemax) == (4096, 4096, 255)
    assert st.f_blocks * st.f_bsize == MEMORY  # the cache quota (memory tier only here)
    assert 0 <= st.f_bavail == st.f_bfree <= st.f_blocks
    assert st.f_files > 0 and st.f_ffree == st.f_favail == 0
    assert st.f_flag & os.ST_RDONLY
    (u.mnt / "data" / "hello.txt").read_bytes()
    assert os.statvfs(u.mnt).f_bfree < st.f_blocks  # cached bytes show as used


# --- inode numbers -------------------------------------------------------------------------------


def test_inode_numbers_stable_across_lookups_and_refresh(u: Union) -> None:
    d = u.mnt / "data" / "inodes"
    assert os.stat(u.mnt).st_ino == 1
    a, b, hard = (os.stat(d / n).st_ino for n in ("a.txt", "b.txt", "hard.txt"))
    assert len({a, b, hard}) == 3  # one inode per path: a hard link is another file (nlink 1)
    assert os.stat(d / "hard.txt").st_nlink == 1
    assert [os.stat(d / n).st_ino for n in ("a.txt", "b.txt")] == [a, b]
    with os.scandir(d) as it:
        assert {e.name: e.inode() for e in it}["a.txt"] == a  # readdir gives the same number
    u.refresh()
    assert [os.stat(d / n).st_ino for n in ("a.txt", "b.txt")] == [a, b]
    kind = os.stat(d / "kind").st_ino
    os.rmdir(u.data / "inodes" / "kind")
    put(u.data / "inodes" / "kind", b"now a file")
    u.refresh()
    st = os.stat(d / "kind")
    assert stat.S_ISREG(st.st_mode) and st.st_ino != kind  # a path that changed type: a new inode


def test_inode_numbers_differ_across_remounts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    put(src / "a", b"a")
    put(src / "b", b"b")
    seen = []
    for order in (("a", "b"), ("b", "a")):
        with Mount(f"file://{src}", str(tmp_path / "m"), "--metrics-addr", "none") as m:
            seen.append({n: os.stat(Path(m.mnt) / n).st_ino for n in order})
    assert seen[0]["a"] == seen[1]["b"] and seen[0]["b"] == seen[1]["a"]  # numbered in order of first sight


# --- stat fields ---------------------------------------------------------------------------------


def test_stat_fields(u: Union) -> None:
    f = os.stat(u.mnt / "data" / "stat" / "f.bin")
    ref = os.stat(u.data / "stat" / "f.bin")
    assert stat.S_IFMT(f.st_mode) == stat.S_IFREG and stat.S_IMODE(f.st_mode) == 0o440  # --file-mode
    assert (f.st_uid, f.st_gid, f.st_nlink, f.st_rdev) == (0, 0, 1, 0)
    assert f.st_size == 1000 and f.st_blocks == 2 and f.st_blksize == MiB
    assert f.st_mtime_ns == f.st_atime_ns == f.st_ctime_ns == ref.st_mtime_ns
    d = os.stat(u.mnt / "data" / "stat" / "d")
    assert stat.S_IFMT(d.st_mode) == stat.S_IFDIR and stat.S_IMODE(d.st_mode) == 0o555
    assert (d.st_nlink, d.st_size, d.st_blocks) == (2, 0, 0)  # 2 whatever the subdirectories
    assert d.st_mtime_ns == os.stat(u.data / "stat" / "d").st_mtime_ns
    with open(u.mnt / "data" / "stat" / "f.bin", "rb") as fh:
        fh.read()
    assert os.stat(u.mnt / "data" / "stat" / "f.bin").st_atime_ns == ref.st_mtime_ns  # reads change no time


# --- links and special files ---------------------------------------------------------------------


def test_symlinks_followed_inside_hidden_outside_special_files_hidden(u: Union) -> None:
    d = u.mnt / "data" / "links"
    assert sorted(os.listdir(d)) == ["sub", "target.txt", "to-dir", "to-file"]
    to_file = os.lstat(d / "to-file")
    assert stat.S_ISREG(to_file.st_mode) and (d / "to-file").read_bytes() == b"target\n"
    assert stat.S_ISDIR(os.lstat(d / "to-dir").st_mode)
    assert to_file.st_ino != os.stat(d / "target.txt").st_ino
    assert errno_of(os.readlink, d / "to-file") == errno.EINVAL  # not a symlink in the mount
    for hidden in ("escapes", "broken", "fifo", "socket"):
        assert errno_of(os.stat, d / hidden) == errno.ENOENT, hidden


# --- errors --------------------------------------------------------------------------------------


def test_write_calls_erofs_even_for_missing_names(u: Union) -> None:
    d = u.mnt / "data" / "write"
    f = d / "f.txt"
    calls = [
        (os.unlink, d / "missing"),
        (os.rmdir, d),
        (os.mkdir, d / "new"),
        (os.mkfifo, d / "fifo"),
        (os.link, f, d / "hard"),
        (os.rename, f, d / "renamed"),
        (os.chown, f, 1, 1),
        (os.utime, f),
        (os.truncate, f, 0),
    ]
    for fn, *args in calls:
        assert errno_of(fn, *args) == errno.EROFS, fn
    assert errno_of(os.mkdir, d) == errno.EEXIST  # an existing name: EEXIST first (mkdir -p works)
    assert subprocess.run(["mkdir", "-p", str(d)], capture_output=True).returncode == 0
    assert not os.access(f, os.W_OK)
    assert f.read_bytes() == b"w"


def test_other_calls(u: Union) -> None:
    f = u.mnt / "data" / "other" / "f.txt"
    fd = os.open(f, os.O_RDONLY)
    try:
        assert errno_of(fcntl.ioctl, fd, 0x80086601, b"\0" * 8) == errno.ENOTTY  # FS_IOC_GETFLAGS (lsattr)
        fcntl.flock(fd, fcntl.LOCK_SH)  # locks are local to this machine
        fcntl.lockf(fd, fcntl.LOCK_SH)
        os.fsync(fd)  # nothing is ever dirty
        os.fdatasync(fd)
        buf = bytearray(3)
        assert os.readv(fd, [buf]) == 1 and bytes(buf[:1]) == b"o"
        assert (os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE)) == (0, 1)
        assert errno_of(os.write, fd, b"x") == errno.EBADF
        assert errno_of(os.posix_fallocate, fd, 0, 10) == errno.EBADF
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root")
def test_access_checked_by_the_kernel_for_other_users(u: Union) -> None:
    f = u.mnt / "data" / "access" / "f.txt"
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": [], "capture_output": True, "text": True}
    ls = subprocess.run(["ls", str(f.parent)], **as_nobody)  # type: ignore[call-overload]
    assert ls.returncode == 0 and ls.stdout.split() == ["f.txt"]  # directories: 0555
    cat = subprocess.run(["cat", str(f)], **as_nobody)  # type: ignore[call-overload]
    assert cat.returncode == 1 and "Permission denied" in cat.stderr  # files: 0440, owner root
    assert f.read_bytes() == b"secret"  # root may


# --- special names -------------------------------------------------------------------------------


def test_special_names(u: Union) -> None:
    d = u.mnt / "data" / "names"
    raw = b"\xff\xfe-latin1.bin"
    assert sorted(os.listdir(os.fsencode(d))) == sorted([raw, b"with space.txt"])
    assert (d / os.fsdecode(raw)).read_bytes() == b"not utf-8"  # names are bytes, passed through
    assert errno_of(os.stat, d / ("n" * 300)) == errno.ENOENT  # longer than 255 bytes, and absent
    assert errno_of(os.stat, d / ("n" * 4100)) == errno.ENAMETOOLONG  # the kernel's PATH_MAX
    assert os.stat(d / ".").st_ino == os.stat(d).st_ino
    assert os.stat(d / "..").st_ino == os.stat(u.mnt / "data").st_ino
    assert os.stat(u.mnt / "data" / "..").st_ino == 1  # a mount's parent: the Dataset's directory
    assert os.stat(u.mnt / "..").st_ino == os.stat(u.mnt.parent).st_ino  # the root's: outside the mount
