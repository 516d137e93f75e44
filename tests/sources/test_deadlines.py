"""Every source operation ends within its request timeout, against real servers that stop
answering: S3 servers frozen with SIGSTOP (moto, SeaweedFS) and a paused HTTP server.  Also:
``max_attempts`` is the total number of tries, the mount-time check of a dataset fits its
timeout (exit code 3), and the source metrics count every request and byte received."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from fluidfs.errors import EXIT_SOURCE, SourceTimeoutError, exit_code
from fluidfs.sources import call
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.http import HTTPSource
from fluidfs.sources.registry import open_source, open_sources
from fluidfs.sources.s3 import S3Source
from fluidfs.spec.model import Dataset, MountSpec
from tests.support.cache import metric, unique_dataset
from tests.support.httpserver import RangeHTTPServer, RangeRequestHandler
from tests.support.s3server import S3Server

TIMEOUT = 3.0  # a short request timeout keeps the tests fast
SLACK = 4.0  # generous: the machine is shared and noisy


def s3_mount(srv: S3Server, bucket: str, prefix: str = "", **options: str) -> tuple[MountSpec, dict[str, str]]:
    mount = MountSpec(
        name="s3data",
        url=f"s3://{bucket}/{prefix}".rstrip("/"),
        scheme="s3",
        path="/s3",
        options={"endpoint": srv.endpoint, "region": srv.region, **options},
    )
    return mount, {"access_key_id": srv.access_key, "secret_access_key": srv.secret_key}


@pytest.fixture
def paused_s3(s3_outage_server: S3Server) -> Iterator[tuple[S3Server, S3Source]]:
    """A private S3 server with bucket ``paused`` (``d/k`` = b"payload"), a source opened on it
    with the short request timeout, and the server resumed again at teardown."""
    srv = s3_outage_server
    client = srv.client()
    client.create_bucket(Bucket="paused")
    client.put_object(Bucket="paused", Key="d/k", Body=b"payload")
    mount, creds = s3_mount(srv, "paused")
    src = open_source(mount, creds, timeout=TIMEOUT)
    assert isinstance(src, S3Source)
    try:
        yield srv, src
    finally:
        srv.resume()
        src.close()


def timed(fn: Callable[[], Any]) -> tuple[BaseException | None, float]:
    t0 = time.monotonic()
    try:
        fn()
    except BaseException as exc:
        return exc, time.monotonic() - t0
    return None, time.monotonic() - t0


def one(asrc: AsyncSource, op: str) -> Callable[[], Any]:
    async def run() -> Any:
        if op == "read":
            return await asrc.read("d/k", 0, 7)
        if op == "stat":
            return await asrc.stat("d/k")
        if op == "list":
            return await asrc.pages("d").__anext__()
        return await asrc.check()

    return lambda: trio.run(run)


def test_s3_paused_operations_end_within_timeout(paused_s3: tuple[S3Server, S3Source]) -> None:
    srv, src = paused_s3
    ops = ("read", "stat", "list", "check")
    sources = {
        op: AsyncSource(src, unique_dataset("paused"), trio.CapacityLimiter(4), TIMEOUT, cooldown=60) for op in ops
    }
    for op in ops:
        exc, _ = timed(one(sources[op], op))
        assert exc is None, exc  # answers while running
    srv.pause()
    for op in ops:  # each its own AsyncSource: a fresh "answers" state
        exc, took = timed(one(sources[op], op))
        assert isinstance(exc, SourceTimeoutError), (op, exc)
        assert took < TIMEOUT + SLACK, (op, took)
    # the source is now known not to answer: the next calls fail at once instead of waiting
    for other in ("read", "stat", "list"):
        exc, took = timed(one(sources["read"], other))
        assert isinstance(exc, SourceTimeoutError) and "not responding" in str(exc)
        assert took < 1.0, took


def test_s3_blocking_call_stops_at_its_deadline(paused_s3: tuple[S3Server, S3Source]) -> None:
    """The worker thread itself ends near the deadline (no new try starts after it)."""
    srv, src = paused_s3
    srv.pause()
    c = call.new_call(TIMEOUT)

    def read() -> None:
        with call.within(c):
            src.read("d/k", 0, 7)

    exc, took = timed(read)
    assert isinstance(exc, SourceTimeoutError), exc
    assert took < TIMEOUT + SLACK, took
    assert 1 <= c.requests <= 3  # at most max_attempts tries were sent


def test_s3_max_attempts_is_the_total_number_of_tries(s3_outage_server: S3Server) -> None:
    srv = s3_outage_server
    srv.client().create_bucket(Bucket="tries")
    src = S3Source(
        "tries",
        endpoint=srv.endpoint,
        credentials={"access_key_id": srv.access_key, "secret_access_key": srv.secret_key},
        read_timeout=1,
        max_attempts=2,
    )
    try:
        srv.pause()
        c = call.new_call(60)
        with call.within(c), pytest.raises(SourceTimeoutError):
            src.read("k", 0, 10)
        assert c.requests == 2  # botocore's retries.max_attempts would have made it 3
    finally:
        srv.resume()
        src.close()


def test_dataset_check_fits_the_timeout_and_is_exit_3(
    paused_s3: tuple[S3Server, S3Source], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, _src = paused_s3
    (tmp_path / "local").mkdir()
    s3, creds = s3_mount(srv, "paused")  # credentials from the environment, as a mount gets them
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["secret_access_key"])
    local = MountSpec(name="local", url=f"file://{tmp_path / 'local'}", scheme="file", path="/local")
    ds = Dataset(name=unique_dataset("check"), mounts=(local, s3))
    srv.pause()
    exc, took = timed(lambda: open_sources(ds, timeout=TIMEOUT))
    assert isinstance(exc, SourceTimeoutError), exc
    assert "mount 's3data' (s3://paused)" in str(exc)
    assert exit_code(exc) == EXIT_SOURCE
    assert took < TIMEOUT + SLACK, took


# ---- HTTP ---------------------------------------------------------------------------------------


class SlowHeadHandler(RangeRequestHandler):
    """Answers HEAD requests after ``delay`` seconds (a server struggling with many small requests)."""

    delay = 1.0

    def authorize(self) -> bool:  # called once the request is counted
        if self.command == "HEAD":
            time.sleep(self.delay)
        return True


def test_http_paused_operations_end_within_timeout(
    http_server: RangeHTTPServer, http_source_factory: Callable[..., HTTPSource]
) -> None:
    src = http_source_factory(http_server.url, timeout=TIMEOUT)
    asrc = AsyncSource(src, unique_dataset("httppaused"), trio.CapacityLimiter(4), TIMEOUT, cooldown=0)
    version = src.stat("top.bin").version
    http_server.pause()
    try:
        for fn in (
            lambda: trio.run(asrc.read, "top.bin", 0, 10, version),
            lambda: trio.run(asrc.stat, "train/cls0/img2.jpg"),
            lambda: trio.run(asrc.pages("train").__anext__),
        ):
            exc, took = timed(fn)
            assert isinstance(exc, SourceTimeoutError), exc
            assert took < TIMEOUT + SLACK, took
    finally:
        http_server.resume()
    assert trio.run(asrc.read, "top.bin", 0, 4, version) == bytes(range(4))  # and it recovers


def test_http_max_attempts_is_the_total_number_of_tries(
    http_server: RangeHTTPServer, http_source_factory: Callable[..., HTTPSource]
) -> None:
    src = http_source_factory(http_server.url, read_timeout=1.0, max_attempts=2)
    version = src.stat("top.bin").version
    http_server.pause()
    try:
        before = http_server.requests
        with pytest.raises(SourceTimeoutError):
            src.read("top.bin", 0, 10, version)
        assert http_server.requests - before == 2
    finally:
        http_server.resume()


def test_http_listing_with_many_heads_stops_at_the_deadline(
    tmp_path: Path, http_server_factory: Callable[..., RangeHTTPServer], http_source_factory: Callable[..., HTTPSource]
) -> None:
    for i in range(80):
        (tmp_path / f"f{i:03d}").write_bytes(b"x")
    server = http_server_factory(tmp_path, handler_class=SlowHeadHandler)
    src = http_source_factory(server.url, timeout=TIMEOUT)  # 80 HEADs, 16 at a time, 1 s each: 5 s
    c = call.new_call(TIMEOUT)

    def listing() -> None:
        with call.within(c):
            next(iter(src.list("")))

    exc, took = timed(listing)
    assert isinstance(exc, SourceTimeoutError), exc
    assert took < TIMEOUT + SLACK, took
    sent = server.requests
    time.sleep(SlowHeadHandler.delay + 0.5)
    assert server.requests == sent  # nothing more is sent once the deadline has passed


def test_http_metrics_count_autoindex_heads_and_range_less_bytes(
    tmp_path: Path, http_server_factory: Callable[..., RangeHTTPServer], http_source_factory: Callable[..., HTTPSource]
) -> None:
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"y" * 10)
    (tmp_path / "big.bin").write_bytes(b"z" * 2_000_000)

    class NoRange(RangeRequestHandler):
        def parse_range(self, header: str | None, size: int) -> tuple[int, int] | None | str:
            return None

    server = http_server_factory(tmp_path, handler_class=NoRange)
    ds = unique_dataset("httpmetrics")
    src = http_source_factory(server.url)
    asrc = AsyncSource(src, ds, trio.CapacityLimiter(4))
    before = server.requests
    trio.run(asrc.pages("").__anext__)
    sent = server.requests - before
    assert sent >= 7  # the listing page and a HEAD per file (plus discovery)
    assert metric("fluidfs_source_requests_total", dataset=ds, kind="http", op="list") == sent
    version = src.stat("big.bin").version
    data = trio.run(asrc.read, "big.bin", 1_500_000, 1_500_100, version)
    assert data == b"z" * 100
    assert metric("fluidfs_source_bytes_total", dataset=ds, kind="http") >= 1_500_100


def test_endpoint_userinfo_never_in_errors() -> None:
    from tests.support.net import free_port

    endpoint = f"http://ak:topsecret@127.0.0.1:{free_port()}"  # nothing listens there
    mount = MountSpec(
        name="s3", url="s3://bkt/p", scheme="s3", path="/", options={"endpoint": endpoint, "max_attempts": "1"}
    )
    src = open_source(mount, {"access_key_id": "k", "secret_access_key": "s"}, timeout=TIMEOUT)
    try:
        exc, _ = timed(src.check)
    finally:
        src.close()
    assert exc is not None and "cannot reach endpoint http://REDACTED@127.0.0.1" in str(exc), exc
    assert "topsecret" not in str(exc)
