"""The peer protocol's request targets round-trip any key; response headers bind a block to its key."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidfs.cache.base import BlockKey
from fluidfs.cluster.protocol import (
    block_target,
    check_response_headers,
    parse_block_target,
    response_headers,
)
from fluidfs.errors import PeerError


def _from_source(s: str) -> bool:
    """Strings a source can produce: UTF-8 text, undecodable bytes as surrogateescape (\\udc80-\\udcff)."""
    try:
        s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


text = st.text(st.characters(blacklist_characters="\0"), min_size=1, max_size=60).filter(_from_source)


@given(url=text, version=st.text(st.characters(blacklist_characters="\0"), max_size=30).filter(_from_source),
       index=st.integers(0, 10**6), mode=st.sampled_from(["fetch", "cached"]), hops=st.integers(0, 3))  # fmt: skip
@settings(max_examples=80, deadline=None)
def test_targets_round_trip(url: str, version: str, index: int, mode: str, hops: int) -> None:
    key = BlockKey(url, version, 4 << 20, index)
    req = parse_block_target(block_target("ds-1.a_b", key, mode, hops))
    assert (req.dataset, req.key, req.mode, req.hops) == ("ds-1.a_b", key, mode, hops)


def test_surrogate_escaped_urls_round_trip() -> None:
    key = BlockKey("file:///d/\udcff\udcfe.bin", "1-2", 1 << 20, 3)
    assert parse_block_target(block_target("ds", key)).key == key


def test_response_headers_bind_the_block_to_its_key() -> None:
    key = BlockKey("s3://b/k", '"etag-1"', 1 << 20, 2)
    body = b"x" * 1000
    h = dict(response_headers(key, len(body), zlib.crc32(body), "m1"))
    assert check_response_headers(key, h) == (1000, zlib.crc32(body))
    for change, message in [
        ({"x-fluidfs-key": "0" * 64}, "another block"),
        ({"x-fluidfs-version": "etag-2"}, "another version"),
        ({"content-length": str((1 << 20) + 1)}, "for a block of"),
        ({"content-length": "-1"}, "for a block of"),
        ({"content-length": "many"}, "valid length"),
        ({"x-fluidfs-checksum": "crc32c:00000000"}, "unsupported or malformed checksum"),
        ({"x-fluidfs-checksum": "crc32:xyz"}, "unsupported or malformed checksum"),
        ({"x-fluidfs-checksum": ""}, "valid length or checksum"),
    ]:
        with pytest.raises(PeerError, match=message) as err:
            check_response_headers(key, {**h, **change})
        assert err.value.reason == "bad_block"
    other = BlockKey("s3://b/k", '"etag-1"', 1 << 20, 3)
    with pytest.raises(PeerError, match="another block"):
        check_response_headers(other, h)
