"""S3Source against real S3 servers on loopback (moto and SeaweedFS), no mocks of boto3."""

from __future__ import annotations

import time

import pytest

import fluidfs.sources.s3 as s3mod
from fluidfs.errors import (
    AccessDeniedError,
    NotFoundError,
    SourceError,
    SpecError,
    UnavailableError,
    VersionChangedError,
)
from fluidfs.sources.registry import open_source
from fluidfs.sources.s3 import S3Source
from fluidfs.spec.model import MountSpec

# fixtures s3_server, s3_bucket, make_s3_source, s3_outage_server come from tests/fixtures_s3.py
# (wired in tests/conftest.py)
from tests.support.fixtures_s3 import BIG_COUNT, S3_TREE
from tests.support.net import free_port
from tests.support.s3 import put_objects
from tests.support.s3server import S3Server


def names(src: S3Source, path: str) -> dict[str, bool]:
    """name -> is_dir of the whole listing; asserts every name appears once."""
    seen: dict[str, bool] = {}
    for page in src.list(path):
        for e in page:
            assert e.name not in seen, f"{e.name!r} listed twice"
            seen[e.name] = e.is_dir
    return seen


# ----------------------------------------------------------------- stat


def test_stat_root_file_dir_marker_missing(make_s3_source, s3_server):
    src = make_s3_source()
    assert src.kind == "s3"
    root = src.stat("")
    assert root.is_dir and root.name == ""

    f = src.stat("d/f.bin")
    assert (f.name, f.is_dir, f.size) == ("f.bin", False, 10240)
    assert abs(f.mtime - time.time()) < 3600
    head = s3_server.client().head_object(Bucket="fluidfs-test", Key="d/f.bin")
    assert f.version == head["ETag"].strip('"') and '"' not in f.version

    assert src.stat("d").is_dir  # implicit directory (no marker)
    assert src.stat("d/sub").is_dir
    assert src.stat("marker").is_dir  # only a marker object
    assert src.stat("marked").is_dir
    assert src.stat("d/empty").size == 0 and not src.stat("d/empty").is_dir

    for missing in ("nope", "d/nope", "d/f.bi", "d/f.bin/x", "mark"):
        with pytest.raises(NotFoundError) as ei:
            src.stat(missing)
        assert f"s3://fluidfs-test/{missing}" in str(ei.value)


def test_object_beside_same_named_prefix_directory_wins(make_s3_source):
    src = make_s3_source()
    e = src.stat("both")
    assert e.is_dir and e.size == 0
    root = names(src, "")
    assert root["both"] is True
    assert names(src, "both") == {"inner": False}
    assert src.read("both/inner", 0, 100) == b"inner"


def test_directory_wins_across_page_boundary(make_s3_source, s3_server, monkeypatch):
    # keys in S3 order: edge/a, edge/k, edge/k.txt, edge/k/ (prefix), edge/z; with 2 keys per
    # page the object "k" ends page 1 and the prefix "k/" only comes on page 2
    client = s3_server.client()
    put_objects(
        client,
        "fluidfs-test",
        {"edge/a": b"a", "edge/k": b"k", "edge/k.txt": b"kt", "edge/k/x": b"x", "edge/z": b"z"},
    )
    monkeypatch.setattr(s3mod, "PAGE_SIZE", 2)
    src = make_s3_source()
    pages = list(src.list("edge"))
    assert len(pages) >= 2
    listed = {e.name: e.is_dir for page in pages for e in page}
    assert sum(len(p) for p in pages) == len(listed) == 4
    assert listed == {"a": False, "k": True, "k.txt": False, "z": False}
    assert src.stat("edge/k").is_dir == listed["k"]


# ----------------------------------------------------------------- list


def test_list_big_prefix_is_paged_lazily(make_s3_source):
    src = make_s3_source()
    requests: list[dict] = []
    src._client.meta.events.register("before-call.s3.ListObjectsV2", lambda params, **_: requests.append(params))
    gen = src.list("big")
    assert requests == []  # nothing happens before iteration
    first = next(gen)
    assert len(requests) == 1  # one request per page, lazily
    assert 0 < len(first) <= 1000
    pages = [first, *gen]
    assert len(pages) >= 3 and len(requests) == len(pages)
    all_names = [e.name for p in pages for e in p]
    assert len(all_names) == len(set(all_names)) == BIG_COUNT
    assert set(all_names) == {f"file-{i:05d}.dat" for i in range(BIG_COUNT)}
    e = next(e for p in pages for e in p if e.name == "file-00042.dat")
    assert (e.is_dir, e.size) == (False, 2) and e.version and e.mtime > 0


