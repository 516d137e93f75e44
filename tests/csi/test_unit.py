"""Pure unit tests of the CSI plugin: request validation, ids and keys, Dataset documents, state.

No FUSE, no gRPC server: these run everywhere and fast.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import grpc
import pytest
import yaml

from csi._gen import csi_pb2 as pb
from csi.daemons import request_timeout
from csi.mounts import MountManager
from csi.state import MAX_TOMBSTONES, Publication, SharedMount, State, StateStore, Volume
from csi.volumes import (
    RequestError,
    build_document,
    capability_error,
    digest,
    identity_context,
    is_ephemeral,
    mount_key,
    normalize_sub_path,
    parse_context,
    volume_id_for,
)
from fluidfs.spec.parse import parse_dataset, resolve_credentials

Mode = pb.VolumeCapability.AccessMode.Mode


def cap(mode: int = Mode.MULTI_NODE_READER_ONLY, block: bool = False) -> pb.VolumeCapability:
    c = pb.VolumeCapability(access_mode=pb.VolumeCapability.AccessMode(mode=mode))
    if block:
        c.block.SetInParent()
    else:
        c.mount.SetInParent()
    return c


# -- volume context ---------------------------------------------------------------------------
def test_parse_url_context_with_options_cache_and_subpath() -> None:
    req = parse_context(
        {
            "url": "s3://bucket/train",
            "endpoint": "http://127.0.0.1:9000",
            "region": "eu-1",
            "options.addressing_style": "path",
            "cacheSize": "10Gi",
            "memorySize": "256Mi",
            "blockSize": "4Mi",
            "eviction": "none",
            "metadataTTL": "indefinite",
            "subPath": "/a/b/",
            "csi.storage.k8s.io/pod.name": "ignored",
        }
    )
    assert req.url == "s3://bucket/train"
    assert dict(req.options) == {"endpoint": "http://127.0.0.1:9000", "region": "eu-1", "addressing_style": "path"}
    assert req.cache_args == (
        "--cache-size",
        "10Gi",
        "--memory-size",
        "256Mi",
        "--block-size",
        "4Mi",
        "--eviction",
        "none",
        "--metadata-ttl",
        "indefinite",
    )
    assert req.sub_path == "a/b"
    assert req.name == "bucket"


@pytest.mark.parametrize(
    "ctx, needle",
    [
        ({}, "exactly one"),
        ({"url": "s3://b", "dataset": "kind: Dataset"}, "exactly one"),
        ({"url": "ftp://host/x"}, "must start with"),
        ({"url": "s3://b", "cachesize": "1Gi"}, "unknown volume attribute"),
        ({"url": "s3://b", "cacheSize": "lots"}, "cacheSize"),
        ({"url": "s3://b", "eviction": "fifo"}, "eviction"),
        ({"url": "s3://b", "metadataTTL": "soon"}, "metadataTTL"),
        ({"url": "s3://b", "subPath": "../etc"}, "subPath"),
        ({"url": "s3://b", "pinToNode": "yes"}, "pinToNode"),
        ({"dataset": "a: [unclosed"}, "not valid YAML"),
        ({"dataset": "kind: Pod"}, "kind: Dataset"),
        ({"dataset": "kind: Dataset\nspec: {mounts: []}"}, "spec.mounts"),
        ({"dataset": "kind: Dataset\nspec: {mounts: [{mountPoint: 's3://b'}]}", "endpoint": "x"}, "inside"),
    ],
)
def test_parse_context_rejects_mistakes(ctx: dict[str, str], needle: str) -> None:
    with pytest.raises(RequestError) as ei:
        parse_context(ctx)
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in ei.value.message


@pytest.mark.parametrize("sub, want", [("", ""), ("/", ""), ("a", "a"), ("a//b/./c/", "a/b/c"), ("/x/y", "x/y")])
def test_normalize_sub_path(sub: str, want: str) -> None:
    assert normalize_sub_path(sub) == want


def test_dataset_digest_ignores_cache_subpath_and_k8s_keys() -> None:
    a = parse_context({"url": "s3://b/p", "endpoint": "http://e"})
    b = parse_context(
        {
            "url": "s3://b/p",
            "endpoint": "http://e",
            "cacheSize": "1Gi",
            "subPath": "x",
            "csi.storage.k8s.io/ephemeral": "true",
        }
    )
    c = parse_context({"url": "s3://b/q", "endpoint": "http://e"})
    assert a.dataset_digest() == b.dataset_digest() != c.dataset_digest()
    doc = "apiVersion: fluidfs.io/v1alpha1\nkind: Dataset\nmetadata: {name: d}\nspec:\n  mounts: [{mountPoint: 's3://b'}]\n"
    d1 = parse_context({"dataset": doc})
    d2 = parse_context({"dataset": doc + "  cache: {size: 1Gi}\n"})
    assert d1.dataset_digest() == d2.dataset_digest()


def test_mount_key_depends_on_dataset_and_credentials() -> None:
    d = parse_context({"url": "s3://b/p"}).dataset_digest()
    k1 = mount_key(d, {"accessKeyId": "A", "secretAccessKey": "S"})
    assert k1 == mount_key(d, {"secretAccessKey": "S", "accessKeyId": "A"})
    assert k1 != mount_key(d, {"accessKeyId": "A", "secretAccessKey": "other"})
    assert k1 != mount_key(d, {})
    assert "S" not in k1 and len(k1) == 20


def test_volume_id_deterministic_from_dataset_and_name() -> None:
    r = parse_context({"url": "s3://b/p"})
    vid = volume_id_for("pvc-1", r)
    assert vid == volume_id_for("pvc-1", parse_context({"url": "s3://b/p", "cacheSize": "2Gi"}))
    assert vid != volume_id_for("pvc-2", r)
    assert vid != volume_id_for("pvc-1", parse_context({"url": "s3://b/other"}))
    assert vid.startswith("fluidfs-") and len(vid) <= 128


def test_identity_context_and_ephemeral() -> None:
    ctx = {"url": "s3://b", "csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": "p"}
    assert identity_context(ctx) == {"url": "s3://b"}
    assert is_ephemeral(ctx) and not is_ephemeral({"url": "s3://b"})
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})


# -- capabilities -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [Mode.MULTI_NODE_READER_ONLY, Mode.SINGLE_NODE_READER_ONLY])
def test_read_only_modes_supported(mode: int) -> None:
    assert capability_error(cap(mode)) is None


@pytest.mark.parametrize(
    "mode",
    [
        Mode.SINGLE_NODE_WRITER,
        Mode.MULTI_NODE_SINGLE_WRITER,
        Mode.MULTI_NODE_MULTI_WRITER,
        Mode.SINGLE_NODE_SINGLE_WRITER,
        Mode.SINGLE_NODE_MULTI_WRITER,
        Mode.UNKNOWN,
    ],
)
def test_writer_and_unknown_modes_rejected(mode: int) -> None:
    assert capability_error(cap(mode)) is not None


def test_block_and_missing_access_type_rejected() -> None:
    assert "block" in (capability_error(cap(block=True)) or "")
    no_type = pb.VolumeCapability(access_mode=pb.VolumeCapability.AccessMode(mode=Mode.MULTI_NODE_READER_ONLY))
    assert capability_error(no_type) is not None


def test_ephemeral_accepts_single_node_writer_only() -> None:
    assert capability_error(cap(Mode.SINGLE_NODE_WRITER), ephemeral=True) is None
    assert capability_error(cap(Mode.MULTI_NODE_MULTI_WRITER), ephemeral=True) is not None


# -- Dataset documents ----------------------------------------------------------------------------
def test_url_document_references_credentials_by_file_only(tmp_path) -> None:
    req = parse_context({"url": "s3://bucket/train", "endpoint": "http://127.0.0.1:1", "region": "r"})
    files = {"accessKeyId": str(tmp_path / "ak"), "secretAccessKey": str(tmp_path / "sk"), "junk": "/x"}
    (tmp_path / "ak").write_text("AKIDVALUE")
    (tmp_path / "sk").write_text("SECRETVALUE")
    doc = build_document(req, files)
    text = yaml.safe_dump(doc)
    assert "SECRETVALUE" not in text and "AKIDVALUE" not in text
    m = doc["spec"]["mounts"][0]
    assert m["credentials"] == {
        "accessKeyId": {"file": files["accessKeyId"]},
        "secretAccessKey": {"file": files["secretAccessKey"]},
    }
    ds = parse_dataset(text, "generated")  # the fluidfs parser accepts what we generate
    creds = resolve_credentials(ds.mounts[0])
    assert creds["access_key_id"] == "AKIDVALUE" and creds["secret_access_key"] == "SECRETVALUE"


def test_aliases_of_secret_keys(tmp_path) -> None:
    req = parse_context({"url": "s3://bucket"})
    doc = build_document(req, {"AWS_ACCESS_KEY_ID": "/a", "AWS_SECRET_ACCESS_KEY": "/s"})
    assert set(doc["spec"]["mounts"][0]["credentials"]) == {"accessKeyId", "secretAccessKey"}


def test_dataset_document_secret_refs_rewritten_to_files() -> None:
    text = """
