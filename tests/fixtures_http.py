"""Pytest fixtures for HTTP-source tests: a standard file tree, RangeHTTPServer instances on
loopback, and HTTPSource instances that are closed at teardown.

Wire into a conftest with ``pytest_plugins = ["tests.fixtures_http"]`` (or import the names).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from fluidfs.embedded.httpserver import RangeHTTPServer
from fluidfs.sources.http import HTTPSource

#: relative path -> content of the standard tree built by ``http_tree``
HTTP_TREE_FILES: dict[str, bytes] = {
    "top.bin": bytes(range(256)) * 40,  # 10240 bytes
    "empty.txt": b"",
    "train/cls0/img 1.jpg": b"jpeg-one" * 100,
    "train/cls0/img2.jpg": b"jpeg-two" * 3,
    "train/cls1/ünïcödé 名前.txt": "unicode ✓".encode(),
    "train/cls1/a+b&c=d%e#f.txt": b"odd characters",
    "val/deep/er/est/leaf.dat": b"L" * 5000,
}
#: directories of the standard tree that have no files
HTTP_TREE_EMPTY_DIRS: tuple[str, ...] = ("empty_dir", "train/cls2")


def build_http_tree(root: Path) -> Path:
    """Create the standard tree under ``root`` (files of HTTP_TREE_FILES, HTTP_TREE_EMPTY_DIRS)."""
    for rel, data in HTTP_TREE_FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for rel in HTTP_TREE_EMPTY_DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def http_tree(tmp_path: Path) -> Path:
    """A directory with the standard tree (see HTTP_TREE_FILES / HTTP_TREE_EMPTY_DIRS)."""
    return build_http_tree(tmp_path / "www")


@pytest.fixture
def http_server_factory() -> Iterator[Callable[..., RangeHTTPServer]]:
    """``make(root_dir, **RangeHTTPServer kwargs) -> started server``; all stopped at teardown."""
    servers: list[RangeHTTPServer] = []

    def make(root_dir: str | os.PathLike[str], **kw: Any) -> RangeHTTPServer:
        server = RangeHTTPServer(root_dir, **kw).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def http_server(http_tree: Path, http_server_factory: Callable[..., RangeHTTPServer]) -> RangeHTTPServer:
    """A started RangeHTTPServer (autoindex, ETag, Last-Modified) serving ``http_tree``."""
    return http_server_factory(http_tree)


@pytest.fixture
def http_source_factory() -> Iterator[Callable[..., HTTPSource]]:
    """``make(base_url, **HTTPSource kwargs) -> HTTPSource``; all closed at teardown."""
    sources: list[HTTPSource] = []

    def make(base_url: str, **kw: Any) -> HTTPSource:
        kw.setdefault("connect_timeout", 2.0)
        kw.setdefault("read_timeout", 10.0)
        source = HTTPSource(base_url, **kw)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()


@pytest.fixture
def http_source(http_server: RangeHTTPServer, http_source_factory: Callable[..., HTTPSource]) -> HTTPSource:
    """An HTTPSource listing ``http_server`` by autoindex."""
    return http_source_factory(http_server.url)