def test_list_nested_and_markers(make_s3_source):
    src = make_s3_source()
    root = names(src, "")
    for d in ("d", "marker", "marked", "both", "n", "big"):
        assert root[d] is True
    assert root["top.txt"] is False
    assert "" not in root
    assert names(src, "n") == {"a": True, "two": False}
    assert names(src, "n/a") == {"b": True, "one": False}
    assert names(src, "n/a/b") == {"c.txt": False}
    assert names(src, "marker") == {}  # marker key itself is not a file
    assert names(src, "marked") == {"x": False}
    d = {e.name: e for p in src.list("d") for e in p}
    assert set(d) == {"f.bin", "empty", "sp ace ü✓.txt", "sub"}
    assert d["f.bin"].size == 10240 and d["empty"].size == 0 and d["sub"].is_dir
    # list and stat agree on every entry
    for name, entry in d.items():
        st = src.stat(f"d/{name}")
        assert (st.is_dir, st.size, st.version) == (entry.is_dir, entry.size, entry.version)


def test_list_missing_or_file_raises_not_found(make_s3_source):
    src = make_s3_source()
    for bad in ("nope", "top.txt", "d/f.bin"):
        with pytest.raises(NotFoundError):
            next(iter(src.list(bad)))


def test_prefix_rooted_source(make_s3_source):
    src = make_s3_source("n/")
    assert names(src, "") == {"a": True, "two": False}
    assert src.read("a/one", 0, 10) == b"1"
    assert src.url("a/one") == "s3://fluidfs-test/n/a/one"
    src.check()
    missing = make_s3_source("does-not-exist")
    with pytest.raises(NotFoundError, match="no objects under prefix 'does-not-exist/'"):
        missing.check()  # a prefix nothing starts with is a mistake (exit 3 at mount)
    assert list(missing.list("")) == []
    make_s3_source("marker").check()  # an empty directory made by a marker object exists
    assert list(make_s3_source("marker").list("")) == []


# ----------------------------------------------------------------- read


def test_read_ranges(make_s3_source):
    src = make_s3_source()
    data = S3_TREE["d/f.bin"]
    v = src.stat("d/f.bin").version
    assert src.read("d/f.bin", 0, 100) == data[:100]
    assert src.read("d/f.bin", 5000, 6000, v) == data[5000:6000]
    assert src.read("d/f.bin", 10000, 20000) == data[10000:]  # short at EOF
    assert src.read("d/f.bin", 10240, 10300) == b""  # start == size
    assert src.read("d/f.bin", 99999, 100000) == b""  # start past EOF
    assert src.read("d/f.bin", 7, 7) == b""
    assert src.read("d/empty", 0, 4096) == b""
    assert src.read("d/sp ace ü✓.txt", 0, 100) == b"unicode name\n"
    with pytest.raises(NotFoundError):
        src.read("nope", 0, 10)


def test_read_with_stale_version_raises_version_changed(make_s3_source, s3_server):
    client = s3_server.client()
    client.put_object(Bucket="fluidfs-test", Key="changing", Body=b"version one")
    src = make_s3_source()
    v1 = src.stat("changing").version
    assert src.read("changing", 0, 7, v1) == b"version"
    client.put_object(Bucket="fluidfs-test", Key="changing", Body=b"VERSION TWO!")
    with pytest.raises(VersionChangedError):
        src.read("changing", 0, 7, v1)
    with pytest.raises(VersionChangedError):
        src.read("changing", 500, 600, v1)  # past EOF, still a version mismatch
    v2 = src.stat("changing").version
    assert v2 != v1
    assert src.read("changing", 0, 7, v2) == b"VERSION"


# ----------------------------------------------------------------- check / errors


def test_check_ok_and_wrong_credentials(make_s3_source):
    make_s3_source().check()
    bad = make_s3_source(
        credentials={"access_key_id": "AKIAWRONGWRONGWRONG1", "secret_access_key": "wrong"},
        max_attempts=1,
    )
    with pytest.raises(AccessDeniedError, match="access denied"):
        bad.check()
    with pytest.raises(AccessDeniedError):
        bad.read("top.txt", 0, 10)
    with pytest.raises(AccessDeniedError):
        bad.stat("top.txt")


def test_wrong_secret_for_valid_key(make_s3_source, s3_server):
    bad = make_s3_source(
        credentials={"access_key_id": s3_server.access_key, "secret_access_key": "not-the-secret"},
        max_attempts=1,
    )
    with pytest.raises(AccessDeniedError, match="check credentials"):
        bad.check()


def test_missing_bucket(make_s3_source):
    src = make_s3_source(bucket="no-such-bucket-here")
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
        src.check()
    with pytest.raises(NotFoundError):
        src.read("x", 0, 1)


