"""The peer server on loopback, driven with raw HTTP: blocks served byte-exact from a real
LocalSource + TieredCache (memory + SSD); unauthenticated, wrongly signed, skewed and replayed
requests get 401 and are never served (logged once per peer); malformed keys, unknown datasets
and URLs outside the dataset get 4xx; pushes are verified before they are admitted."""

from __future__ import annotations

import http.client
import logging
import os
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.cluster.auth import PeerAuth
from fluidfs.cluster.client import PeerClient
from fluidfs.cluster.membership import Member
from fluidfs.cluster.protocol import block_target
from fluidfs.cluster.provider import CacheBlockProvider
from fluidfs.cluster.server import PeerServer
from fluidfs.errors import PeerError
from fluidfs.sources.aio import AsyncSource
from tests.support.cluster_harness import SECRET, CountingSource, block_keys, make_files

BS = 64 * 1024
DS = "srvtest"


class CountingProvider(CacheBlockProvider):
    """Counts the requests that reach the provider (i.e. were authenticated and well formed)."""

    calls = 0

    async def get_block(self, key: BlockKey, *, cached_only: bool = False) -> Buffer | None:
        self.calls += 1
        return await super().get_block(key, cached_only=cached_only)


@dataclass
class Ctx:
    server: PeerServer
    provider: CountingProvider
    source: CountingSource
    cache: TieredCache
    ssd: SSDTier
    files: dict[str, bytes]
    host: str
    port: int
    auth: PeerAuth

    def key(self, name: str, index: int) -> BlockKey:
        return block_keys(self.source, name, BS)[index]

    def target(self, key: BlockKey, mode: str = "fetch", dataset: str = DS) -> str:
        return block_target(dataset, key, mode, 1)

    def _raw(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    async def raw(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        return await trio.to_thread.run_sync(self._raw, method, target, headers or {}, body)

    async def signed(
        self, method: str, target: str, body: bytes | None = None, auth: PeerAuth | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        a = auth or self.auth
        if body is None:
            headers = a.sign(method, target)
        else:
            crc = f"crc32:{zlib.crc32(body):08x}"
            headers = a.sign(method, target, length=len(body), crc=crc)
            headers["x-fluidfs-checksum"] = crc
        return await self.raw(method, target, headers, body)


def run(tmp_path: Path, test: Callable[[Ctx], Awaitable[None]], **server_kw: Any) -> None:
    data = tmp_path / "data"
    files = make_files(data, {"a.bin": 3 * BS + 100, "dir/b.bin": BS, "sp ace%.bin": 2 * BS})
    source = CountingSource(data)
    asource = AsyncSource(source, DS, trio.CapacityLimiter(4))
    ssd = SSDTier(str(tmp_path / "ssd"), 16 << 20, free_space_floor=0)
    cache = TieredCache(MemoryTier(8 << 20), ssd, dataset=DS)
    provider = CountingProvider(DS, cache, [asource], block_size=BS)
    server = PeerServer({DS: provider}, PeerAuth(SECRET, member_id="srv"), listen="127.0.0.1:0", **server_kw)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            cache.start(nursery)
            addr = await nursery.start(server.serve)
            host, _, port = addr.rpartition(":")
            await test(
                Ctx(server, provider, source, cache, ssd, files, host, int(port), PeerAuth(SECRET, member_id="t"))
            )
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        ssd.close()


def test_blocks_are_served_byte_exact_and_single_flight(tmp_path: Path) -> None:
    async def t(c: Ctx) -> None:
        for name in ("a.bin", "dir/b.bin", "sp ace%.bin"):
            got = b""
            for key in block_keys(c.source, name, BS):
                status, headers, body = await c.signed("GET", c.target(key))
                assert status == 200, body
                assert headers["x-fluidfs-key"] == key.digest
                assert headers["x-fluidfs-checksum"] == f"crc32:{zlib.crc32(body):08x}"
                assert headers["x-fluidfs-member"] == "srv"
                got += body
            assert got == c.files[name]
        # a cached lookup of a block never read: 404, and nothing fetched
        before = c.source.total
        c.cache.mem = MemoryTier(c.cache.mem.quota_bytes())  # forget the memory tier: block 0 only on SSD
        status, _, _ = await c.signed("GET", c.target(c.key("a.bin", 0), "cached"))
        assert status == 200  # still on SSD
        status, _, _ = await c.signed("HEAD", c.target(c.key("a.bin", 1)))
        assert status == 200
        # concurrent requests for one uncached block: one source read
        (tmp_path / "data" / "new.bin").write_bytes(os.urandom(BS))
        key = c.key("new.bin", 0)
        status, _, _ = await c.signed("GET", c.target(key, "cached"))
        assert status == 404
        status, _, _ = await c.signed("HEAD", c.target(key))
        assert status == 404
        c.source.delay = 0.2
        results: list[int] = []

        async def one() -> None:
            results.append((await c.signed("GET", c.target(key)))[0])

        async with trio.open_nursery() as n:
            for _ in range(4):
                n.start_soon(one)
        assert results == [200] * 4
        assert c.source.total == before + 1
        # and the client (the production one) verifies and returns the same bytes
        client = PeerClient(c.auth)
        got_view = await client.get(Member.make("srv", f"{c.host}:{c.port}"), DS, c.key("a.bin", 3))
        assert got_view is not None and bytes(got_view) == c.files["a.bin"][3 * BS :]
        client.close()

    run(tmp_path, t)


def test_unauthenticated_requests_get_401_are_never_served_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def t(c: Ctx) -> None:
        target = c.target(c.key("a.bin", 0))
        skewed = PeerAuth(SECRET, member_id="late", clock=lambda: 1_000.0)
        wrong = PeerAuth(b"another-secret-0123456789", member_id="x")
        replay = c.auth.sign("GET", target)
        assert (await c.raw("GET", target, replay))[0] == 200
        calls = c.provider.calls
        with caplog.at_level(logging.WARNING, logger="fluidfs.cluster.auth"):
            for status, _h, body in [
                await c.raw("GET", target),
                await c.signed("GET", target, auth=wrong),
                await c.signed("GET", target, auth=skewed),
                await c.raw("GET", target, replay),
                await c.raw("GET", target.replace("index=0", "index=1"), c.auth.sign("GET", target)),
                await c.raw("HEAD", target),
                await c.raw("PUT", target, {"content-length": "3"}, b"abc"),
                await c.raw("GET", "/v1/info"),
            ]:
                assert status == 401, body
                assert c.files["a.bin"][:64] not in body
        assert c.provider.calls == calls  # none reached the provider
        refusals = [r for r in caplog.records if "refused (401)" in r.getMessage()]
        assert len(refusals) == 1  # once per peer address, then rate-limited
        assert "missing Authorization" in refusals[0].getMessage()

    run(tmp_path, t)


def test_malformed_requests_and_foreign_urls_get_4xx(tmp_path: Path) -> None:
    async def t(c: Ctx) -> None:
        good = c.key("a.bin", 0)
        root = c.source.root
        cases = [
            (c.target(good, dataset="other-ds"), 404),
            (c.target(good).replace("&index=0", ""), 400),
            (c.target(good).replace("index=0", "index=x"), 400),
            (c.target(good).replace("index=0", "index=-1"), 400),
            (c.target(good).replace("bs=65536", "bs=12"), 400),
            (c.target(good).replace("bs=65536", "bs=131072"), 400),  # not this dataset's block size
            (c.target(good).replace("mode=fetch", "mode=push"), 400),
            (c.target(good) + "&index=1", 400),
            (c.target(good) + "&extra=1", 400),
            (c.target(good).replace("url=", "url=%00"), 400),
            ("/v1/block/bad%2Fname?url=x&version=v&bs=65536&index=0", 400),
            ("/v1/nothing", 404),
            (c.target(BlockKey("file:///etc/passwd", good.version, BS, 0)), 403),
            (c.target(BlockKey(f"file://{root}/../etc/passwd", good.version, BS, 0)), 403),
            (c.target(BlockKey(f"file://{root}/dir/../a.bin", good.version, BS, 0)), 403),
            (c.target(BlockKey(f"file://{root}//a.bin", good.version, BS, 0)), 403),
            (c.target(BlockKey(f"file://{root}", good.version, BS, 0)), 403),
            (c.target(BlockKey(f"s3://bucket{root}/a.bin", good.version, BS, 0)), 403),
            (c.target(BlockKey(f"file://{root}/missing.bin", "1-1", BS, 0)), 404),
        ]
        for target, expected in cases:
            status, _, body = await c.signed("GET", target)
            assert status == expected, (target, status, body)
        assert c.provider.calls == 1  # only the missing object reached the source
        status, _, _ = await c.signed("DELETE", c.target(good))
        assert status == 405
        # beyond the end of the object: 404 and nothing cached for it
        beyond = c.key("dir/b.bin", 0)
        beyond = BlockKey(beyond.url, beyond.version, BS, 5)
        assert (await c.signed("GET", c.target(beyond)))[0] == 404
        assert c.cache.tier_of(beyond) is None
        # another version of the object: 409 (the asker reads the source, which says the same)
        stale = BlockKey(good.url, "1-1", BS, 0)
        assert (await c.signed("GET", c.target(stale)))[0] == 409
        # the source down: 502, and the server keeps serving
        c.source.down = True
        assert (await c.signed("GET", c.target(c.key("dir/b.bin", 0))))[0] == 502
        c.source.down = False
        assert (await c.signed("GET", c.target(c.key("dir/b.bin", 0))))[0] == 200
        # a request head larger than the server accepts: 4xx, connection closed
        status, _, _ = await c.raw("GET", "/v1/block/x?" + "a" * 20000)
        assert 400 <= status < 500

    run(tmp_path, t)


def test_pushes_are_verified_before_admission(tmp_path: Path) -> None:
    async def t(c: Ctx) -> None:
        (tmp_path / "data" / "p.bin").write_bytes(os.urandom(BS))
        key = c.key("p.bin", 0)
        payload = (tmp_path / "data" / "p.bin").read_bytes()
        target = c.target(key, "cached")
        # checksum header that does not match the body
        headers = c.auth.sign("PUT", target, length=BS, crc="crc32:00000000")
        headers["x-fluidfs-checksum"] = "crc32:00000000"
        status, _, body = await c.raw("PUT", target, headers, payload)
        assert status == 400 and b"verification" in body
        assert c.cache.tier_of(key) is None
        # a checksum of another algorithm
        headers = c.auth.sign("PUT", target, length=BS, crc="crc32c:00000000")
        headers["x-fluidfs-checksum"] = "crc32c:00000000"
        status, _, body = await c.raw("PUT", target, headers, payload)
        assert status == 400 and b"unsupported" in body
        too_big = payload + b"x"
        status, _, _ = await c.signed("PUT", target, too_big)
        assert status == 413
        status, _, _ = await c.signed("PUT", target, payload)
        assert status == 204
        await trio.sleep(0)
        assert c.ssd.contains(key)
        assert bytes(c.ssd.get(key) or b"") == payload
        # already held: accepted without a second write
        assert (await c.signed("PUT", target, payload))[0] == 204
        # the production client's push and has
        client = PeerClient(c.auth)
        me = Member.make("srv", f"{c.host}:{c.port}")
        assert await client.has(me, DS, key)
        (tmp_path / "data" / "q.bin").write_bytes(os.urandom(1000))
        qkey = c.key("q.bin", 0)
        assert not await client.has(me, DS, qkey)
        assert await client.push(me, DS, qkey, (tmp_path / "data" / "q.bin").read_bytes())
        assert c.ssd.contains(qkey)
        info = await client.info(me)
        assert info["member"] == "srv" and info["datasets"][DS]["ssd_used_bytes"] > 0
        client.close()

    run(tmp_path, t)


def test_a_busy_server_answers_503_quickly(tmp_path: Path) -> None:
    async def t(c: Ctx) -> None:
        c.source.delay = 1.0
        slow = c.target(c.key("a.bin", 1))
        results: dict[str, int] = {}

        async def first() -> None:
            results["first"] = (await c.signed("GET", slow))[0]

        async with trio.open_nursery() as n:
            n.start_soon(first)
            await trio.sleep(0.2)
            t0 = trio.current_time()
            status, _, _ = await c.signed("GET", c.target(c.key("a.bin", 2)))
            results["second"] = status
            assert trio.current_time() - t0 < 0.9
        assert results == {"first": 200, "second": 503}
        client = PeerClient(c.auth)
        c.source.delay = 0.5
        async with trio.open_nursery() as n:
            n.start_soon(c.signed, "GET", c.target(c.key("a.bin", 3)))
            await trio.sleep(0.1)
            with pytest.raises(PeerError) as err:
                await client.get(Member.make("srv", f"{c.host}:{c.port}"), DS, c.key("dir/b.bin", 0))
        assert err.value.reason == "busy"
        client.close()

    run(tmp_path, t, max_transfers=1, queue_timeout=0.2)
