"""The node's rules as plain logic, without a plugin process or a mount: the admin's policy
(``csi/policy.py``), the memory and disk budgets (``csi/budget.py``), the cache directories and
their removal (``csi/caches.py``) and the reservations that tie them together (``csi/reserve.py``)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import pytest

from csi.budget import MEMORY_RESERVE, Amount, Held, NodeBudget, cgroup_memory_limit
from csi.caches import CacheDirs, dir_usage
from csi.policy import AMBIENT_AWS, Policy, metadata_host
from csi.reserve import Reservations, held
from csi.state import IdleCache, SharedMount, State
from csi.volumes import RequestError, parse_context
from fluidfs.config import GiB, MiB, MountConfig

DENIED = grpc.StatusCode.PERMISSION_DENIED
DOC = "apiVersion: fluidfs.io/v1alpha1\nkind: Dataset\nmetadata: {{name: d}}\nspec:\n  mounts:\n{mounts}"


def doc(*mounts: str) -> str:
    return DOC.format(mounts="".join(f"  - {m}\n" for m in mounts))


def denied(fn: object, *args: object) -> str:
    with pytest.raises(RequestError) as ei:
        fn(*args)  # type: ignore[operator]
    assert ei.value.code == DENIED, ei.value.message
    return ei.value.message


# -- policy ---------------------------------------------------------------------------------------
def test_policy_flags_are_checked(tmp_path: Path) -> None:
    state, cache = tmp_path / "state", tmp_path / "cache"
    with pytest.raises(ValueError, match="absolute"):
        Policy.build(["data"], node_identity=False, ephemeral=True, protected=[str(state)])
    for bad in (tmp_path, state, state / "x", Path("/")):
        with pytest.raises(ValueError, match="overlaps the plugin's own directory"):
            Policy.build([str(bad)], node_identity=False, ephemeral=True, protected=[str(state), str(cache)])
    ok = Policy.build([str(tmp_path / "data") + "/"], node_identity=False, ephemeral=True, protected=[str(state)])
    assert ok.host_paths == (str(tmp_path / "data"),)


def test_local_sources_only_below_allowed_host_paths(tmp_path: Path) -> None:
    data, state = tmp_path / "data", tmp_path / "state"
    (data / "a").mkdir(parents=True)
    state.mkdir()
    (data / "escape").symlink_to(state)
    (data / "inner").symlink_to(data / "a")
    strict = Policy()
    allowing = Policy.build([str(data)], node_identity=False, ephemeral=True, protected=[str(state)])
    for url in (f"file://{data}", f"file://{data}/a"):
        assert "not an allowed host path" in denied(strict.check_sources, parse_context({"url": url}))
        allowing.check_sources(parse_context({"url": url}))
    allowing.check_sources(parse_context({"url": f"file://{data}/inner"}))  # a symlink that stays inside
    assert "leads to" in denied(allowing.check_sources, parse_context({"url": f"file://{data}/escape"}))
    assert "not an allowed" in denied(allowing.check_sources, parse_context({"url": f"file://{tmp_path}"}))
    both = parse_context({"dataset": doc("{mountPoint: 's3://b', path: /s3}", f"{{mountPoint: '{state}', path: /x}}")})
    assert "spec.mounts[1]" in denied(allowing.check_sources, both)


@pytest.mark.parametrize(
    "host, want",
    [
        ("169.254.169.254", True),
        ("169.254.170.2", True),
        ("[fd00:ec2::254]", True),
        ("::ffff:169.254.169.254", True),
        ("fe80::1", True),
        ("2852039166", True),
        ("0xa9.0xfe.0xa9.0xfe", True),
        ("100.100.100.200", True),
        ("metadata.google.internal.", True),
        ("METADATA", True),
        ("10.0.0.1", False),
        ("s3.amazonaws.com", False),
        ("minio", False),
        ("", False),
    ],
)
def test_metadata_hosts(host: str, want: bool) -> None:
    assert metadata_host(host) is want


def test_s3_without_credentials_needs_anonymous_or_the_node_identity() -> None:
    url = {"url": "s3://bucket/p", "endpoint": "http://minio:9000"}
    keys = {"accessKeyId": "a", "secretAccessKey": "b"}
    strict, node = Policy(), Policy(node_identity=True)
    assert "node's own identity" in denied(strict.check_credentials, parse_context(url), {})
    assert "node's own identity" in denied(strict.check_credentials, parse_context(url), {"accessKeyId": "a"})
    strict.check_credentials(parse_context(url), keys)
    strict.check_credentials(parse_context(url), {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    strict.check_credentials(parse_context({**url, "options.anonymous": "yes"}), {})
    node.check_credentials(parse_context(url), {})
    strict.check_credentials(parse_context({"url": "https://host/data/"}), {})  # http: no ambient identity
    refs = "credentials: {accessKeyId: {secretKeyRef: {name: s, key: ak}}, "
    refs += "secretAccessKey: {secretKeyRef: {name: s, key: sk}}}"
    with_refs = parse_context({"dataset": doc(f"{{mountPoint: 's3://b', {refs}}}")})
    strict.check_credentials(with_refs, {"ak": "a", "sk": "b"})
    bare = parse_context({"dataset": doc("{mountPoint: 's3://b', path: /a}", "{mountPoint: 's3://c', path: /b}")})
    strict.check_credentials(bare, keys)  # the CSI secret's S3 keys apply to mounts without credentials
    assert "spec.mounts[0]" in denied(strict.check_credentials, bare, {})


@pytest.mark.parametrize("form", ["{file: /etc/shadow}", "{env: AWS_SECRET_ACCESS_KEY}"])
def test_credential_references_are_refused_for_everyone(form: str) -> None:
    ctx = {"dataset": doc(f"{{mountPoint: 's3://b', credentials: {{accessKeyId: {form}}}}}")}
    message = denied(parse_context, ctx)
    assert "spec.mounts[0].credentials" in message and "CSI secret" in message


def test_daemon_environment_without_the_node_identity() -> None:
    environ = {k: "x" for k in AMBIENT_AWS} | {"AWS_CA_BUNDLE": "/ca.pem", "PATH": "/bin"}
    env = Policy().daemon_env(environ)
    assert not set(AMBIENT_AWS) & set(env)
    assert env["AWS_CA_BUNDLE"] == "/ca.pem" and env["PATH"] == "/bin"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true" and env["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull
    assert Policy(node_identity=True).daemon_env(environ) == environ


def test_ephemeral_switch() -> None:
    Policy().check_ephemeral()
    assert "ephemeral" in denied(Policy(ephemeral=False).check_ephemeral)


# -- budgets --------------------------------------------------------------------------------------
def test_amounts() -> None:
    assert Amount.parse("15%", "f").of(1000) == 150
    assert Amount.parse("2Gi", "f").of(1) == 2 * GiB
    for bad in ("150%", "x%", "lots", "-1"):
        with pytest.raises(ValueError, match="f"):
            Amount.parse(bad, "f")


def test_cgroup_memory_limit(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"

    def limit(lines: str, files: dict[str, str]) -> int | None:
        proc.write_text(lines)
        for rel, text in files.items():
            (tmp_path / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "fs" / rel).write_text(text)
        return cgroup_memory_limit(str(tmp_path / "fs"), str(proc))

    assert limit("0::/\n", {"memory.max": "2147483648\n"}) == 2 * GiB
    assert limit("0::/\n", {"memory.max": "max\n"}) is None
    assert limit("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/memory.max": "1073741824\n"}) == GiB
    assert limit("5:memory:/kubepods/x\n", {"memory/kubepods/x/memory.limit_in_bytes": "536870912"}) == 512 * MiB
    assert limit("5:cpu,memory:/y\n", {"memory/y/memory.limit_in_bytes": str(2**63 - 4096)}) is None
    assert cgroup_memory_limit(str(tmp_path / "none"), str(tmp_path / "missing")) is None


def test_memory_tiers_fit_the_limit_or_are_refused(tmp_path: Path) -> None:
    b = NodeBudget(str(tmp_path), memory_limit=2 * GiB, daemon_overhead=100 * MiB, free_floor=Amount(bytes=0))
    want = MountConfig(memory_size=512 * MiB)
    g = b.grant("a", want, None, [], 0)
    assert g.memory == 512 * MiB and not g.notes
    others = [Held(512 * MiB, 0)] * 2  # 2048 - 128 - 2 * 612 - 100 = 596 MiB left
    g = b.grant("c", MountConfig(memory_size=1 * GiB), None, others, 0)
    assert g.memory == 2 * GiB - MEMORY_RESERVE - 2 * (612 * MiB) - 100 * MiB and "shrunk" in g.notes[0]
    with pytest.raises(RequestError) as ei:
        b.grant("d", want, None, [Held(512 * MiB, 0)] * 3, 0)
    assert ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "memorySize" in ei.value.message
    assert NodeBudget(str(tmp_path)).grant("e", MountConfig(memory_size=64 * GiB), None, others, 0).memory == 64 * GiB


def test_ssd_quotas_fit_the_capacity_and_floors(tmp_path: Path) -> None:
    b = NodeBudget(str(tmp_path), cache_capacity=Amount(bytes=10 * GiB), free_floor=Amount(bytes=GiB))
    want = MountConfig(cache_size=4 * GiB)
    assert b.grant("a", want, None, [Held(0, 4 * GiB)], GiB) == b.grant("a", want, None, [], 0)
    g = b.grant("b", want, None, [Held(0, 4 * GiB)], 3 * GiB)  # 10 - 4 - 3 = 3 GiB left
    assert g.cache == 3 * GiB and "SSD tier" in g.notes[0]
    g = b.grant("c", want, None, [Held(0, 10 * GiB - 16 * 4 * MiB + 1)], 0)  # less than 16 blocks left
    assert g.cache == 0 and "memory tier only" in g.notes[0]
    assert b.grant("d", want, 5 * GiB, [], 0).floor == 5 * GiB  # the dataset's own floor, when larger
    pct = NodeBudget(str(tmp_path), free_floor=Amount(fraction=0.15))
    st = os.statvfs(tmp_path)
    assert pct.grant("e", want, None, [], 0).floor == int(st.f_blocks * st.f_frsize * 0.15)
    assert pct.grant("e", want, None, [], 0).cache == 4 * GiB  # no capacity: as asked


# -- cache directories ----------------------------------------------------------------------------
def test_cache_directories_by_dataset_and_their_removal(tmp_path: Path) -> None:
    dirs = CacheDirs(str(tmp_path), grace=10.0)
    ident = "0123456789abcdef0123456789"
    assert dirs.choose(ident, set()) == ident[:20]
    assert dirs.choose(ident, {ident[:20], ident[:20] + "-2"}) == ident[:20] + "-3"
    for name in ("a" * 20, "b" * 20, "c" * 20 + "-2", "not-a-cache"):
        (tmp_path / name / "blocks").mkdir(parents=True)
        (tmp_path / name / "blocks" / "x").write_bytes(b"z" * 8192)
    assert dir_usage(str(tmp_path / ("a" * 20))) >= 8192
    idle: dict[str, IdleCache] = {}
    assert dirs.track(idle, {"a" * 20}, now=100.0)
    assert sorted(idle) == ["b" * 20, "c" * 20 + "-2"]  # in use and foreign names are not idle
    idle["c" * 20 + "-2"].since = 50.0
    assert dirs.expired(idle, now=105.0) == ["c" * 20 + "-2"]
    for e in idle.values():
        e.bytes = dir_usage(str(tmp_path / "x"))  # 0: missing
    idle["b" * 20].bytes = 5
    freed, trashed = dirs.evict(idle, need=1)  # oldest first, until enough is freed
    assert freed == 5 and len(trashed) == 2 and idle == {}
    assert sorted(os.listdir(tmp_path)) == sorted(["a" * 20, "not-a-cache"] + [os.path.basename(t) for t in trashed])
    dirs.empty_trash()
    assert sorted(os.listdir(tmp_path)) == ["a" * 20, "not-a-cache"]
    assert dirs.track(idle, set(), now=200.0)  # a is idle now too
    assert idle["a" * 20].since == 200.0


# -- reservations ---------------------------------------------------------------------------------
def reservations(tmp_path: Path, **budget: object) -> tuple[Reservations, State]:
    state = State()
    cache = tmp_path / "cache"
    cache.mkdir()
    b = NodeBudget(str(cache), free_floor=Amount(bytes=GiB), **budget)  # type: ignore[arg-type]
    return Reservations(state, threading.RLock(), lambda: None, b, CacheDirs(str(cache), grace=3600.0)), state


def test_reservations_count_mounts_being_started(tmp_path: Path) -> None:
    r, state = reservations(tmp_path, memory_limit=2 * GiB)
    req = parse_context({"url": "s3://bucket/p", "memorySize": "1Gi", "cacheSize": "2Gi", "blockSize": "8Mi"})
    first = r.reserve("k1", req)
    assert first.grant.memory == GiB and first.cache_dir.endswith(req.dataset_digest()[:20])
    last = len(first.args) - 1 - first.args[::-1].index("--memory-size")
    assert first.args[last + 1] == str(GiB), "the granted size comes last: it wins over the attribute's"
    assert list(first.args[-2:]) == ["--metrics-addr", "127.0.0.1:0"]
    assert "--cache-size" in first.args and "--free-space-floor" in first.args
    # the same dataset with other credentials, at once: shrunk memory, its own cache directory
    second = r.reserve("k2", req)
    assert second.grant.memory < GiB and second.cache_dir == first.cache_dir + "-2"
    r.cancel("k2")
    again = r.reserve("k2", req)
    assert again.grant.memory == second.grant.memory  # k1 still pending: nothing changed
    r.cancel("k1")
    r.cancel("k2")
    assert r.reserve("k3", req).grant.memory == GiB


def test_version_one_mounts_count_what_their_flags_asked_for() -> None:
    old = SharedMount(key="k", mountpoint="/m", source="/s", args=["--memory-size", "2Gi"], cache_dir="/c/k")
    assert held(old) == Held(2 * GiB, MountConfig().cache_size)
    assert held(SharedMount(key="k", mountpoint="/m", source="/s")) == Held(MountConfig().memory_size, 0)


def test_unused_cache_directories_are_collected_after_their_grace(tmp_path: Path) -> None:
    r, state = reservations(tmp_path)
    r.caches.grace = 0.5
    req = parse_context({"url": "s3://bucket/p"})
    res = r.reserve("k1", req)
    os.makedirs(res.cache_dir)
    state.mounts["k1"] = SharedMount(key="k1", mountpoint="/m", source="/s", cache_dir=res.cache_dir, memory=1)
    r.commit("k1")
    stale = tmp_path / "cache" / ("f" * 20)
    stale.mkdir()
    assert r.collect() == [] and stale.exists()  # idle from now on
    time.sleep(0.6)
    assert r.collect() == ["f" * 20] and not stale.exists()
    assert os.path.isdir(res.cache_dir), "a directory in use is never collected"
    del state.mounts["k1"]
    r.released(SharedMount(key="k1", mountpoint="/m", source="/s", cache_dir=res.cache_dir))
    time.sleep(0.6)
    assert r.collect() == [os.path.basename(res.cache_dir)]
    assert os.listdir(tmp_path / "cache") == []
