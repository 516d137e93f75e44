"""The peer tier inside real members on loopback (several PeerNodes in one trio loop): peers
that send truncated, corrupt or foreign blocks, never answer or refuse are skipped and the
source serves (bytes exact, each block read once, metrics and breaker show it); previous owners
serve after a join; flapping membership stays correct; a graceful leave hands blocks over."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY

from fluidfs.cache.base import BlockKey
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.cluster.breaker import OPEN
from fluidfs.cluster.kubediscovery import Slice, SliceEndpoint, SliceEvent
from fluidfs.cluster.node import PeerNode, PeerSettings
from fluidfs.cluster.provider import CacheBlockProvider
from fluidfs.errors import ConfigError
from fluidfs.sources.aio import AsyncSource
from tests.support.cluster_badpeer import BadPeer
from tests.support.cluster_harness import (
    SECRET,
    CountingSource,
    KiB,
    Member,
    MiB,
    block_keys,
    build_member,
    free_ports,
    make_files,
    start_member,
    write_peers,
)

BS = 64 * KiB
_seq = itertools.count()


def dataset(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_seq)}"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def blocks_in(m: Member, names: list[str]) -> int:
    return sum(len(block_keys(m.source, n, BS)) for n in names)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("truncate", "bad_block"),
        ("corrupt", "bad_block"),
        ("wrongkey", "bad_block"),
        ("silent", "timeout"),
        ("refused", "refused"),
    ],
)
def test_a_bad_peer_never_reaches_the_reader(tmp_path: Path, mode: str, reason: str) -> None:
    ds = dataset(f"bad-{mode}")
    files = make_files(tmp_path / "data", {"f.bin": 24 * BS + 7})
    (port,) = free_ports(1)
    peers = tmp_path / "peers"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if mode == "refused":
                (bad_port,) = free_ports(1)
                bad_addr, bad = f"127.0.0.1:{bad_port}", None
            else:
                bad = BadPeer(mode)
                bad_addr = await nursery.start(bad.serve)
            write_peers(peers, [("a", f"127.0.0.1:{port}"), ("x", bad_addr)])
            addr = f"127.0.0.1:{port}"
            a = build_member(
                "a", tmp_path / "data", tmp_path, addr, peers, ds, bs=BS, read_timeout=0.5, fetch_timeout=1.0
            )
            await start_member(nursery, a)
            keys = block_keys(a.source, "f.bin", BS)
            owned_by_x = sum(a.node.view.owners(k)[0].id == "x" for k in keys)
            assert owned_by_x > 0
            t0 = trio.current_time()
            assert await a.read("f.bin") == files["f.bin"]
            assert trio.current_time() - t0 < 15
            assert a.source.total == len(keys)  # every block once, the bad peer's ones from the source
            assert metric("fluidfs_peer_errors_total", dataset=ds, side="client", reason=reason) >= 1
            assert metric("fluidfs_peer_lookups_total", dataset=ds, result="error") >= 1
            assert a.node.tier.breakers.get("x").state == OPEN
            assert metric("fluidfs_peer_breaker_state", dataset=ds, peer="x") == OPEN
            if bad is not None:
                assert bad.requests <= 4  # the breaker opened after the first failures (4 readers)
            assert a.cache.peer_fetches == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_peer_without_the_block_is_not_a_failure(tmp_path: Path) -> None:
    ds = dataset("notfound")
    files = make_files(tmp_path / "data", {"f.bin": 12 * BS})
    (port,) = free_ports(1)
    peers = tmp_path / "peers"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bad = BadPeer("notfound")
            write_peers(peers, [("a", f"127.0.0.1:{port}"), ("x", await nursery.start(bad.serve))])
            a = build_member("a", tmp_path / "data", tmp_path, f"127.0.0.1:{port}", peers, ds, bs=BS)
            await start_member(nursery, a)
            assert await a.read("f.bin") == files["f.bin"]
            assert a.node.tier.breakers.get("x").state != OPEN
            assert metric("fluidfs_peer_errors_total", dataset=ds, side="client", reason="protocol") == 0
            assert metric("fluidfs_peer_lookups_total", dataset=ds, result="miss") >= 1
            assert bad.requests >= 1
            nursery.cancel_scope.cancel()

    trio.run(main)


async def _members(
    nursery: trio.Nursery, tmp_path: Path, ds: str, names: list[str], peers_names: list[str], **kw: object
) -> dict[str, Member]:
    ports = free_ports(len(names))
    addrs = {n: f"127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)}
    peers = tmp_path / "peers"
    write_peers(peers, [(n, addrs[n]) for n in peers_names])
    out: dict[str, Member] = {}
    for n in names:
        out[n] = build_member(n, tmp_path / "data", tmp_path, addrs[n], peers, ds, bs=BS, **kw)  # type: ignore[arg-type]
        await start_member(nursery, out[n])
    return out


def test_after_a_join_the_new_owner_asks_the_previous_owner(tmp_path: Path) -> None:
    ds = dataset("join")
    files = make_files(tmp_path / "data", {"f1.bin": 20 * BS, "f2.bin": 20 * BS + 1})
    names = list(files)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ms = await _members(nursery, tmp_path, ds, ["a", "b", "c"], ["a", "b"], peer_copy="none", ssd_quota=8 * MiB)
            a, b, c = ms["a"], ms["b"], ms["c"]
            n = blocks_in(a, names)
            for name in names:
                assert await a.read(name) == files[name]
            assert a.source.total + b.source.total == n
            # c joins
            write_peers(tmp_path / "peers", [(m.name, m.node.settings.listen) for m in (a, b, c)])
            with trio.fail_after(5):
                while not all(len(m.node.view.current.members) == 3 for m in ms.values()):
                    await trio.sleep(0.05)
            keys = [k for nm in names for k in block_keys(c.source, nm, BS)]
            moved = [k for k in keys if c.node.view.owners(k)[0].id == "c"]
            assert moved
            for name in names:
                assert await c.read(name) == files[name]
                assert await a.read(name) == files[name]
            await trio.sleep(0.2)  # background SSD writes
            # c owns the moved blocks now: it keeps them on SSD, and only those (peer_copy none)
            assert all(_on_ssd(c, k) for k in moved)
            assert not any(_on_ssd(c, k) for k in keys if k not in moved)
            # c's new blocks came from their previous owners: still one source read per block
            assert a.source.total + b.source.total + c.source.total == n
            assert metric("fluidfs_peer_lookups_total", dataset=ds, result="previous") >= len(moved)
            survey = await c.node.survey()
            assert [(r["id"], r["health"]) for r in survey] == [("a", "up"), ("b", "up"), ("c", "up")]
            nursery.cancel_scope.cancel()
        for m in ms.values():
            m.close()

    trio.run(main)


def test_membership_flapping_stays_correct_and_bounded(tmp_path: Path) -> None:
    ds = dataset("flap")
    files = make_files(tmp_path / "data", {f"f{i}.bin": 10 * BS + i for i in range(3)})
    names = list(files)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ms = await _members(nursery, tmp_path, ds, ["a", "b", "c"], ["a", "b", "c"], peer_copy="none")
            entries = [(m.name, m.node.settings.listen) for m in ms.values()]
            n = blocks_in(ms["a"], names)

            flips = 10
            done = trio.Event()

            async def flap() -> None:
                for i in range(flips):
                    now = entries if i % 2 else entries[:2]
                    write_peers(tmp_path / "peers", now)
                    with trio.fail_after(20):  # every view follows each flip (a loaded machine polls late)
                        while any(len(m.node.view.current.members) != len(now) for m in ms.values()):
                            await trio.sleep(0.02)
                    await trio.sleep(0.1)
                done.set()

            async def reader(m: Member) -> None:
                rounds = 0
                while not done.is_set() or rounds == 0:
                    for name in names:
                        assert await m.read(name) == files[name]
                    rounds += 1

            async with trio.open_nursery() as inner:
                inner.start_soon(flap)
                for m in ms.values():
                    inner.start_soon(reader, m)
            total = sum(m.source.total for m in ms.values())
            assert n <= total <= 2 * n, (total, n)
            assert metric("fluidfs_peer_membership_changes_total", dataset=ds) >= flips  # 3 members' views
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_graceful_leave_hands_blocks_to_the_next_owners(tmp_path: Path) -> None:
    ds = dataset("leave")
    files = make_files(tmp_path / "data", {"f1.bin": 16 * BS, "f2.bin": 16 * BS + 3})
    names = list(files)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ms = await _members(
                nursery, tmp_path, ds, ["a", "b", "c"], ["a", "b", "c"], peer_copy="none", ssd_quota=8 * MiB
            )
            a, b, c = ms["a"], ms["b"], ms["c"]
            for name in names:
                assert await a.read(name) == files[name]
            await trio.sleep(0.2)  # background SSD writes
            keys = [k for nm in names for k in block_keys(a.source, nm, BS)]
            b_owned = [k for k in keys if b.node.view.owners(k)[0].id == "b"]
            assert b_owned
            report = await b.node.leave(timeout=10)
            assert report.owned == len(b_owned)
            assert report.pushed + report.present == len(b_owned) and report.failed == report.unsent == 0
            assert metric("fluidfs_peer_handoff_blocks_total", dataset=ds, result="pushed") == report.pushed
            # the member set without b, then b stops; the source goes down everywhere
            write_peers(tmp_path / "peers", [(m.name, m.node.settings.listen) for m in (a, c)])
            with trio.fail_after(5):
                while not all(len(m.node.view.current.members) == 2 for m in (a, c)):
                    await trio.sleep(0.05)
            b.scope.cancel()
            a.source.down = c.source.down = True
            for k in b_owned:
                new_owner = a.node.view.owners(k)[0].id
                assert ms[new_owner].cache.tier_of(k) is not None
            for name in names:
                assert await a.read(name) == files[name]
            nursery.cancel_scope.cancel()
        for m in ms.values():
            m.close()

    trio.run(main)


def test_replicas_keep_k_copies_and_read_the_source_once(tmp_path: Path) -> None:
    ds = dataset("replicas")
    files = make_files(tmp_path / "data", {"f1.bin": 12 * BS, "f2.bin": 12 * BS + 9})
    names = list(files)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ms = await _members(nursery, tmp_path, ds, ["a", "b", "c"], ["a", "b", "c"], replicas=2, ssd_quota=8 * MiB)
            async with trio.open_nursery() as readers:
                for m in ms.values():
                    for name in names:
                        readers.start_soon(_read_and_check, m, name, files[name])
            await trio.sleep(0.2)  # background SSD writes
            keys = [k for nm in names for k in block_keys(ms["a"].source, nm, BS)]
            assert sum(m.source.total for m in ms.values()) == len(keys)
            for k in keys:
                owners = [o.id for o in ms["a"].node.view.owners(k, 2)]
                assert len(owners) == 2
                assert all(_on_ssd(ms[o], k) for o in owners), (k, owners)
            nursery.cancel_scope.cancel()
        for m in ms.values():
            m.close()

    trio.run(main)


def _on_ssd(m: Member, k: BlockKey) -> bool:
    return m.ssd is not None and m.ssd.contains(k)


async def _read_and_check(m: Member, name: str, expected: bytes) -> None:
    assert await m.read(name) == expected


class _FixedSlices:
    """A Kubernetes EndpointSlice adapter double: one slice per member, then an idle watch."""

    def __init__(self, slices: list[Slice]) -> None:
        self.slices = slices

    def list(self) -> tuple[list[Slice], str]:
        return self.slices, "1"

    def watch(self, resource_version: str, timeout_s: int) -> Iterator[SliceEvent]:
        time.sleep(0.05)
        return iter(())


def test_members_found_by_kubernetes_discovery_share_blocks(tmp_path: Path) -> None:
    ds = dataset("kube")
    files = make_files(tmp_path / "data", {"f.bin": 16 * BS})
    ports = free_ports(2)
    slices = [Slice(f"svc-{n}", (SliceEndpoint("127.0.0.1", True, n),), p) for n, p in zip("ab", ports, strict=True)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ms = []
            for n, p in zip("ab", ports, strict=True):
                src = CountingSource(tmp_path / "data")
                asrc = AsyncSource(src, ds, trio.CapacityLimiter(4))
                cache = TieredCache(MemoryTier(16 * MiB), dataset=ds)
                settings = PeerSettings(listen=f"127.0.0.1:{p}", kube_service="ns/svc", member_id=n)
                node = PeerNode(
                    ds, settings, cache, CacheBlockProvider(ds, cache, [asrc]), secret=SECRET,
                    discovery_api=_FixedSlices(slices),
                )  # fmt: skip
                m = Member(n, src, asrc, cache, node, BS)
                await start_member(nursery, m)
                ms.append(m)
            with trio.fail_after(5):
                while not all(len(m.node.view.current.members) == 2 for m in ms):
                    await trio.sleep(0.02)
            for m in ms:
                assert await m.read("f.bin") == files["f.bin"]
            assert sum(m.source.total for m in ms) == 16
            assert all(m.cache.peer_fetches > 0 for m in ms)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_node_without_a_secret_does_not_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUIDFS_PEER_SECRET", raising=False)
    peers = tmp_path / "peers"
    write_peers(peers, [("a", "127.0.0.1:7000")])
    cache = TieredCache(MemoryTier(4 * MiB), dataset="nosecret")
    provider = CacheBlockProvider("nosecret", cache, [])
    with pytest.raises(ConfigError, match="no peer secret"):
        PeerNode("nosecret", PeerSettings(listen="127.0.0.1:7000", peers_file=str(peers)), cache, provider)
    write_peers(peers, [("a", "127.0.0.1:7000"), ("a", "127.0.0.1:7001")])
    with pytest.raises(ConfigError, match=r"peers:3: duplicate member id 'a'"):
        PeerNode("x", PeerSettings(listen="127.0.0.1:7000", peers_file=str(peers)), cache, provider, secret=SECRET)


def test_a_readers_memory_copy_does_not_stop_a_handoff_push(tmp_path: Path) -> None:
    """HEAD (asked before a handoff push) and PUT count the SSD tier only: a block a new owner has only
    as a reader's memory copy (gone at its next restart) is still pushed, and then kept on SSD."""
    ssd = SSDTier(str(tmp_path / "ssd"), 64 * MiB, free_space_floor=0)
    try:
        cache = TieredCache(MemoryTier(8 * MiB), ssd, dataset="prov")
        p = CacheBlockProvider("prov", cache, [], block_size=MiB)
        key = BlockKey("s3://b/x", "v1", MiB, 0)
        assert cache.mem.put(key, b"x" * 100)
        assert cache.tier_of(key) == "mem" and not p.holds(key)
        assert trio.run(p.put_block, key, memoryview(b"x" * 100))
        assert ssd.contains(key) and p.holds(key)
        memory_only = CacheBlockProvider("prov", TieredCache(MemoryTier(8 * MiB), dataset="prov"), [], block_size=MiB)
        assert memory_only.cache.mem.put(key, b"y") and memory_only.holds(key)
    finally:
        ssd.close()


