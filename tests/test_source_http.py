"""HTTP source and the embedded Range HTTP server, against real servers on loopback (no mocks)."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import os
import time
import urllib.parse
from pathlib import Path
from typing import Callable

import pytest

from fluidfs.embedded.httpserver import RangeHTTPServer, RangeRequestHandler
from fluidfs.errors import (
    AccessDeniedError,
    NotFoundError,
    SourceError,
    SpecError,
    UnavailableError,
    VersionChangedError,
)
from fluidfs.sources.base import Entry
from fluidfs.sources.http import HTTPSource
from fluidfs.sources.http_listing import looks_like_autoindex, parse_autoindex, parse_manifest
from fluidfs.spec_types import MountSpec
from tests.fixtures_http import HTTP_TREE_EMPTY_DIRS, HTTP_TREE_FILES  # fixtures: tests/conftest.py

ServerFactory = Callable[..., RangeHTTPServer]
SourceFactory = Callable[..., HTTPSource]


def raw(
    server: RangeHTTPServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with the path sent verbatim (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def walk(source: HTTPSource, path: str = "") -> dict[str, Entry]:
    """Every entry below ``path`` by relative path, checking page bounds and name uniqueness."""
    out: dict[str, Entry] = {}
    names: list[str] = []
    for page in source.list(path):
        assert 0 < len(page) <= 1000
        for entry in page:
            names.append(entry.name)
            rel = f"{path}/{entry.name}" if path else entry.name
            out[rel] = entry
            if entry.is_dir:
                out.update(walk(source, rel))
    assert len(names) == len(set(names))
    return out


def expected_tree(root: Path) -> dict[str, tuple[bool, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel_dir, name))] = (True, 0)
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            out[rel] = (False, os.path.getsize(os.path.join(dirpath, name)))
    return out


# ---- the embedded server ----------------------------------------------------------------------


def test_server_ranges(http_server: RangeHTTPServer) -> None:
    data = HTTP_TREE_FILES["top.bin"]
    size = len(data)
    cases = {
        "bytes=0-9": (0, 9),
        "bytes=100-": (100, size - 1),
        "bytes=-7": (size - 7, size - 1),
        f"bytes=-{size * 2}": (0, size - 1),
        f"bytes=10-{size * 5}": (10, size - 1),
        f"bytes={size - 1}-{size - 1}": (size - 1, size - 1),
    }
    for rng, (first, last) in cases.items():
        status, headers, body = raw(http_server, "GET", "/top.bin", {"Range": rng})
        assert status == 206, rng
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert body == data[first : last + 1]
    for rng in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        status, headers, body = raw(http_server, "GET", "/top.bin", {"Range": rng})
        assert status == 416, rng
        assert headers["Content-Range"] == f"bytes */{size}"
    status, _, _ = raw(http_server, "GET", "/empty.txt", {"Range": "bytes=0-"})
    assert status == 416
    for ignored in ("bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=x-"):
        status, _, body = raw(http_server, "GET", "/top.bin", {"Range": ignored})
        assert (status, body) == (200, data), ignored


def test_server_head_and_validators(http_server: RangeHTTPServer) -> None:
    status, headers, body = raw(http_server, "HEAD", "/top.bin")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(HTTP_TREE_FILES["top.bin"]))
    etag, last_mod = headers["ETag"], headers["Last-Modified"]
    assert etag.startswith('"') and etag.endswith('"')
    assert raw(http_server, "GET", "/top.bin", {"Range": "bytes=0-3", "If-Match": etag})[0] == 206
    assert raw(http_server, "GET", "/top.bin", {"Range": "bytes=0-3", "If-Match": '"nope"'})[0] == 412
    assert raw(http_server, "GET", "/top.bin", {"If-Match": f'"x", {etag}'})[0] == 200
    assert raw(http_server, "GET", "/top.bin", {"Range": "bytes=0-3", "If-Range": etag})[0] == 206
    assert raw(http_server, "GET", "/top.bin", {"Range": "bytes=0-3", "If-Range": last_mod})[0] == 206
    status, _, body = raw(http_server, "GET", "/top.bin", {"Range": "bytes=0-3", "If-Range": '"old"'})
    assert (status, body) == (200, HTTP_TREE_FILES["top.bin"])
    old_date = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert raw(http_server, "GET", "/top.bin", {"Range": "bytes=0-3", "If-Range": old_date})[0] == 200


def test_server_autoindex_and_errors(http_server: RangeHTTPServer) -> None:
    status, headers, body = raw(http_server, "GET", "/train/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert '<a href="cls0/">cls0/</a>' in page and '<a href="../">../</a>' in page
    status, _, body = raw(http_server, "GET", "/train/cls1/")
    page = body.decode()
    assert 'href="%C3%BCn%C3%AFc%C3%B6d%C3%A9%20%E5%90%8D%E5%89%8D.txt"' in page
    assert 'href="a%2Bb%26c%3Dd%25e%23f.txt"' in page
    assert "a+b&amp;c=d%e#f.txt</a>" in page
    status, headers, _ = raw(http_server, "GET", "/train")
    assert (status, headers["Location"]) == (301, "/train/")
    assert raw(http_server, "GET", "/missing")[0] == 404
    assert raw(http_server, "GET", "/train/cls0/img%201.jpg")[2] == HTTP_TREE_FILES["train/cls0/img 1.jpg"]


def test_server_no_autoindex(http_tree: Path, http_server_factory: ServerFactory) -> None:
    server = http_server_factory(http_tree, autoindex=False)
    assert raw(server, "GET", "/train/")[0] == 403
    assert raw(server, "GET", "/top.bin")[0] == 200


def test_server_paths_do_not_escape(tmp_path: Path, http_server_factory: ServerFactory) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.txt").write_bytes(b"ok")
    (root / "ok.txt").write_bytes(b"ok")
    (tmp_path / "secret.txt").write_bytes(b"SECRET")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    (root / "dirlink").symlink_to(tmp_path)
    server = http_server_factory(root)
    for path in (
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/%2E%2E/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/link",
        "/dirlink/secret.txt",
        "/%00",
        "/sub/../ok.txt",  # any ".." component is refused, even one that stays inside
    ):
        status, _, body = raw(server, "GET", path)
        assert status == 404, path
        assert b"SECRET" not in body
    assert raw(server, "GET", "/sub/./ok.txt")[2] == raw(server, "GET", "/ok.txt")[2] == b"ok"


def test_server_restart_same_port(http_server: RangeHTTPServer) -> None:
    port = http_server.port
    assert raw(http_server, "GET", "/top.bin", {"Range": "bytes=0-0"})[0] == 206
    http_server.stop()
    with pytest.raises(OSError):
        raw(http_server, "GET", "/top.bin")
    http_server.start()
    assert http_server.port == port
    assert raw(http_server, "GET", "/top.bin", {"Range": "bytes=0-0"})[0] == 206


# ---- autoindex parsing (captured pages) -------------------------------------------------------

NGINX_PAGE = """<html>
<head><title>Index of /data/</title></head>
<body>
<h1>Index of /data/</h1><hr><pre><a href="../">../</a>
<a href="train/">train/</a>                                             15-Nov-2023 10:00                   -
<a href="my%20file.txt">my file.txt</a>                                        15-Nov-2023 10:00                1234
<a href="%C3%BCber%20%E5%90%8D.bin">über 名.bin</a>                                      15-Nov-2023 10:00             1048576
<a href="a_very_long_file_name_that_nginx_will_truncate_0001.bin">a_very_long_file_name_that_nginx_will_trunc..&gt;</a> 15-Nov-2023 10:00  7
<a href="100%25.txt">100%.txt</a>                                           15-Nov-2023 10:00                   3
</pre><hr></body>
</html>
"""

APACHE_PAGE = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">
<html>
 <head>
  <title>Index of /data</title>
 </head>
 <body>
<h1>Index of /data</h1>
  <table>
   <tr><th valign="top"><img src="/icons/blank.gif" alt="[ICO]"></th><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th><th><a href="?C=S;O=A">Size</a></th><th><a href="?C=D;O=A">Description</a></th></tr>
   <tr><th colspan="5"><hr></th></tr>
<tr><td valign="top"><img src="/icons/back.gif" alt="[PARENTDIR]"></td><td><a href="/">Parent Directory</a></td><td>&nbsp;</td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td><td><a href="train/">train/</a></td><td align="right">2023-11-15 10:00  </td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top"><a href="a%20b.jpg"><img src="/icons/image2.gif" alt="[IMG]"></a></td><td><a href="a%20b.jpg">a b.jpg</a></td><td align="right">2023-11-15 10:00  </td><td align="right">1.2K</td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/unknown.gif" alt="[   ]"></td><td><a href="./dot.txt">dot.txt</a></td><td align="right">2023-11-15 10:00  </td><td align="right">  3 </td><td>&nbsp;</td></tr>
<tr><td valign="top"><img src="/icons/unknown.gif" alt="[   ]"></td><td><a href="/data/abs.txt">abs.txt</a></td><td align="right">2023-11-15 10:00  </td><td align="right">  3 </td><td>&nbsp;</td></tr>
<tr><td><a href="http://other.example.com/data/x.bin">x.bin</a></td></tr>
<tr><td><a href="/elsewhere/y.bin">y.bin</a></td></tr>
<tr><td><a href="sub/deeper.bin">deeper.bin</a></td></tr>
<tr><td><a href="#top">top</a><a href="mailto:admin@example.com">admin</a><a href="%2e%2e/">up</a></td></tr>
   <tr><th colspan="5"><hr></th></tr>
</table>
<address>Apache/2.4.57 (Debian) Server at example.com Port 80</address>
</body></html>
"""

