"""LocalSource on a temporary directory, and the registry's file:// dispatch."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fluidfs.errors import (
    AccessDeniedError,
    NotFoundError,
    SourceError,
    SpecError,
    UnavailableError,
    VersionChangedError,
)
from fluidfs.sources.local import LocalSource, version_of
from fluidfs.sources.registry import local_path, open_source
from fluidfs.spec.model import MountSpec

BIG_COUNT = 2500
BLOB = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tree shared by the module (tests must not modify it)."""
    tmp_path = tmp_path_factory.mktemp("local")
    root = tmp_path / "root"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "emptydir").mkdir()
    (root / "n" / "a" / "b").mkdir(parents=True)
    (root / "top.txt").write_bytes(b"top level\n")
    (root / "d" / "f.bin").write_bytes(BLOB)
    (root / "d" / "empty").write_bytes(b"")
    (root / "d" / "sp ace ü✓.txt").write_bytes(b"unicode name\n")
    (root / "d" / "sub" / "deep.txt").write_bytes(b"deep\n")
    (root / "n" / "a" / "b" / "c.txt").write_bytes(b"c")
    (root / "n" / "two").write_bytes(b"22")
    big = root / "big"
    big.mkdir()
    for i in range(BIG_COUNT):
        (big / f"file-{i:05d}.dat").write_bytes(str(i).encode())
    # outside the root, reachable only through symlinks
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"do not expose")
    os.symlink(outside / "secret.txt", root / "escape-file")
    os.symlink(outside, root / "escape-dir")
    os.symlink("../../outside/secret.txt", root / "d" / "escape-rel")
    os.symlink("f.bin", root / "d" / "link-in")  # stays inside: followed
    os.symlink(root / "n", root / "link-dir")  # absolute, inside: followed
    os.symlink("missing-target", root / "broken")
    os.mkfifo(root / "fifo")
    return root


def names(src: LocalSource, path: str) -> dict[str, bool]:
    seen: dict[str, bool] = {}
    for page in src.list(path):
        for e in page:
            assert e.name not in seen
            seen[e.name] = e.is_dir
    return seen


def test_stat(tree: Path):
    src = LocalSource(tree)
    assert src.kind == "local"
    assert src.stat("").is_dir
    f = src.stat("d/f.bin")
    st = os.stat(tree / "d" / "f.bin")
    assert (f.name, f.is_dir, f.size) == ("f.bin", False, 10240)
    assert f.version == f"{st.st_mtime_ns}-{st.st_size}"
    assert f.mtime == st.st_mtime_ns / 1e9
    assert src.stat("d").is_dir and src.stat("emptydir").is_dir
    assert src.stat("d/empty").size == 0
    assert src.stat("d/sp ace ü✓.txt").size == len(b"unicode name\n")
    for missing in ("nope", "d/nope", "d/f.bin/x", "fifo", "broken"):
        with pytest.raises(NotFoundError) as ei:
            src.stat(missing)
        assert f"file://{tree}/{missing}" in str(ei.value)


def test_symlinks_inside_followed_outside_hidden(tree: Path):
    src = LocalSource(tree)
    assert src.stat("d/link-in").size == 10240
    assert src.read("d/link-in", 0, 4) == BLOB[:4]
    assert src.stat("link-dir").is_dir
    assert names(src, "link-dir") == {"a": True, "two": False}
    for bad in ("escape-file", "escape-dir", "escape-dir/secret.txt", "d/escape-rel"):
        with pytest.raises(NotFoundError, match="outside"):
            src.stat(bad)
        with pytest.raises(NotFoundError):
            src.read(bad, 0, 100)
    with pytest.raises(NotFoundError):
        next(iter(src.list("escape-dir")))
    root = names(src, "")
    assert "escape-file" not in root and "escape-dir" not in root
    assert "broken" not in root and "fifo" not in root
    assert "escape-rel" not in names(src, "d")


