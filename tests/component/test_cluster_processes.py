"""Members as separate processes on loopback (each its own TieredCache, peer server and source
counter): three members reading the same files fetch each block from the source once for the
whole cluster; with the source down, blocks cached anywhere are still served to every member;
a member killed with SIGKILL while serving costs a refetch, never a read error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_harness import KiB, MemberProcess, free_ports, make_files, sha256, write_peers

BS = 128 * KiB


def start(tmp_path: Path, names: list[str], extra: dict[str, dict[str, Any]] | None = None) -> dict[str, MemberProcess]:
    ports = free_ports(len(names))
    addrs = {n: f"127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)}
    peers = tmp_path / "peers"
    write_peers(peers, [(n, addrs[n]) for n in names])
    procs: dict[str, MemberProcess] = {}
    try:
        for n in names:
            args: dict[str, Any] = {
                "name": n,
                "root": str(tmp_path / "data"),
                "work": str(tmp_path),
                "listen": addrs[n],
                "peers": str(peers),
                "dataset": "procs",
                "bs": BS,
                "settings": {"connect_timeout": 0.5, "read_timeout": 2.0, "fetch_timeout": 5.0},
            }
            args.update((extra or {}).get(n, {}))
            procs[n] = MemberProcess(args, log_path=tmp_path / f"{n}.log")
    except BaseException:
        for p in procs.values():
            p.kill()
        raise
    return procs


def test_three_members_fetch_each_block_from_the_source_once(tmp_path: Path) -> None:
    files = make_files(tmp_path / "data", {f"shard-{i}.bin": 12 * BS + 1000 * i for i in range(4)})
    later = make_files(tmp_path / "data", {"later.bin": 10 * BS + 5}, seed=2)
    nblocks = sum(-(-len(d) // BS) for d in files.values())
    procs = start(tmp_path, ["a", "b", "c"])
    try:
        names = sorted(files)
        # everyone reads every file at once, each member in another order
        for i, p in enumerate(procs.values()):
            p.send("read_all", paths=names[i:] + names[:i])
        for p in procs.values():
            got = p.reply(60)
            assert got == {n: {"sha256": sha256(files[n]), "size": len(files[n])} for n in names}
        stats = {n: p.call("stats") for n, p in procs.items()}
        assert sum(s["source_reads"] for s in stats.values()) == nblocks, stats
        assert all(s["peer_fetches"] > 0 for s in stats.values())
        # a file read by one member only, then the source goes down everywhere
        assert procs["a"].call("read", path="later.bin")["sha256"] == sha256(later["later.bin"])
        for p in procs.values():
            p.call("source", down=True)
        for p in procs.values():
            for name in [*names, "later.bin"]:
                want = files.get(name) or later[name]
                assert p.call("read", path=name)["sha256"] == sha256(want), name
        total = sum(p.call("stats")["source_reads"] for p in procs.values())
        assert total == nblocks + -(-len(later["later.bin"]) // BS)
    finally:
        for p in procs.values():
            p.stop()


def test_a_member_killed_mid_transfer_costs_a_refetch_not_an_error(tmp_path: Path) -> None:
    files = make_files(tmp_path / "data", {"big.bin": 24 * BS})
    procs = start(tmp_path, ["a", "b", "c"], {"b": {"source_delay": 0.3}})
    try:
        procs["a"].send("read", path="big.bin", concurrency=4)
        time.sleep(0.4)  # a has requests in flight to b, which is fetching from its slow source
        t0 = time.monotonic()
        procs["b"].kill()
        got = procs["a"].reply(60)
        assert got["sha256"] == sha256(files["big.bin"])
        assert time.monotonic() - t0 < 20
        stats = procs["a"].call("stats")
        breaker = {m["id"]: m["breaker"] for m in stats["status"]["members"]}
        assert breaker["b"] in ("open", "half-open")
        # c still serves what it owns; a serves again after b is gone
        assert procs["c"].call("read", path="big.bin")["sha256"] == sha256(files["big.bin"])
    finally:
        for p in procs.values():
            p.stop()


@pytest.mark.parametrize("bad", ["self-only", "unreachable"])
def test_odd_peer_lists_still_serve_reads(tmp_path: Path, bad: str) -> None:
    """A peers file naming only the member itself, or members that are not there."""
    files = make_files(tmp_path / "data", {"f.bin": 8 * BS})
    (port, dead1, dead2) = free_ports(3)
    peers = tmp_path / "peers"
    entries = [("a", f"127.0.0.1:{port}")]
    if bad == "unreachable":
        entries += [("gone-1", f"127.0.0.1:{dead1}"), ("gone-2", f"127.0.0.1:{dead2}")]
    write_peers(peers, entries)
    p = MemberProcess(
        {
            "name": "a",
            "root": str(tmp_path / "data"),
            "work": str(tmp_path),
            "listen": f"127.0.0.1:{port}",
            "peers": str(peers),
            "dataset": "odd",
            "bs": BS,
            "settings": {"connect_timeout": 0.5},
        },
        log_path=tmp_path / "a.log",
    )
    try:
        assert p.call("read", path="f.bin")["sha256"] == sha256(files["f.bin"])
        stats = p.call("stats")
        assert stats["source_reads"] == 8 and stats["status"]["self"] == "a"
    finally:
        p.stop()