PYTHON_PAGE = """<!DOCTYPE HTML>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Directory listing for /data/</title>
</head>
<body>
<h1>Directory listing for /data/</h1>
<hr>
<ul>
<li><a href="link">link@</a></li>
<li><a href="sub%20dir/">sub dir/</a></li>
</ul>
<hr>
</body>
</html>
"""


def test_parse_nginx_autoindex() -> None:
    assert looks_like_autoindex(NGINX_PAGE)
    assert parse_autoindex(NGINX_PAGE, "http://example.com/data/") == [
        ("train", True),
        ("my file.txt", False),
        ("über 名.bin", False),
        ("a_very_long_file_name_that_nginx_will_truncate_0001.bin", False),
        ("100%.txt", False),
    ]


def test_parse_apache_autoindex() -> None:
    assert looks_like_autoindex(APACHE_PAGE)
    assert parse_autoindex(APACHE_PAGE, "http://example.com/data/") == [
        ("train", True),
        ("a b.jpg", False),
        ("dot.txt", False),
        ("abs.txt", False),
    ]


def test_parse_python_autoindex() -> None:
    assert looks_like_autoindex(PYTHON_PAGE)
    assert not looks_like_autoindex("<html><title>My homepage</title><a href='x'>x</a></html>")
    assert parse_autoindex(PYTHON_PAGE, "http://127.0.0.1:8000/data/") == [("link", False), ("sub dir", True)]