def test_unreachable_endpoint_is_unavailable_quickly():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    src = S3Source(
        "bkt",
        endpoint=endpoint,
        credentials={"access_key_id": "k", "secret_access_key": "s"},
        connect_timeout=1,
        read_timeout=1,
        max_attempts=2,
    )
    t0 = time.monotonic()
    with pytest.raises(UnavailableError, match=f"cannot reach endpoint {endpoint}"):
        src.check()
    with pytest.raises(UnavailableError):
        src.read("x", 0, 10)
    with pytest.raises(UnavailableError):
        src.stat("x")
    with pytest.raises(UnavailableError):
        next(iter(src.list("")))
    assert time.monotonic() - t0 < 15
    src.close()


def test_server_outage_and_recovery(s3_outage_server: S3Server):
    srv = s3_outage_server
    client = srv.client()
    client.create_bucket(Bucket="outage")
    client.put_object(Bucket="outage", Key="k", Body=b"payload")
    src = S3Source(
        "outage",
        endpoint=srv.endpoint,
        credentials={"access_key_id": srv.access_key, "secret_access_key": srv.secret_key},
        connect_timeout=1,
        read_timeout=1,
        max_attempts=2,
    )
    assert src.read("k", 0, 100) == b"payload"

    srv.pause()  # accepts connections, never answers → read timeout
    t0 = time.monotonic()
    with pytest.raises(UnavailableError):
        src.read("k", 0, 100)
    assert time.monotonic() - t0 < 10
    srv.resume()
    assert src.read("k", 0, 100) == b"payload"

    srv.kill()
    with pytest.raises(UnavailableError):
        src.read("k", 0, 100)
    with pytest.raises(UnavailableError):
        src.check()
    srv.restart()
    if srv.kind == "moto":  # moto keeps data in memory only
        client = srv.client()
        client.create_bucket(Bucket="outage")
        client.put_object(Bucket="outage", Key="k", Body=b"payload")
    # same source, same port, works again once the server is fully back (a restarted SeaweedFS
    # may answer S3 before its volume server has re-registered: poll, bounded)
    deadline = time.monotonic() + 60
    while True:
        try:
            src.check()
            assert src.read("k", 0, 100) == b"payload"
            break
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    src.close()


def test_endpoint_from_environment(s3_server, s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    src = S3Source(s3_bucket, "", region=s3_server.region)
    assert src.endpoint == s3_server.endpoint
    src.check()  # credentials from the environment chain
    assert src.read("top.txt", 0, 3) == b"top"
    src.close()


def test_anonymous_is_denied_by_authenticating_server(make_s3_source, s3_server):
    src = make_s3_source(anonymous=True, max_attempts=1)
    # moto answers unsigned requests with a 500 when auth is enforced: refused all the same
    expected = SourceError if s3_server.kind == "moto" else AccessDeniedError
    with pytest.raises(expected):
        src.check()


# ----------------------------------------------------------------- registry


def test_registry_builds_s3_source(s3_server, s3_bucket):
    mount = MountSpec(
        name="train",
        url=f"s3://{s3_bucket}/n",
        scheme="s3",
        path="/",
        options={
            "endpoint": s3_server.endpoint,
            "region": s3_server.region,
            "addressing_style": "path",
            "anonymous": "false",
            "connect_timeout": "2",
            "read_timeout": "5",
            "max_attempts": "2",
        },
    )
    creds = {"access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key}
    src = open_source(mount, creds)
    assert isinstance(src, S3Source)
    src.check()
    assert names(src, "") == {"a": True, "two": False}
    assert src.url("two") == f"s3://{s3_bucket}/n/two"
    src.close()


@pytest.mark.parametrize(
    "options, field",
    [
        ({"addressing_style": "foo"}, "options.addressing_style"),
        ({"anonymous": "maybe"}, "options.anonymous"),
        ({"connect_timeout": "soon"}, "options.connect_timeout"),
        ({"read_timeout": "-1"}, "options.read_timeout"),
        ({"max_attempts": "1.5"}, "options.max_attempts"),
        ({"endpoint": "localhost:9000"}, "options.endpoint"),
    ],
)
def test_registry_rejects_bad_s3_options(options, field):
    mount = MountSpec(name="m", url="s3://bkt/p", scheme="s3", path="/", options=options)
    with pytest.raises(SpecError) as ei:
        open_source(mount, {})
    assert ei.value.field == field
    assert str(ei.value).startswith(f"mount 'm': {field}: ")


def test_registry_rejects_half_credentials():
    mount = MountSpec(name="m", url="s3://bkt/p", scheme="s3", path="/")
    with pytest.raises(SpecError, match="credentials"):
        open_source(mount, {"access_key_id": "only-the-id"})
