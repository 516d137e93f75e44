"""Real FUSE over HTTP: a Range-capable server on loopback, listed by autoindex and by a
manifest; the whole tree compared byte for byte and stat for stat."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from fluidfs.embedded.httpserver import RangeHTTPServer
from tests.fusehelp import Mount, compare_tree, make_tree, mmap_compare, needs_fuse, random_preads

pytestmark = [needs_fuse, pytest.mark.fuse]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("httpref")
    make_tree(str(root), many=2000)
    return root


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[RangeHTTPServer]:
    with RangeHTTPServer(str(tree)) as s:
        yield s


def http_mtime(_rel: str, st: os.stat_result) -> float:
    """HTTP carries Last-Modified with one-second precision."""
    return float(int(st.st_mtime))


def test_autoindex_tree_matches(server: RangeHTTPServer, tree: Path, tmp_path: Path) -> None:
    with Mount(server.url, str(tmp_path / "m"), "--block-size", "1Mi") as m:
        assert compare_tree(m.mnt, str(tree), mtime_of=http_mtime) > 2000
        random_preads(os.path.join(m.mnt, "big.bin"), str(tree / "big.bin"), count=150)
        mmap_compare(os.path.join(m.mnt, "big.bin"), str(tree / "big.bin"))


def test_manifest_tree_and_single_file(tree: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "data").mkdir(parents=True)
    files = []
    for rel in ["big.bin", "small.txt", "empty", "names/with space.txt", "deep/a/b/c/d/e/f/g/leaf.txt"]:
        dst = site / "data" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((tree / rel).read_bytes())
        st = dst.stat()
        files.append({"path": rel, "size": st.st_size, "mtime": float(int(st.st_mtime))})
    (site / "data" / "fluidfs-manifest.json").write_text(json.dumps({"version": 1, "files": files}))
    with RangeHTTPServer(str(site), autoindex=False) as s:
        ref = tmp_path / "ref"
        for f in files:
            (ref / f["path"]).parent.mkdir(parents=True, exist_ok=True)
            (ref / f["path"]).write_bytes((site / "data" / f["path"]).read_bytes())
            os.utime(ref / f["path"], (f["mtime"], f["mtime"]))
        with Mount(s.url + "data/", str(tmp_path / "m1")) as m:
            assert compare_tree(m.mnt, str(ref), mtime_of=http_mtime) == len(files)
        with Mount(s.url + "data/small.txt", str(tmp_path / "m2")) as m:
            assert os.listdir(m.mnt) == ["small.txt"]
            assert open(os.path.join(m.mnt, "small.txt"), "rb").read() == (tree / "small.txt").read_bytes()