# ---- HTTPSource via autoindex -----------------------------------------------------------------


def test_autoindex_walk_matches_tree(http_source: HTTPSource, http_tree: Path) -> None:
    http_source.check()
    got = walk(http_source)
    want = expected_tree(http_tree)
    assert {p: (e.is_dir, e.size) for p, e in got.items()} == want
    for rel in HTTP_TREE_EMPTY_DIRS:
        assert got[rel].is_dir and list(http_source.list(rel)) == []
    for rel, data in HTTP_TREE_FILES.items():
        entry = http_source.stat(rel)
        assert entry == got[rel]
        assert not entry.is_dir and entry.size == len(data) and entry.version
        assert entry.mtime == pytest.approx(os.stat(http_tree / rel).st_mtime, abs=1.0)
        assert http_source.read(rel, 0, len(data) + 10, entry.version) == data
    assert http_source.stat("train/cls1").is_dir
    assert http_source.stat("") == Entry(name="", is_dir=True)


def test_autoindex_not_found(http_source: HTTPSource) -> None:
    with pytest.raises(NotFoundError):
        http_source.stat("nope.txt")
    with pytest.raises(NotFoundError):
        next(iter(http_source.list("nope")))
    with pytest.raises(NotFoundError):
        next(iter(http_source.list("top.bin")))
    with pytest.raises(NotFoundError):
        http_source.read("train/nope.jpg", 0, 10)


