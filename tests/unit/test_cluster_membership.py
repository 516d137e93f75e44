"""Membership: the peers file (every bad line named), self identification, history and
previous owners, reloading on change, flapping, and Kubernetes discovery through a fake adapter."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fluidfs.cache.base import BlockKey
from fluidfs.cluster.kubediscovery import (
    KubeEndpointSliceAPI,
    KubernetesDiscovery,
    Slice,
    SliceEndpoint,
    SliceEvent,
    WatchExpired,
    members_of,
)
from fluidfs.cluster.membership import Member, MembershipView, PeersFileWatcher, parse_address, parse_peers
from fluidfs.cluster.node import PeerSettings, validate_settings
from fluidfs.errors import ConfigError

KEYS = [BlockKey(f"file:///d/f{i}", "v", 1 << 20, i % 7) for i in range(400)]


def view(**kw: object) -> MembershipView:
    return MembershipView("ds-membership", **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ peers file


def test_parse_peers_file() -> None:
    text = """
    # the cluster
    worker-0   127.0.0.1:7001   100   # a comment
    worker-1   LocalHost:7002
    node.a_1   [::1]:7003  2.5

    """
    ms = parse_peers(text, "peers")
    assert ms == (
        Member("worker-0", "127.0.0.1:7001", 100.0),
        Member("worker-1", "localhost:7002", 1.0),
        Member("node.a_1", "[::1]:7003", 2.5),
    )
    assert ms[2].host == "::1" and ms[2].port == 7003
    assert parse_peers("", "empty") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a 127.0.0.1:1\nb", "peers:2: expected 'ID HOST:PORT [WEIGHT]'"),
        ("a 127.0.0.1:1 1 extra", "peers:1: too many fields"),
        ("a 127.0.0.1:1 heavy", "peers:1: bad weight 'heavy'"),
        ("a 127.0.0.1:1 0", "peers:1: member a: weight must be a positive number"),
        ("a 127.0.0.1:1 -3", "peers:1: member a: weight must be a positive number"),
        ("a 127.0.0.1:1 nan", "peers:1: member a: weight must be a positive number"),
        ("a 127.0.0.1:1 inf", "peers:1: member a: weight must be a positive number"),
        ("a/b 127.0.0.1:1", "peers:1: bad member id 'a/b'"),
        ("x" * 64 + " 127.0.0.1:1", "peers:1: bad member id"),
        ("a 127.0.0.1", "peers:1: bad address '127.0.0.1' (expected HOST:PORT)"),
        ("a 127.0.0.1:0", "peers:1: bad port in '127.0.0.1:0'"),
        ("a 127.0.0.1:70000", "peers:1: bad port"),
        ("a 127.0.0.1:http", "peers:1: bad port"),
        ("a ::1:7000", "peers:1: bad address '::1:7000' (IPv6 addresses are written [ADDR]:PORT)"),
        ("a [zz]:7000", "peers:1: bad IPv6 address"),
        ("a bad_host!:7000", "peers:1: bad host name"),
        ("a 0.0.0.0:7000", "peers:1: member a: '0.0.0.0:7000' is a wildcard address"),
        ("a 127.0.0.1:1\n\n# c\nb 127.0.0.1:2\na 127.0.0.1:3", "peers:5: duplicate member id 'a' (first on line 1)"),
        ("a 127.0.0.1:1\nb 127.0.0.1:1", "peers:2: duplicate address 127.0.0.1:1 (first on line 1)"),
        ("a LOCALHOST:1\nb localhost:1", "peers:2: duplicate address localhost:1"),
    ],
)
def test_bad_peers_lines_are_named_with_their_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_peers(text, "peers")
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_unreadable_peers_file(tmp_path: Path) -> None:
    w = PeersFileWatcher(str(tmp_path / "nope"), view(listen="127.0.0.1:1"))
    with pytest.raises(ConfigError, match=r"peers file .*nope: No such file"):
        w.load()
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe a 1.2.3.4:5")
    with pytest.raises(ConfigError, match="not UTF-8"):
        PeersFileWatcher(str(binary), view(listen="127.0.0.1:1")).load()


# --------------------------------------------------------------------------- identity, history


def test_a_member_finds_itself_by_its_listen_address_or_id(caplog: pytest.LogCaptureFixture) -> None:
    ms = parse_peers("a 127.0.0.1:7001\nb 127.0.0.1:7002\nc 127.0.0.1:7003")
    v = view(listen="127.0.0.1:7002")
    assert v.update(ms)
    assert v.self_id == "b" and v.me == ms[1]
    assert not v.update(list(reversed(ms)))  # same set: no change
    v2 = view(self_id="c", listen="0.0.0.0:7003")
    v2.update(ms)
    assert v2.self_id == "c"
    # not in the file: reads through peers, owns nothing, warns once
    v3 = view(listen="127.0.0.1:9999")
    with caplog.at_level(logging.WARNING):
        v3.update(ms)
        v3.update(ms[:2])
    assert v3.self_id is None
    assert sum("not in the member set" in r.message for r in caplog.records) == 1
    with pytest.raises(ConfigError, match="wildcard"):
        view(listen="0.0.0.0:7000")
    with pytest.raises(ConfigError, match="listen address: bad port"):
        view(listen="127.0.0.1:x")


def test_previous_owners_come_from_history_and_expire() -> None:
    now = [1000.0]
    ab = parse_peers("a 127.0.0.1:1\nb 127.0.0.1:2")
    abc = parse_peers("a 127.0.0.1:1\nb 127.0.0.1:2\nc 127.0.0.1:3")
    v = MembershipView("ds", listen="127.0.0.1:3", history_ttl=60, clock=lambda: now[0])
    v.update(ab)
    assert all(v.previous_owners(k) == [] for k in KEYS)  # no history yet
    v.update(abc)
    moved = [k for k in KEYS if v.owners(k)[0].id == "c"]
    assert 0.2 < len(moved) / len(KEYS) < 0.47  # c took about a third
    for k in KEYS:
        prev = v.previous_owners(k)
        if k in moved:
            assert [m.id for m in prev] == [v.history[0][0].ring.owner(k)]
        else:
            assert prev == []  # same owner as before: nothing to ask
    now[0] += 61
    assert all(v.previous_owners(k) == [] for k in moved)  # history older than the TTL is dropped
    assert v.member("a") == ab[0]


def test_flapping_keeps_history_bounded_and_lookups_bounded() -> None:
    abc = parse_peers("a 127.0.0.1:1\nb 127.0.0.1:2\nc 127.0.0.1:3")
    v = view(listen="127.0.0.1:1", history_size=4)
    changes: list[int] = []
    v.on_change(lambda vv: changes.append(vv.current.generation))
    for i in range(50):
        v.update(abc if i % 2 == 0 else abc[:2])
    assert len(changes) == 50 and len(v.history) == 4
    for k in KEYS[:100]:
        prev = v.previous_owners(k, limit=2)
        assert len(prev) <= 2 and all(m.id != "a" for m in prev)
        assert len({m.id for m in prev}) == len(prev)


def test_an_address_change_keeps_ownership() -> None:
    v = view(self_id="a")
    v.update(parse_peers("a 127.0.0.1:1\nb 127.0.0.1:2"))
    owners = [v.owners(k)[0].id for k in KEYS]
    v.update(parse_peers("a 127.0.0.1:1\nb 127.0.0.1:9"))
    assert [v.owners(k)[0].id for k in KEYS] == owners
    assert v.member("b") == Member("b", "127.0.0.1:9", 1.0)


# ------------------------------------------------------------------------------ file watcher


def test_watcher_reloads_on_change_and_keeps_the_last_good_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "peers"
    path.write_text("a 127.0.0.1:1\nb 127.0.0.1:2\n")
    v = view(listen="127.0.0.1:1")
    w = PeersFileWatcher(str(path), v, poll_interval=0.01)

    def rewrite(text: str) -> None:
        tmp = tmp_path / "peers.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)

    async def main() -> None:
        w.load()
        assert [m.id for m in v.current.members] == ["a", "b"]
        assert not await w.check()  # unchanged
        rewrite("a 127.0.0.1:1\nb 127.0.0.1:2\nc 127.0.0.1:3\n")
        assert await w.check()
        assert [m.id for m in v.current.members] == ["a", "b", "c"]
        with caplog.at_level(logging.WARNING):
            rewrite("a 127.0.0.1:1\nb 127.0.0.1:2\nb 127.0.0.1:4\n")  # duplicate id: rejected
            assert not await w.check()
            assert not await w.check()  # the same problem is logged once
            os.unlink(path)
            assert not await w.check()
        assert [m.id for m in v.current.members] == ["a", "b", "c"]  # last good set kept
        msgs = [r.message for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("duplicate member id 'b'" in m for m in msgs) == 1
        assert sum("cannot stat" in m for m in msgs) == 1
        # the background poller picks up a repaired file
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w.run)
            rewrite("a 127.0.0.1:1\n")
            with trio.fail_after(5):
                await v.changed.wait()
            nursery.cancel_scope.cancel()
        assert [m.id for m in v.current.members] == ["a"]

    trio.run(main)


# -------------------------------------------------------------------------- Kubernetes discovery


def ep(name: str, ip: str, ready: bool = True) -> SliceEndpoint:
    return SliceEndpoint(ip, ready, name)


class FakeSliceAPI:
    """Drives discovery like the API server would: a list, then watch batches, then failures."""

    def __init__(self) -> None:
        self.slices = [Slice("svc-abc", (ep("w-0", "10.0.0.1"), ep("w-1", "10.0.0.2", ready=False)), 7070)]
        self.batches: list[list[SliceEvent] | Exception] = [
            [SliceEvent("MODIFIED", Slice("svc-abc", (ep("w-0", "10.0.0.1"), ep("w-1", "10.0.0.2")), 7070), "5")],
            [SliceEvent("ADDED", Slice("svc-def", (ep("", "10.0.0.3"), ep("w-0", "10.0.0.9")), 7070), "6")],
            WatchExpired("too old"),
            RuntimeError("API server unreachable"),
            [SliceEvent("DELETED", Slice("svc-def", (), 7070), "9")],
        ]
        self.lists = 0
        self.watched_from: list[str] = []
        self.done = threading.Event()

    def list(self) -> tuple[list[Slice], str]:
        self.lists += 1
        return list(self.slices), str(self.lists)

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[SliceEvent]:
        self.watched_from.append(resource_version)
        if not self.batches:
            self.done.set()
            self.done.wait(0.05)
            return
        batch = self.batches.pop(0)
        if isinstance(batch, Exception):
            raise batch
        for ev in batch:  # the API server's state follows its own events
            self.slices = [s for s in self.slices if s.name != ev.slice.name]
            if ev.type != "DELETED":
                self.slices.append(ev.slice)
            yield ev


def test_members_of_endpoint_slices() -> None:
    slices = {
        "a": Slice("a", (ep("w-0", "10.0.0.1"), ep("w-1", "10.0.0.2", ready=False), ep("", "fd00::5")), 7070),
        "b": Slice("b", (ep("w-0", "10.0.0.7"),), 7070),  # duplicate id: first slice wins
        "c": Slice("c", (ep("x", "10.0.0.8"),), None),  # no peer port
    }
    ms = members_of(slices, weight_of=lambda e: 2.0)
    assert ms == [Member("w-0", "10.0.0.1:7070", 2.0), Member("ip-fd00--5", "[fd00::5]:7070", 2.0)]


def test_kubernetes_discovery_follows_list_and_watch_with_a_fake() -> None:
    api = FakeSliceAPI()
    v = view(self_id="w-1")
    seen: list[list[str]] = []
    v.on_change(lambda vv: seen.append([m.id for m in vv.current.members]))
    disc = KubernetesDiscovery(api, v, backoff=(0.01, 0.02), watch_timeout=1)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(disc.run)
            with trio.fail_after(10):
                while not api.done.is_set():
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen[0] == ["w-0"]  # w-1 not ready yet
    assert ["w-0", "w-1"] in seen
    assert ["ip-10-0-0-3", "w-0", "w-1"] in seen  # the second slice's w-0 duplicate is ignored
    assert seen[-1] == ["w-0", "w-1"]  # the relist after expiry/error has only the first slice
    assert api.lists == 3  # initial, after WatchExpired, after the error
    assert api.watched_from[:2] == ["1", "5"]  # resumes from the last event's resourceVersion
    assert v.self_id == "w-1"


def test_the_real_adapter_imports_and_constructs_without_a_cluster() -> None:
    api = KubeEndpointSliceAPI("ns", "fluidfs-workers", "peer")
    assert api.selector == "kubernetes.io/service-name=fluidfs-workers"
    with pytest.raises(ConfigError, match="namespace and a Service"):
        KubeEndpointSliceAPI("", "svc")


# ------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"listen": "nowhere"}, "peer listen address: bad address"),
        ({"peers_file": None}, "exactly one membership source"),
        ({"kube_service": "ns/svc"}, "exactly one membership source"),
        ({"peers_file": None, "kube_service": "svc"}, "NAMESPACE/SERVICE"),
        ({"replicas": 0}, "replicas must be between 1 and 8"),
        ({"peer_copy": "disk"}, "peer copy must be one of memory, ssd, none"),
        ({"read_timeout": 0.0}, "read_timeout must be a positive number"),
        ({"fetch_timeout": float("inf")}, "fetch_timeout must be a positive number"),
        ({"server_transfers": 0}, "server_transfers must be at least 1"),
    ],
)
def test_bad_settings(kw: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"listen": "127.0.0.1:7000", "peers_file": "/etc/peers"}
    base.update(kw)
    with pytest.raises(ConfigError, match=message):
        validate_settings(PeerSettings(**base))  # type: ignore[arg-type]
    assert parse_address("[::1]:80") == ("::1", 80)


def test_members_without_a_given_weight_weigh_what_they_announce() -> None:
    v = view(self_id="a")
    v.update(parse_peers("a 127.0.0.1:1\nb 127.0.0.1:2\nc 127.0.0.1:3 5"))
    assert {m.id: m.weight for m in v.current.members} == {"a": 1.0, "b": 1.0, "c": 5.0}
    assert [m.id for m in v.unweighed()] == ["a", "b"]  # c's weight is given: never asked
    gen = v.current.generation
    assert v.learn({"a": ("127.0.0.1:1", 30.0)})
    # b is still unknown: it weighs the median of the announced weights meanwhile
    assert {m.id: m.weight for m in v.current.members} == {"a": 30.0, "b": 30.0, "c": 5.0}
    assert v.learn({"b": ("127.0.0.1:2", 10.0), "c": ("127.0.0.1:3", 99.0)}) and v.current.generation == gen + 2
    assert {m.id: m.weight for m in v.current.members} == {"a": 30.0, "b": 10.0, "c": 5.0}
    assert v.current.ring.share("a") == pytest.approx(30 / 45) and v.unweighed() == []
    assert not v.learn({"b": ("127.0.0.1:2", 10.0)})  # nothing new: no membership change
    v.update(parse_peers("a 127.0.0.1:1\nb 127.0.0.1:7\nc 127.0.0.1:3 5"))  # b restarted elsewhere
    assert [m.id for m in v.unweighed()] == ["b"]