def test_list_pages_and_nesting(tree: Path):
    src = LocalSource(tree)
    gen = src.list("big")
    first = next(gen)
    assert len(first) == 1000
    pages = [first, *gen]
    assert len(pages) == 3
    all_names = [e.name for p in pages for e in p]
    assert len(set(all_names)) == len(all_names) == BIG_COUNT
    assert set(all_names) == {f"file-{i:05d}.dat" for i in range(BIG_COUNT)}
    assert names(src, "") == {
        "top.txt": False,
        "d": True,
        "emptydir": True,
        "n": True,
        "big": True,
        "link-dir": True,
    }
    assert names(src, "emptydir") == {}
    assert names(src, "n/a") == {"b": True}
    d = {e.name: e for p in src.list("d") for e in p}
    assert set(d) == {"f.bin", "empty", "sp ace ü✓.txt", "sub", "link-in"}
    for name, entry in d.items():
        assert src.stat(f"d/{name}") == entry  # list and stat agree
    for bad in ("nope", "top.txt"):
        with pytest.raises(NotFoundError):
            next(iter(src.list(bad)))


def test_read_ranges(tree: Path):
    src = LocalSource(tree)
    v = src.stat("d/f.bin").version
    assert src.read("d/f.bin", 0, 100) == BLOB[:100]
    assert src.read("d/f.bin", 5000, 6000, v) == BLOB[5000:6000]
    assert src.read("d/f.bin", 10000, 20000) == BLOB[10000:]
    assert src.read("d/f.bin", 10240, 10300) == b""
    assert src.read("d/f.bin", 99999, 100000) == b""
    assert src.read("d/f.bin", 7, 7) == b""
    assert src.read("d/empty", 0, 4096) == b""
    assert src.read("d/sp ace ü✓.txt", 0, 100) == b"unicode name\n"
    with pytest.raises(NotFoundError):
        src.read("nope", 0, 1)
    with pytest.raises(NotFoundError):
        src.read("d", 0, 1)


def test_version_change_detected(tmp_path: Path):
    (tmp_path / "d").mkdir()
    p = tmp_path / "d" / "f.bin"
    p.write_bytes(BLOB)
    src = LocalSource(tmp_path)
    v1 = src.stat("d/f.bin").version
    p.write_bytes(b"changed content")  # different size
    with pytest.raises(VersionChangedError):
        src.read("d/f.bin", 0, 10, v1)
    v2 = src.stat("d/f.bin").version
    assert v2 != v1
    assert src.read("d/f.bin", 0, 7, v2) == b"changed"
    # same size, new mtime
    st = os.stat(p)
    p.write_bytes(b"CHANGED CONTENT")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(VersionChangedError):
        src.read("d/f.bin", 0, 7, v2)
    assert version_of(os.stat(p)) == src.stat("d/f.bin").version


def test_check_and_url(tmp_path: Path, tree: Path):
    LocalSource(tree).check()
    with pytest.raises(NotFoundError, match="does not exist"):
        LocalSource(tmp_path / "missing").check()
    with pytest.raises(NotFoundError, match="not a directory"):
        LocalSource(tree / "top.txt").check()
    assert LocalSource(tree).url("d/f.bin") == f"file://{tree}/d/f.bin"
    assert LocalSource(tree).url("") == f"file://{tree}"


def test_permission_denied(tmp_path: Path):
    tree = tmp_path
    tree.chmod(0o755)
    locked = tree / "locked"
    locked.write_bytes(b"x")
    locked.chmod(0)

    def check() -> None:
        with pytest.raises(AccessDeniedError):
            LocalSource(tree).read("locked", 0, 1)

    try:
        if os.geteuid() != 0:
            check()
            return
        # root bypasses file permissions: check as an unprivileged user in a forked child
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                check()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        locked.chmod(0o644)