def test_autoindex_big_directory_paged(
    tmp_path: Path, http_server_factory: ServerFactory, http_source_factory: SourceFactory
) -> None:
    root = tmp_path / "big"
    (root / "d").mkdir(parents=True)
    names = {f"f{i:05d} x.bin" for i in range(2000)}
    for i, name in enumerate(sorted(names)):
        (root / "d" / name).write_bytes(b"x" * (i % 7))
    server = http_server_factory(root)
    source = http_source_factory(server.url)
    pages = list(source.list("d"))
    assert len(pages) >= 2 and all(len(p) <= 1000 for p in pages)
    listed = [e.name for p in pages for e in p]
    assert len(listed) == 2000 and set(listed) == names
    sizes = {e.name: e.size for p in pages for e in p}
    assert all(sizes[n] == i % 7 for i, n in enumerate(sorted(names)))


def test_autoindex_base_without_slash_and_subdir(
    http_server: RangeHTTPServer, http_source_factory: SourceFactory
) -> None:
    source = http_source_factory(http_server.url + "train")
    top = [e.name for page in source.list("") for e in page]
    assert sorted(top) == ["cls0", "cls1", "cls2"]
    assert source.read("cls0/img2.jpg", 0, 100) == HTTP_TREE_FILES["train/cls0/img2.jpg"]
    assert source.url("cls0/img 1.jpg") == http_server.url + "train/cls0/img%201.jpg"


def test_read_ranges(http_source: HTTPSource) -> None:
    data = HTTP_TREE_FILES["top.bin"]
    version = http_source.stat("top.bin").version
    for start, end in [(0, 1), (5, 300), (0, len(data)), (len(data) - 3, len(data) + 100), (4096, 8192)]:
        assert http_source.read("top.bin", start, end, version) == data[start:end]
        assert http_source.read("top.bin", start, end) == data[start:end]
    assert http_source.read("top.bin", len(data), len(data) + 10, version) == b""
    assert http_source.read("top.bin", len(data) + 50, len(data) + 60, version) == b""
    assert http_source.read("top.bin", 7, 7, version) == b""
    assert http_source.read("empty.txt", 0, 4096, http_source.stat("empty.txt").version) == b""


@pytest.mark.parametrize("validators", ["etag", "last_modified", "none"])
def test_version_change_detected(
    validators: str, http_tree: Path, http_server_factory: ServerFactory, http_source_factory: SourceFactory
) -> None:
    server = http_server_factory(http_tree, etag=validators == "etag", last_modified=validators == "last_modified")
    source = http_source_factory(server.url)
    entry = source.stat("top.bin")
    prefix = {"etag": "", "last_modified": "lm:", "none": "sz:"}[validators]
    assert entry.version.startswith(prefix) and entry.version
    assert source.read("top.bin", 0, 10, entry.version) == HTTP_TREE_FILES["top.bin"][:10]
    path = http_tree / "top.bin"
    path.write_bytes(b"new content, other size")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(VersionChangedError):
        source.read("top.bin", 0, 10, entry.version)
    with pytest.raises(VersionChangedError):  # the object shrank below the range: 416 is not b""
        source.read("top.bin", 100, 200, entry.version)
    fresh = source.stat("top.bin")
    assert fresh.version != entry.version
    assert source.read("top.bin", 0, 3, fresh.version) == b"new"


# ---- manifest ---------------------------------------------------------------------------------


