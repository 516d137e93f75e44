"""The URL → (source, path) mapping that keeps peers inside a member's dataset."""

from __future__ import annotations

import urllib.parse

import pytest

from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.cluster.provider import CacheBlockProvider, clean_relative_path


class FakeReader:
    """Builds URLs like a source does: ``root + quote(path)`` (HTTP) or ``root + path`` (S3, file)."""

    def __init__(self, root: str, quote: bool = False) -> None:
        self.root = root
        self.quote = quote

    def url(self, path: str) -> str:
        return self.root + (urllib.parse.quote(path) if self.quote else path)

    async def read_block(self, path: str, start: int, end: int, version: str = "") -> bytes:  # pragma: no cover
        raise AssertionError("not read in these tests")


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("a", True),
        ("a/b.c", True),
        ("..a/b..", True),
        ("", False),
        ("/a", False),
        ("a/", False),
        ("a//b", False),
        ("a/./b", False),
        ("a/../b", False),
        ("..", False),
        ("a\0b", False),
    ],
)
def test_clean_relative_path(path: str, ok: bool) -> None:
    assert clean_relative_path(path) is ok


def test_urls_map_back_only_into_the_datasets_sources() -> None:
    http = FakeReader("https://data.example/sets/", quote=True)
    s3 = FakeReader("s3://bucket/prefix/")
    local = FakeReader("file:///srv/data/")
    cache = TieredCache(MemoryTier(4 << 20), dataset="prov")
    p = CacheBlockProvider("prov", cache, [http, s3, local], block_size=1 << 20)
    assert p.resolve("https://data.example/sets/a%20b/c.bin") == (http, "a b/c.bin")
    assert p.resolve("s3://bucket/prefix/x/y.tar") == (s3, "x/y.tar")
    assert p.resolve("file:///srv/data/z") == (local, "z")
    for url in [
        "https://data.example/sets/%2E%2E/secret",  # quoted ..
        "https://data.example/sets/a%2Fb",  # quoted slash: url(unquoted) would not round-trip
        "https://data.example/other/x",
        "https://data.example/sets/",
        "s3://bucket/prefix/../other/key",
        "s3://bucket/prefixed/key",
        "s3://other-bucket/prefix/x",
        "file:///srv/data/../etc/passwd",
        "file:///srv/data//x",
        "file:///etc/passwd",
        "gopher://x",
    ]:
        assert p.resolve(url) is None, url