apiVersion: fluidfs.io/v1alpha1
kind: Dataset
metadata: {name: imagenet}
spec:
  mounts:
  - mountPoint: s3://bucket/train
    name: train
    options: {endpoint: "http://127.0.0.1:1"}
    credentials:
      accessKeyId: {secretKeyRef: {name: s, key: ak}}
      secretAccessKey: {secretKeyRef: {name: s, key: sk}}
  - mountPoint: s3://bucket/val
    name: val
    path: /val
"""
    req = parse_context({"dataset": text})
    assert req.name == "imagenet"
    doc = build_document(req, {"ak": "/f/ak", "sk": "/f/sk"})
    assert doc["spec"]["mounts"][0]["credentials"] == {
        "accessKeyId": {"file": "/f/ak"},
        "secretAccessKey": {"file": "/f/sk"},
    }
    parse_dataset(yaml.safe_dump(doc), "generated")
    with pytest.raises(RequestError, match="does not contain"):
        build_document(req, {"ak": "/f/ak"})


# -- state --------------------------------------------------------------------------------------
def sample_state() -> State:
    st = State()
    st.mounts["k1"] = SharedMount(
        key="k1",
        mountpoint="/s/mounts/k1",
        source="/s/d/k1/dataset.yaml",
        args=["--cache-size", "1Gi"],
        release_at=12.5,
    )
    st.volumes["v1"] = Volume(
        volume_id="v1",
        key="k1",
        staging_target_path="/stage/v1",
        context_digest="d",
        sub_path="a",
        capability="c",
        publications={"/t/1": Publication("/t/1", True, "c")},
    )
    st.volumes["e1"] = Volume(volume_id="e1", key="k1", ephemeral=True)
    st.controller["pvc"] = {"volume_id": "v1", "digest": "x"}
    st.add_tombstone("v0", "/t/0")
    return st


def test_state_round_trip_and_atomic_save(tmp_path) -> None:
    store = StateStore(str(tmp_path / "state"))
    assert store.load().volumes == {}
    st = sample_state()
    store.save(st)
    assert not os.path.exists(store.path + ".tmp")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.state_dir).st_mode) == 0o700
    again = store.load()
    assert again == st
    assert sorted(v.volume_id for v in again.users_of("k1")) == ["e1", "v1"]
    assert json.load(open(store.path))["version"] == 1


def test_corrupt_state_file_is_set_aside(tmp_path) -> None:
    store = StateStore(str(tmp_path))
    with open(store.path, "w") as f:
        f.write("{not json")
    assert store.load() == State()
    assert os.path.exists(store.path + ".corrupt")


def test_tombstones_bounded() -> None:
    st = State()
    for i in range(MAX_TOMBSTONES + 10):
        st.add_tombstone(f"v{i}", "/p")
    assert len(st.tombstones) == MAX_TOMBSTONES
    assert not st.has_tombstone("v0", "/p") and st.has_tombstone(f"v{MAX_TOMBSTONES + 9}", "/p")
    st.forget_tombstone(f"v{MAX_TOMBSTONES + 9}", "/p")
    assert not st.has_tombstone(f"v{MAX_TOMBSTONES + 9}", "/p")


def test_state_dir_lock_is_exclusive(tmp_path) -> None:
    a = StateStore(str(tmp_path))
    a.lock()
    with pytest.raises(OSError):
        StateStore(str(tmp_path)).lock()


def test_credentials_written_private_and_never_in_state(tmp_path) -> None:
    store = StateStore(str(tmp_path / "state"))
    mm = MountManager(store, State(), cache_root=str(tmp_path / "cache"), fluidfs_cmd=None)
    req = parse_context({"url": "s3://bucket/p", "endpoint": "http://127.0.0.1:1"})
    secrets = {"accessKeyId": "AKID-123", "secretAccessKey": "TOPSECRET-456"}
    m = mm._prepare("key1", req, secrets)
    assert stat.S_IMODE(os.stat(m.secret_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.dirname(m.source)).st_mode) == 0o700
    for name in secrets:
        path = os.path.join(m.secret_dir, name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert open(path).read() == secrets[name]
    text = open(m.source).read()
    assert "TOPSECRET" not in text and "AKID-123" not in text
    mm.state.mounts["key1"] = m
    mm.save()
    assert "TOPSECRET" not in open(store.path).read()
    with pytest.raises(RequestError):
        mm._prepare("key2", req, {"../escape": "x"})


def test_second_operation_on_one_volume_is_aborted(tmp_path) -> None:
    from csi.node import NodeServicer

    store = StateStore(str(tmp_path))
    node = NodeServicer("n1", MountManager(store, State(), cache_root=str(tmp_path / "c")))
    with node._volume("v1"):
        with pytest.raises(RequestError) as ei:
            with node._volume("v1"):
                pass
        assert ei.value.code == grpc.StatusCode.ABORTED
        with node._volume("v2"):  # other volumes are not blocked by v1
            pass
    with node._volume("v1"):  # released afterwards
        pass


# -- budgets, admission, daemon identity, mount syscalls, flags ----------------------------------
class _Ctx:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def test_budget_is_the_callers_deadline_capped() -> None:
    from csi.rpc import REPLY_MARGIN, Budget

    assert 9 < Budget.of(_Ctx(None), 10).left() <= 10  # type: ignore[arg-type]
    assert Budget.of(_Ctx(5.0), 10).left() <= 5 - REPLY_MARGIN  # type: ignore[arg-type]
    assert 9 < Budget.of(_Ctx(100.0), 10).left() <= 10  # type: ignore[arg-type]
    with pytest.raises(RequestError) as ei:
        Budget(0.1).require(1.0, "mount")
    assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "mount" in ei.value.message


def test_admission_refuses_instead_of_queueing() -> None:
    from csi.rpc import Admission

    adm = Admission("volume", 2)
    with adm.slot(), adm.slot():
        with pytest.raises(RequestError) as ei:
            with adm.slot():
                pass
        assert ei.value.code == grpc.StatusCode.UNAVAILABLE
    with adm.slot(), adm.slot():  # released again
        pass


def test_a_daemon_is_known_by_pid_and_start_time(tmp_path) -> None:
    from csi.daemons import daemon_pid, start_marker

    me = os.getpid()
    m = SharedMount(key="k", mountpoint=str(tmp_path), source="", pid_file=str(tmp_path / "pid"))
    assert daemon_pid(m) is None  # no pid file, no recorded pid
    (tmp_path / "pid").write_text(f"{me}\n")
    assert daemon_pid(m) == me  # a pid file alone (state written by an older plugin)
    m.daemon_pid, m.daemon_start = me, start_marker(me)
    assert daemon_pid(m) == me
    m.daemon_start = start_marker(me) + "0"  # same pid, another process (a new PID namespace)
    assert daemon_pid(m) is None
    m.daemon_pid, m.daemon_start = 2**22 + 7, ""  # no such process
    assert daemon_pid(m) is None


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("echo 'fluidfs: error: dataset: bad' >&2; exit 2", grpc.StatusCode.INVALID_ARGUMENT),
        ("echo 'fluidfs: error: access denied' >&2; exit 3", grpc.StatusCode.UNAVAILABLE),
        (
            "echo 'fluidfs: error: mount did not answer within 1s' >&2; sleep 1; exit 1",
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ),
        ("echo 'fluidfs: error: boom' >&2; exit 1", grpc.StatusCode.INTERNAL),
    ],
    ids=["usage", "source", "timeout", "other"],
)
def test_mount_failures_map_to_grpc_codes(tmp_path, script: str, code: grpc.StatusCode) -> None:
    from csi.daemons import MountFailed, start

    m = SharedMount(
        key="k1",
        mountpoint=str(tmp_path / "mnt"),
        source=str(tmp_path / "ds" / "dataset.yaml"),
        cache_dir=str(tmp_path / "cache"),
        pid_file=str(tmp_path / "ds" / "daemon.pid"),
    )
    os.makedirs(tmp_path / "ds")
    with pytest.raises(MountFailed) as ei:
        start(["sh", "-c", script, "fluidfs"], m, timeout=1.0)
    assert ei.value.code == code, ei.value.message
    assert "fluidfs: error:" not in ei.value.message and "dataset k1" in ei.value.message


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount(2) needs root")


@needs_root
def test_stacked_binds_are_read_only_and_all_removed(tmp_path) -> None:
    from csi.mountops import bind_ro, layers, make_private, top_device, unmount_all

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "t", str(src)], check=True)
    try:
        make_private(str(src))
        (src / "f").write_text("x")
        assert top_device(str(dst)) is None
        bind_ro(str(src), str(dst))
        assert top_device(str(dst)) == top_device(str(src)) is not None
        bind_ro(str(src), str(dst))  # a repair: on top, no unmount
        assert layers(str(dst)) == 2
        assert os.statvfs(dst).f_flag & os.ST_RDONLY, "a bind of a writable mount is made read-only"
        assert (dst / "f").read_text() == "x"
        assert unmount_all(str(dst)) == 2 and layers(str(dst)) == 0
        assert unmount_all(str(dst)) == 0  # nothing mounted: fine
    finally:
        unmount_all(str(dst), lazy=True)
        unmount_all(str(src), lazy=True)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mode", "node"], "--node-id is required"),
        (["--mode", "mounter", "--mounter", "unix:///x.sock"], "only the node service forwards"),
        (["--mode", "node", "--node-id", "n", "--mounter", "x.sock"], "--mounter 'x.sock'"),
        (["--mode", "node", "--node-id", "n", "--mounter", "/x.sock", "--metrics-addr", ":0"], "supervisor"),
        (["--mode", "mounter", "--mount-timeout", "0"], "--mount-timeout"),
        (["--mode", "mounter", "--mount-timeout", "indefinite"], "--mount-timeout"),
    ],
)
def test_flag_mistakes_are_usage_errors(tmp_path, args: list[str], needle: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "csi", "--endpoint", f"unix://{tmp_path}/s.sock", "--state-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@needs_root
def test_sweep_removes_what_the_state_does_not_know(tmp_path) -> None:
    from csi.mountops import layers

    store = StateStore(str(tmp_path / "state"))
    state = State()
    mm = MountManager(store, state, cache_root=str(tmp_path / "cache"))
    for key in ("known", "orphan"):
        os.makedirs(tmp_path / "state" / "datasets" / key / "secrets")
        os.makedirs(tmp_path / "state" / "mounts" / key)
    state.mounts["known"] = SharedMount(key="known", mountpoint=str(tmp_path / "state" / "mounts" / "known"), source="")
    orphan_mp = str(tmp_path / "state" / "mounts" / "orphan")
    subprocess.run(["mount", "-t", "tmpfs", "t", orphan_mp], check=True)
    try:
        assert mm.sweep_orphans() == ["orphan"]
        assert layers(orphan_mp) == 0
        assert sorted(os.listdir(tmp_path / "state" / "datasets")) == ["known"]
    finally:
        subprocess.run(["umount", "-l", orphan_mp], capture_output=True)


def test_the_mount_deadline_leaves_fluidfs_mount_room_for_its_request_timeout() -> None:
    """The supervisor gives ``fluidfs mount`` --timeout >= its request timeout + 10 s (else it refuses)."""
    assert request_timeout([]) == 20.0
    assert request_timeout(["--endpoint", "http://x", "--request-timeout", "45s"]) == 45.0
    assert request_timeout(["--request-timeout", "soon"]) == 20.0  # fluidfs mount reports the mistake