def test_manifest_well_known_json(
    http_tree: Path, http_server_factory: ServerFactory, http_source_factory: SourceFactory
) -> None:
    etag_of = {}
    server = http_server_factory(http_tree)
    for rel in ("top.bin", "train/cls0/img 1.jpg"):
        etag_of[rel] = raw(server, "HEAD", "/" + urllib.parse.quote(rel))[1]["ETag"]
    doc = {
        "version": 1,
        "files": [
            {"path": "top.bin", "size": 10240, "mtime": 1700000000.5, "etag": etag_of["top.bin"]},
            {"path": "train/cls0/img 1.jpg", "size": 800, "etag": etag_of["train/cls0/img 1.jpg"]},
            {"path": "val/deep/er/est/leaf.dat", "size": 5000},
        ],
        "dirs": ["nothing/here"],
    }
    (http_tree / "fluidfs-manifest.json").write_text(json.dumps(doc))
    source = http_source_factory(server.url)
    source.check()
    tree = walk(source)
    assert sorted(tree) == [
        "nothing", "nothing/here", "top.bin", "train", "train/cls0", "train/cls0/img 1.jpg",
        "val", "val/deep", "val/deep/er", "val/deep/er/est", "val/deep/er/est/leaf.dat",
    ]  # fmt: skip
    top = source.stat("top.bin")
    assert (top.size, top.mtime, top.version) == (10240, 1700000000.5, etag_of["top.bin"].strip('"'))
    assert source.read("top.bin", 10, 20, top.version) == HTTP_TREE_FILES["top.bin"][10:20]
    leaf = source.stat("val/deep/er/est/leaf.dat")
    assert leaf.version.startswith("mf:")
    assert source.read("val/deep/er/est/leaf.dat", 4990, 6000, leaf.version) == b"L" * 10
    with pytest.raises(NotFoundError):
        source.stat("empty.txt")  # on the server, not in the manifest
    with pytest.raises(NotFoundError):
        source.read("empty.txt", 0, 1)
    (http_tree / "val/deep/er/est/leaf.dat").write_bytes(b"short")
    with pytest.raises(VersionChangedError):
        source.read("val/deep/er/est/leaf.dat", 0, 10, leaf.version)


def test_manifest_option_tsv_and_gzip(
    http_tree: Path, http_server_factory: ServerFactory, http_source_factory: SourceFactory
) -> None:
    (http_tree / "meta").mkdir()
    tsv = "# path\tsize\tmtime\ntop.bin\t10240\t1700000000\n\ntrain/cls0/img2.jpg\t24\nempty_dir/\n"
    (http_tree / "meta" / "list.tsv").write_text(tsv)
    (http_tree / "meta" / "list.json.gz").write_bytes(
        gzip.compress(json.dumps({"version": 1, "files": [{"path": "empty.txt", "size": 0}]}).encode())
    )
    server = http_server_factory(http_tree)
    source = http_source_factory(server.url, manifest="meta/list.tsv")
    assert sorted(walk(source)) == ["empty_dir", "top.bin", "train", "train/cls0", "train/cls0/img2.jpg"]
    assert source.stat("top.bin").mtime == 1700000000.0
    assert source.read("train/cls0/img2.jpg", 0, 100, source.stat("train/cls0/img2.jpg").version) == b"jpeg-two" * 3
    absolute = http_source_factory(server.url, manifest=server.url + "meta/list.json.gz")
    assert [e.name for p in absolute.list("") for e in p] == ["empty.txt"]
    disabled = http_source_factory(server.url, manifest="none")
    (http_tree / "fluidfs-manifest.json").write_text('{"version": 1, "files": []}')
    assert "top.bin" in {e.name for p in disabled.list("") for e in p}
    missing = http_source_factory(server.url, manifest="meta/absent.json")
    with pytest.raises(NotFoundError):
        missing.check()


@pytest.mark.parametrize(
    ("manifest", "where"),
    [
        ({"version": 1, "files": [{"path": "ok", "size": 1}, {"path": "../etc/passwd", "size": 1}]}, "files[1]"),
        ({"version": 1, "files": [{"path": "/abs", "size": 1}]}, "files[0]"),
        ({"version": 1, "files": [{"path": "a//b", "size": 1}]}, "files[0]"),
        ({"version": 1, "files": [{"path": "a/./b", "size": 1}]}, "files[0]"),
        ({"version": 1, "files": [{"path": "a/", "size": 1}]}, "files[0]"),
        ({"version": 1, "files": [{"path": "a", "size": -1}]}, "files[0]"),
        ({"version": 1, "files": [{"path": "a", "size": "12"}]}, "files[0]"),
        ({"version": 1, "files": [{"path": "a", "size": 1}, {"path": "a", "size": 1}]}, "files[1]"),
        ({"version": 1, "files": [{"path": "a", "size": 1}, {"path": "a/b", "size": 1}]}, "files[1]"),
        ({"version": 1, "files": [{"path": "a/b", "size": 1}], "dirs": ["a/b"]}, "dirs[0]"),
        ({"version": 2, "files": []}, "version"),
        ("ok\t1\n../x\t1\n", "line 2"),
        ("ok\t1\n# c\n\nx\tbig\n", "line 4"),
        ("ok\t1\n/x\t1\n", "line 2"),
    ],
)
def test_bad_manifest_rejected(
    manifest: object, where: str, tmp_path: Path, http_server_factory: ServerFactory, http_source_factory: SourceFactory
) -> None:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (tmp_path / "fluidfs-manifest.json").write_text(text)
    server = http_server_factory(tmp_path)
    source = http_source_factory(server.url)
    with pytest.raises(SourceError) as info:
        source.check()
    assert where in str(info.value)
    assert not isinstance(info.value, (NotFoundError, UnavailableError))