def test_members_weigh_what_they_announce(tmp_path: Path) -> None:
    """A peers file without weights: each member announces its own (``/v1/info``) and every member
    ends up with the same weighted ring."""
    make_files(tmp_path / "data", {"f": 1})
    ds = dataset("weights")

    async def main() -> None:
        ports = free_ports(2)
        addrs = {"big": f"127.0.0.1:{ports[0]}", "small": f"127.0.0.1:{ports[1]}"}
        peers = tmp_path / "peers"
        write_peers(peers, list(addrs.items()))
        async with trio.open_nursery() as nursery:
            ms = {}
            for name, weight in (("big", 300.0), ("small", 100.0)):
                ms[name] = build_member(name, tmp_path / "data", tmp_path, addrs[name], peers, ds, bs=BS, weight=weight)
                await start_member(nursery, ms[name])
            with trio.fail_after(20):
                while any(
                    {m.id: m.weight for m in x.node.view.current.members} != {"big": 300.0, "small": 100.0}
                    for x in ms.values()
                ):
                    await trio.sleep(0.05)
            for x in ms.values():
                assert x.node.view.current.ring.share("big") == pytest.approx(0.75)
                assert x.node.status()["members"][0]["weight"] == 300.0  # type: ignore[index]
            nursery.cancel_scope.cancel()
        for x in ms.values():
            x.close()

    trio.run(main)
