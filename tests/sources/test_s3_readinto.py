"""S3Source.read_into / read_block against real S3 servers on loopback (moto and SeaweedFS): bodies
received straight into block buffers, byte for byte equal to ``read``, with no intermediate
``bytes``; the connection reused afterwards; truncated and stalled bodies are errors of the
source's usual kinds, never short or wrong data."""

from __future__ import annotations

import mmap
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import fluidfs.sources.s3 as s3mod
from fluidfs.errors import NotFoundError, SourceTimeoutError, UnavailableError, VersionChangedError
from fluidfs.sources.s3 import S3Source
from fluidfs.util.buffers import block_buffer
from tests.support.cutproxy import CutProxy
from tests.support.s3server import S3Server

BLOCK = 4 << 20
BODY = os.urandom(2 * BLOCK + 12345)  # two full blocks and a short last one
KEY = "readinto/obj.bin"


@pytest.fixture(scope="module")
def uploaded(_s3_servers: dict[str, S3Server]) -> None:
    for server in _s3_servers.values():
        server.client().put_object(Bucket="fluidfs-test", Key=KEY, Body=BODY)


@pytest.fixture
def src(make_s3_source: Callable[..., S3Source], uploaded: None) -> S3Source:
    return make_s3_source()


def fill(src: S3Source, start: int, size: int, version: str = "") -> bytes:
    buf = memoryview(bytearray(b"\xee" * size))
    n = src.read_into(KEY, start, buf, version)
    assert 0 <= n <= size
    assert bytes(buf[n:]) == b"\xee" * (size - n)  # nothing written past what was returned
    return bytes(buf[:n])


def test_read_into_equals_read(src: S3Source) -> None:
    assert src.reads_into
    v = src.stat(KEY).version
    size = len(BODY)
    cases = [(0, BLOCK), (BLOCK, BLOCK), (2 * BLOCK, BLOCK), (7, 100), (size - 10, 100), (0, size), (1, 1)]
    for start, n in cases:
        expected = BODY[start : start + n]
        assert fill(src, start, n) == expected, (start, n)
        assert fill(src, start, n, v) == expected, (start, n)
        assert src.read(KEY, start, start + n, v) == expected
    assert fill(src, size, 10) == b""  # start == size
    assert fill(src, size + 5, 10) == b""  # past the end
    assert src.read_into(KEY, 0, memoryview(bytearray(0))) == 0
    with pytest.raises(NotFoundError):
        src.read_into("readinto/nope", 0, memoryview(bytearray(10)))


def test_read_block_returns_pooled_buffers(src: S3Source) -> None:
    v = src.stat(KEY).version
    blocks = [src.read_block(KEY, i * BLOCK, min((i + 1) * BLOCK, len(BODY)), v) for i in range(3)]
    assert b"".join(bytes(b) for b in blocks) == BODY
    full = blocks[0]
    assert isinstance(full, memoryview) and isinstance(full.obj, mmap.mmap)  # a huge-page block buffer
    assert len(blocks[2]) == 12345
    # at EOF a block may be shorter than asked: only the bytes received are exposed
    tail = src.read_block(KEY, 2 * BLOCK, 3 * BLOCK, v)
    assert bytes(tail) == BODY[2 * BLOCK :]
    assert src.read_block(KEY, len(BODY), len(BODY) + BLOCK, v) == b""


def test_no_intermediate_bytes(src: S3Source) -> None:
    """A 4 MiB block costs no Python allocation of its size (the body goes into the buffer)."""
    buf = block_buffer(BLOCK)
    src.read_into(KEY, 0, buf)  # warm: client, connection, pools
    tracemalloc.start()
    try:
        for i in range(2):
            assert src.read_into(KEY, i * BLOCK, buf) == BLOCK
            assert buf[:64] == BODY[i * BLOCK : i * BLOCK + 64]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BLOCK // 4, peak
    assert bytes(buf) == BODY[BLOCK : 2 * BLOCK]


def pooled_connections(src: S3Source) -> int:
    manager = src._client._endpoint.http_session._manager
    return sum(manager.pools[k].num_connections for k in manager.pools.keys())


def test_connection_is_reused(src: S3Source) -> None:
    buf = block_buffer(BLOCK)
    for i in range(12):
        assert src.read_into(KEY, (i % 2) * BLOCK, buf) == BLOCK
    assert pooled_connections(src) == 1
    assert bytes(buf) == BODY[BLOCK : 2 * BLOCK]


def test_copy_path_when_the_body_cannot_be_read_directly(src: S3Source, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3mod, "direct_body", lambda body: None)
    assert fill(src, 5, BLOCK) == BODY[5 : 5 + BLOCK]
    assert fill(src, len(BODY) - 3, 10) == BODY[-3:]


def test_stale_version(src: S3Source, s3_server: S3Server) -> None:
    client = s3_server.client()
    client.put_object(Bucket="fluidfs-test", Key="readinto/changing", Body=b"version one")
    v1 = src.stat("readinto/changing").version
    buf = memoryview(bytearray(7))
    assert src.read_into("readinto/changing", 0, buf, v1) == 7 and bytes(buf) == b"version"
    client.put_object(Bucket="fluidfs-test", Key="readinto/changing", Body=b"VERSION TWO!")
    with pytest.raises(VersionChangedError):
        src.read_into("readinto/changing", 0, buf, v1)
    with pytest.raises(VersionChangedError):
        src.read_block("readinto/changing", 0, 7, v1)


@pytest.fixture
def cut_source(s3_server: S3Server, uploaded: None) -> Iterator[Callable[..., S3Source]]:
    made: list[tuple[CutProxy, S3Source]] = []

    def make(body_bytes: int, mode: str, **kwargs: Any) -> S3Source:
        proxy = CutProxy(("127.0.0.1", s3_server.port), body_bytes, mode)
        src = S3Source(
            "fluidfs-test",
            endpoint=proxy.url,
            region=s3_server.region,
            credentials={"access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key},
            max_attempts=1,
            **kwargs,
        )
        made.append((proxy, src))
        return src

    yield make
    for proxy, src in made:
        src.close()
        proxy.close()


@pytest.mark.parametrize("cut_at", [0, 1000, BLOCK - 1])
def test_truncated_body_is_unavailable(cut_source: Callable[..., S3Source], cut_at: int) -> None:
    src = cut_source(cut_at, "close")
    with pytest.raises(UnavailableError):
        src.read_into(KEY, 0, block_buffer(BLOCK))
    with pytest.raises(UnavailableError):
        src.read_block(KEY, 0, BLOCK)
    with pytest.raises(UnavailableError):
        src.read(KEY, 0, BLOCK)  # the copying path agrees


def test_stalled_body_times_out(cut_source: Callable[..., S3Source]) -> None:
    src = cut_source(100_000, "stall", read_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(SourceTimeoutError):
        src.read_into(KEY, 0, block_buffer(BLOCK))
    assert time.monotonic() - t0 < 1.0 + 10.0  # generous: a shared, noisy machine