def test_parse_manifest_unit() -> None:
    tree = parse_manifest(b'{"version": 1, "files": [{"path": "a/b/c", "size": 3, "etag": "W/\\"w\\""}]}', "m")
    assert tree.files == 1 and tree.stat("a/b").is_dir  # type: ignore[union-attr]
    assert tree.stat("a/b/c").version.startswith("mf:")  # type: ignore[union-attr]  # weak ETag unusable
    with pytest.raises(SourceError, match="not valid JSON"):
        parse_manifest(b"{nope", "m")


# ---- single file ------------------------------------------------------------------------------


def test_single_file_url(http_server: RangeHTTPServer, http_source_factory: SourceFactory) -> None:
    url = http_server.url + "train/cls0/img%201.jpg"
    source = http_source_factory(url)
    source.check()
    pages = list(source.list(""))
    assert len(pages) == 1 and [e.name for e in pages[0]] == ["img 1.jpg"]
    entry = source.stat("img 1.jpg")
    assert entry.size == 800 and not entry.is_dir
    assert source.read("img 1.jpg", 0, 8, entry.version) == b"jpeg-one"
    assert source.url("img 1.jpg") == url
    with pytest.raises(NotFoundError):
        source.stat("other")
    with pytest.raises(NotFoundError):
        next(iter(source.list("img 1.jpg")))
    with pytest.raises(NotFoundError):
        http_source_factory(http_server.url + "missing.bin").check()


# ---- auth -------------------------------------------------------------------------------------


class AuthHandler(RangeRequestHandler):
    expected = {"Basic dXNlcjpww6Rzcw==", "Bearer tok-123"}  # user:päss (UTF-8)

    def authorize(self) -> bool:
        if self.headers.get("Authorization") in self.expected:
            return True
        self.send_error(401)
        return False


def test_auth_headers(http_tree: Path, http_server_factory: ServerFactory, http_source_factory: SourceFactory) -> None:
    server = http_server_factory(http_tree, handler_class=AuthHandler)
    with pytest.raises(AccessDeniedError):
        http_source_factory(server.url).check()
    with pytest.raises(AccessDeniedError):
        http_source_factory(server.url, credentials={"username": "user", "password": "wrong"}).check()
    for creds in ({"username": "user", "password": "päss"}, {"bearer_token": "tok-123"}):
        source = http_source_factory(server.url, credentials=creds)
        source.check()
        assert source.read("top.bin", 0, 4, source.stat("top.bin").version) == HTTP_TREE_FILES["top.bin"][:4]


# ---- outages, retries, servers without Range ---------------------------------------------------


def test_outage_and_restart(http_server: RangeHTTPServer, http_source_factory: SourceFactory) -> None:
    source = http_source_factory(http_server.url, connect_timeout=1.0, read_timeout=2.0)
    version = source.stat("top.bin").version
    assert source.read("top.bin", 0, 4, version) == HTTP_TREE_FILES["top.bin"][:4]
    http_server.stop()
    t0 = time.monotonic()
    with pytest.raises(UnavailableError):
        source.read("top.bin", 0, 4, version)
    with pytest.raises(UnavailableError):
        source.stat("top.bin")
    with pytest.raises(UnavailableError):
        next(iter(source.list("train")))
    assert time.monotonic() - t0 < 10
    http_server.start()
    assert source.read("top.bin", 4, 8, version) == HTTP_TREE_FILES["top.bin"][4:8]
    assert {e.name for p in source.list("train") for e in p} == {"cls0", "cls1", "cls2"}


