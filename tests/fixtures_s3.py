"""pytest fixtures for S3 source tests: real moto and SeaweedFS servers on loopback.

Fixtures (wire into conftest.py with ``from tests.fixtures_s3 import *`` or
``pytest_plugins = ["tests.fixtures_s3"]``):

- ``s3_server``        session-scoped, parametrized ``moto`` / ``seaweed``: one running
                       ``S3Server`` per kind for the whole session (moto with auth enforced,
                       so wrong credentials are rejected by both).  Do not kill it.  Both
                       kinds are started and filled together, in parallel, on first use.
- ``s3_bucket``        session-scoped: name of a bucket on ``s3_server`` pre-filled with
                       ``S3_TREE`` plus ``BIG_COUNT`` keys under ``big/``.
- ``make_s3_source``   factory ``(prefix="", bucket=None, **S3Source kwargs) -> S3Source`` for
                       ``s3_server``/``s3_bucket``; sources are closed at teardown.
- ``s3_outage_server`` function-scoped, parametrized ``moto`` / ``seaweed``: a private
                       server that the test may ``kill()``/``restart()``/``pause()``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pytest

from fluidfs.embedded.s3server import S3Server
from fluidfs.sources.s3 import S3Source
from tests.conftest_s3 import put_objects

S3_KINDS = ["moto", "seaweed"]
TEST_BUCKET = "fluidfs-test"
BIG_COUNT = 2500

S3_TREE: dict[str, bytes] = {
    "top.txt": b"top level\n",
    "d/f.bin": bytes(range(256)) * 40,  # 10240 bytes
    "d/empty": b"",
    "d/sp ace ü✓.txt": "unicode name\n".encode(),
    "d/sub/deep.txt": b"deep\n",
    "marker/": b"",  # an empty directory made by a marker object
    "marked/": b"",  # marker plus content
    "marked/x": b"x",
    "both": b"object hidden by the directory",  # object and prefix with one name
    "both/inner": b"inner",
    "n/a/b/c.txt": b"c",
    "n/a/one": b"1",
    "n/two": b"22",
}


def _big_keys() -> dict[str, bytes]:
    return {f"big/file-{i:05d}.dat": str(i).encode() for i in range(BIG_COUNT)}


def _start_and_fill(kind: str, data_dir: str | None) -> S3Server:
    server = S3Server(kind, data_dir=data_dir, auth=True).start()
    try:
        client = server.client(max_pool_connections=32)
        client.create_bucket(Bucket=TEST_BUCKET)
        put_objects(client, TEST_BUCKET, {**S3_TREE, **_big_keys()})
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def _s3_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, S3Server]]:
    """Start and fill every kind at once (filling is server-bound: overlapping saves time)."""
    servers: dict[str, S3Server] = {}
    with ThreadPoolExecutor(max_workers=len(S3_KINDS)) as pool:
        futures = {
            kind: pool.submit(
                _start_and_fill,
                kind,
                str(tmp_path_factory.mktemp(f"{kind}-data")) if kind == "seaweed" else None,
            )
            for kind in S3_KINDS
        }
        errors = []
        for kind, fut in futures.items():
            try:
                servers[kind] = fut.result()
            except BaseException as e:  # noqa: BLE001 - stop the others, then re-raise
                errors.append(e)
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session", params=S3_KINDS)
def s3_server(request: pytest.FixtureRequest, _s3_servers: dict[str, S3Server]) -> S3Server:
    return _s3_servers[request.param]


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> str:
    return TEST_BUCKET


@pytest.fixture
def make_s3_source(s3_server: S3Server, s3_bucket: str) -> Iterator[Callable[..., S3Source]]:
    made: list[S3Source] = []

    def make(prefix: str = "", bucket: str | None = None, **kwargs: Any) -> S3Source:
        kwargs.setdefault("endpoint", s3_server.endpoint)
        kwargs.setdefault("region", s3_server.region)
        kwargs.setdefault(
            "credentials",
            {"access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key},
        )
        src = S3Source(bucket or s3_bucket, prefix, **kwargs)
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()


@pytest.fixture(params=S3_KINDS)
def s3_outage_server(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[S3Server]:
    kind = request.param
    data_dir = os.path.join(os.fspath(tmp_path), "weed") if kind == "seaweed" else None
    if data_dir:
        os.makedirs(data_dir)
    with S3Server(kind, data_dir=data_dir) as server:
        yield server