def test_errno_mapping():
    src = LocalSource("/nonexistent-root")
    cases = {
        errno.ENOENT: NotFoundError,
        errno.ENOTDIR: NotFoundError,
        errno.EACCES: AccessDeniedError,
        errno.EPERM: AccessDeniedError,
        errno.ESTALE: UnavailableError,
        errno.EIO: SourceError,
    }
    for code, cls in cases.items():
        err = src._error(OSError(code, os.strerror(code)), "x", "read")
        assert type(err) is cls, code
        assert err.url == "file:///nonexistent-root/x"


def test_root_given_through_symlink(tmp_path: Path, tree: Path):
    alias = tmp_path / "alias"
    os.symlink(tree, alias)
    src = LocalSource(alias)
    assert src.read("top.txt", 0, 3) == b"top"
    assert src.stat("d/link-in").size == 10240
    with pytest.raises(NotFoundError):
        src.stat("escape-file")


def test_registry_file_scheme(tree: Path):
    mount = MountSpec(name="local", url=f"file://{tree}", scheme="file", path="/")
    src = open_source(mount, {})
    assert isinstance(src, LocalSource)
    src.check()
    assert src.read("top.txt", 0, 3) == b"top"
    assert local_path("file:///a/b") == "/a/b"
    assert local_path("file://localhost/a/b") == "/a/b"
    assert local_path("/plain/path") == "/plain/path"


def test_registry_unknown_scheme():
    mount = MountSpec(name="x", url="gs://bucket/p", scheme="gs", path="/")
    with pytest.raises(SpecError, match="unsupported scheme"):
        open_source(mount, {})


def test_registry_http_dispatches_to_http_source(monkeypatch):
    http = pytest.importorskip("fluidfs.sources.http")
    calls = []
    monkeypatch.setattr(
        http.HTTPSource, "from_mount", classmethod(lambda cls, m, c, timeout: calls.append((m, c, timeout)) or "made")
    )
    mount = MountSpec(name="web", url="https://example.invalid/data/", scheme="https", path="/")
    assert open_source(mount, {"bearer_token": "t"}, timeout=7.0) == "made"
    assert calls == [(mount, {"bearer_token": "t"}, 7.0)]


def test_directory_loops_hidden(tmp_path: Path):
    """A directory that is one of its own ancestors (symlink or bind mount back up the tree) is
    hidden, in list and stat alike; other symlinked directories are shown."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "data.bin").write_bytes(b"x" * 100)
    (root / "other").mkdir()
    os.symlink("..", root / "a" / "up")  # -> root/: an ancestor
    os.symlink(".", root / "a" / "b" / "self")  # -> itself
    os.symlink(root, root / "a" / "b" / "top")  # absolute -> the root
    os.symlink("../other", root / "a" / "side")  # a sibling: not a loop
    src = LocalSource(root)
    assert names(src, "a") == {"b": True, "side": True}
    assert names(src, "a/b") == {"data.bin": False}
    assert names(src, "a/side") == {}
    for loop in ("a/up", "a/b/self", "a/b/top", "a/up/a", "a/b/self/data.bin"):
        with pytest.raises(NotFoundError, match="loop"):
            src.stat(loop)
        with pytest.raises(NotFoundError):
            next(iter(src.list(loop)))
    with pytest.raises(NotFoundError):
        src.read("a/b/self/data.bin", 0, 10)
    assert src.stat("a/side").is_dir and src.stat("a/b/data.bin").size == 100


def test_walk_of_a_looping_tree_terminates(tmp_path: Path):
    """A walk through the Source API sees every file once (no tree replicated 40 levels deep)."""
    root = tmp_path / "root"
    (root / "x" / "y").mkdir(parents=True)
    for i in range(3):
        (root / "x" / "y" / f"f{i}").write_bytes(b"z" * 10)
    os.symlink("../..", root / "x" / "y" / "back")
    src = LocalSource(root)
    files = []
    todo = [""]
    while todo:
        d = todo.pop()
        for page in src.list(d):
            for e in page:
                p = f"{d}/{e.name}" if d else e.name
                (todo if e.is_dir else files).append(p)
    assert sorted(files) == ["x/y/f0", "x/y/f1", "x/y/f2"]