def test_unreachable_at_start(http_source_factory: SourceFactory) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = http_source_factory(f"http://127.0.0.1:{port}/", connect_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(UnavailableError):
        source.check()
    assert time.monotonic() - t0 < 10


class FlakyHandler(RangeRequestHandler):
    failures_left = 0

    def authorize(self) -> bool:
        cls = type(self)
        if cls.failures_left > 0:
            cls.failures_left -= 1
            self.send_error(503)
            return False
        return True


def test_retries_on_503(
    http_tree: Path, http_server_factory: ServerFactory, http_source_factory: SourceFactory
) -> None:
    handler: type[FlakyHandler] = type("Flaky", (FlakyHandler,), {"failures_left": 0})
    server = http_server_factory(http_tree, handler_class=handler)
    source = http_source_factory(server.url, max_attempts=3)
    version = source.stat("top.bin").version
    handler.failures_left = 2
    assert source.read("top.bin", 0, 4, version) == HTTP_TREE_FILES["top.bin"][:4]
    handler.failures_left = 10
    with pytest.raises(UnavailableError):
        source.read("top.bin", 0, 4, version)


class NoRangeHandler(RangeRequestHandler):
    def parse_range(self, header: str | None, size: int) -> tuple[int, int] | None | str:
        return None


@pytest.mark.parametrize("etag", [True, False])
def test_server_ignoring_range(
    etag: bool, tmp_path: Path, http_server_factory: ServerFactory, http_source_factory: SourceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "big.bin").write_bytes(data)
    server = http_server_factory(tmp_path, handler_class=NoRangeHandler, etag=etag)
    source = http_source_factory(server.url)
    version = source.stat("big.bin").version
    with caplog.at_level(logging.WARNING, logger="fluidfs.sources.http"):
        for start, end in [(0, 10), (1_000_000, 1_100_000), (len(data) - 5, len(data) + 5), (2_000_000, 3_000_000)]:
            assert source.read("big.bin", start, end, version) == data[start:end]
    assert sum("ignores Range" in r.getMessage() for r in caplog.records) == 1
    (tmp_path / "big.bin").write_bytes(data[:100])
    with pytest.raises(VersionChangedError):
        source.read("big.bin", 0, 10, version)


# ---- construction -----------------------------------------------------------------------------


def test_from_mount_options_and_credentials(caplog: pytest.LogCaptureFixture) -> None:
    mount = MountSpec(
        name="web", url="https://example.com/data/", scheme="https", path="/",
        options={"manifest": "list.tsv", "verify_ssl": "false", "connect_timeout": "2.5", "read_timeout": "9",
                 "max_attempts": "5", "endpoint": "for-another-runtime"},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="fluidfs.sources.http"):
        source = HTTPSource.from_mount(mount, {"username": "u", "password": "sekrit", "access_key_id": "AKIA"})
    try:
        assert source.kind == "http" and source.manifest == "list.tsv"
        assert source.url("a b/c#d.jpg") == "https://example.com/data/a%20b/c%23d.jpg"
    finally:
        source.close()
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "'endpoint'" in warnings and "'access_key_id'" in warnings and "sekrit" not in warnings
    bad = [
        ({"verify_ssl": "maybe"}, {}, "options.verify_ssl"),
        ({"connect_timeout": "-1"}, {}, "options.connect_timeout"),
        ({"read_timeout": "soon"}, {}, "options.read_timeout"),
        ({"read_timeout": "nan"}, {}, "options.read_timeout"),
        ({"max_attempts": "0"}, {}, "options.max_attempts"),
        ({}, {"username": "u", "bearer_token": "t"}, "credentials"),
        ({}, {"password": "p"}, "credentials"),
    ]
    for options, creds, field in bad:
        with pytest.raises(SpecError) as info:
            HTTPSource.from_mount(
                MountSpec(name="web", url="http://h/", scheme="http", path="/", options=options), creds
            )
        assert info.value.field == field
    with pytest.raises(SpecError, match="mountPoint"):
        HTTPSource.from_mount(MountSpec(name="web", url="s3://b/p", scheme="s3", path="/"), {})
