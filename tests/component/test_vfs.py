"""VFS operations driven directly (no kernel): union, lookups, listings with stable offsets,
reads, the metadata cache, versions, single-flight and outages."""

from __future__ import annotations

import errno
import math
import os
import random

import pytest
import trio

from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.config import MountConfig
from fluidfs.errors import FsOpError, NotFoundError, UnavailableError, VersionChangedError
from fluidfs.fs.namespace import ROOT_INODE, MountRef, Namespace
from fluidfs.fs.vfs import Vfs
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Source
from fluidfs.spec.model import MountSpec
from tests.support.doubles import CountingSource, FlakySource, MemorySource

MiB = 1 << 20


def make_vfs(mounts: dict[str, Source], **cfg_kw: object) -> Vfs:
    cfg_kw.setdefault("memory_size", 64 * MiB)
    cfg = MountConfig(block_size=1 * MiB, metrics_addr=None, **cfg_kw)  # type: ignore[arg-type]
    limiter = trio.CapacityLimiter(8)
    refs = [
        MountRef(
            MountSpec(name=f"m{i}", url=f"memory:///{i}", scheme="file", path=path), AsyncSource(src, "t", limiter)
        )
        for i, (path, src) in enumerate(mounts.items())
    ]
    ns = Namespace(refs, "t", cfg.metadata_ttl, cfg.negative_ttl)
    cache = TieredCache(MemoryTier(cfg.memory_size, cfg.eviction), None, dataset="t")
    return Vfs(ns, cache, cfg, "t")


async def resolve(vfs: Vfs, path: str) -> int:
    inode = ROOT_INODE
    for part in [p for p in path.split("/") if p]:
        inode = (await vfs.lookup(inode, part)).inode
    return inode


async def listdir(vfs: Vfs, inode: int) -> list[str]:
    fh = await vfs.opendir(inode)
    names = [name async for name, _a, _n in vfs.readdir(fh, 0)]
    vfs.releasedir(fh)
    assert names[:2] == [".", ".."]
    return names[2:]


async def read_file(vfs: Vfs, inode: int, chunk: int = 128 * 1024) -> bytes:
    fh, _ = await vfs.open(inode, os.O_RDONLY)
    out = bytearray()
    off = 0
    while True:
        data = await vfs.read(fh, off, chunk)
        if not data:
            break
        out += data
        off += len(data)
    vfs.release(fh)
    return bytes(out)


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def test_union_of_mounts_and_attributes() -> None:
    a = MemorySource({"x.txt": b"hello", "d/y.bin": blob(3 * MiB + 7)})
    b = MemorySource({"z": b""})

    async def main() -> None:
        vfs = make_vfs({"/a": a, "/b/c": b})
        assert sorted(await listdir(vfs, ROOT_INODE)) == ["a", "b"]
        assert await listdir(vfs, await resolve(vfs, "/b")) == ["c"]
        assert sorted(await listdir(vfs, await resolve(vfs, "/a"))) == ["d", "x.txt"]
        attr = await vfs.getattr(await resolve(vfs, "/a/d/y.bin"))
        assert attr.size == 3 * MiB + 7 and not (attr.mode & 0o222)
        assert await read_file(vfs, await resolve(vfs, "/a/d/y.bin")) == a.read("d/y.bin", 0, 4 * MiB)
        assert await read_file(vfs, await resolve(vfs, "/b/c/z")) == b""
        # stable inodes
        assert await resolve(vfs, "/a/x.txt") == await resolve(vfs, "/a/x.txt")
        with pytest.raises(NotFoundError):
            await resolve(vfs, "/nope")
        with pytest.raises(NotFoundError):
            await resolve(vfs, "/a/nope")

    trio.run(main)


def test_errors_for_writes_and_wrong_types() -> None:
    src = MemorySource({"f": b"1", "d/g": b"2"})

    async def main() -> None:
        vfs = make_vfs({"/": src})
        f, d = await resolve(vfs, "/f"), await resolve(vfs, "/d")
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
            with pytest.raises(FsOpError) as ei:
                await vfs.open(f, flags)
            assert ei.value.errno == errno.EROFS
        with pytest.raises(FsOpError) as ei:
            await vfs.open(d, os.O_RDONLY)
        assert ei.value.errno == errno.EISDIR
        with pytest.raises(FsOpError) as ei:
            await vfs.opendir(f)
        assert ei.value.errno == errno.ENOTDIR
        with pytest.raises(FsOpError) as ei:
            await vfs.read(999, 0, 10)
        assert ei.value.errno == errno.EBADF

    trio.run(main)


def test_readdir_offsets_are_stable_and_complete() -> None:
    src = MemorySource({f"big/f{i:05d}": b"x" for i in range(2500)}, page_size=300)

    async def main() -> None:
        vfs = make_vfs({"/": src})
        d = await resolve(vfs, "/big")
        fh = await vfs.opendir(d)
        first: list[tuple[str, int]] = []
        async for name, _a, nxt in vfs.readdir(fh, 0):
            first.append((name, nxt))
            if len(first) == 1234:
                break
        rest = [name async for name, _a, _n in vfs.readdir(fh, first[-1][1])]
        again = [name async for name, _a, _n in vfs.readdir(fh, 500)]
        from_one = [name async for name, _a, _n in vfs.readdir(fh, 1)]
        vfs.releasedir(fh)
        names = [n for n, _ in first] + rest
        assert names == [".", ".."] + [f"f{i:05d}" for i in range(2500)]
        assert again == names[500:]
        assert from_one == names[1:]

    trio.run(main)


def test_reads_at_random_offsets_and_past_eof() -> None:
    data = blob(5 * MiB + 123, seed=1)
    src = MemorySource({"f": data})

    async def main() -> None:
        vfs = make_vfs({"/": src})
        fh, _ = await vfs.open(await resolve(vfs, "/f"), os.O_RDONLY)
        rng = random.Random(3)
        for _ in range(200):
            off = rng.randrange(0, len(data) + 10)
            size = rng.choice([1, 4096, 65536, 131072, 1 << 20, 3 << 20])
            assert bytes(await vfs.read(fh, off, size)) == data[off : off + size]
        assert await vfs.read(fh, len(data), 10) == b""
        assert await vfs.read(fh, len(data) + 100, 10) == b""

    trio.run(main)


def test_single_flight_one_source_read_for_32_readers() -> None:
    src = CountingSource(FlakySource(MemorySource({"f": blob(MiB)}), delay=0.05))

    async def main() -> None:
        vfs = make_vfs({"/": src}, prefetch_memory=0)
        ino = await resolve(vfs, "/f")
        results: list[bytes] = []

        async def reader() -> None:
            fh, _ = await vfs.open(ino, os.O_RDONLY)
            results.append(bytes(await vfs.read(fh, 4096, 4096)))

        async with trio.open_nursery() as n:
            for _ in range(32):
                n.start_soon(reader)
        assert len(results) == 32 and len(set(results)) == 1
        assert src.calls["read"] == 1

    trio.run(main)


def test_metadata_ttl_negative_cache_and_changes() -> None:
    mem = MemorySource({"a": b"old"})
    src = CountingSource(mem)

    async def main() -> None:
        vfs = make_vfs({"/": src}, metadata_ttl=0.3, negative_ttl=0.3)
        with pytest.raises(NotFoundError):
            await resolve(vfs, "/missing")
        stats = src.calls["stat"]
        with pytest.raises(NotFoundError):
            await resolve(vfs, "/missing")
        assert src.calls["stat"] == stats  # negative cache answered
        ino = await resolve(vfs, "/a")
        assert await read_file(vfs, ino) == b"old"
        mem.put("a", b"new content")
        mem.put("missing", b"now here")
        assert (await vfs.getattr(ino)).size == 3  # within TTL: cached attributes
        await trio.sleep(0.35)
        assert (await vfs.getattr(ino)).size == len(b"new content")
        assert await read_file(vfs, ino) == b"new content"
        assert await read_file(vfs, await resolve(vfs, "/missing")) == b"now here"

    trio.run(main)


def test_indefinite_ttl_never_revalidates() -> None:
    mem = MemorySource({"a": b"old"})
    src = CountingSource(mem)

    async def main() -> None:
        vfs = make_vfs({"/": src}, metadata_ttl=math.inf)
        ino = await resolve(vfs, "/a")
        calls = src.calls["stat"]
        mem.put("a", b"changed")
        for _ in range(3):
            assert (await vfs.getattr(ino)).size == 3
        assert src.calls["stat"] == calls

    trio.run(main)


def test_open_handle_never_mixes_versions() -> None:
    old, new = blob(3 * MiB, 1), blob(3 * MiB, 2)
    mem = MemorySource({"f": old})

    async def main() -> None:
        vfs = make_vfs({"/": mem}, metadata_ttl=0.0, prefetch_memory=0)
        ino = await resolve(vfs, "/f")
        fh, _ = await vfs.open(ino, os.O_RDONLY)
        assert bytes(await vfs.read(fh, 0, 1000)) == old[:1000]
        mem.put("f", new)
        # block 0 is cached: still the old version; block 2 was never fetched: refused
        assert bytes(await vfs.read(fh, 1000, 1000)) == old[1000:2000]
        with pytest.raises(VersionChangedError):
            await vfs.read(fh, 2 * MiB, 1000)
        vfs.release(fh)
        # a new open sees the new version, and the kernel page cache is dropped for it
        fh2, keep = await vfs.open(ino, os.O_RDONLY)
        assert not keep
        assert bytes(await vfs.read(fh2, 0, 3 * MiB)) == new

    trio.run(main)


def test_source_outage_gives_error_then_recovers() -> None:
    flaky = FlakySource(MemorySource({"f": blob(2 * MiB), "g": b"g"}))

    async def main() -> None:
        vfs = make_vfs({"/": flaky}, metadata_ttl=0.0, prefetch_memory=0)
        ino = await resolve(vfs, "/f")
        flaky.broken.set()
        # stale-if-error: known attributes are still served, uncached bytes fail
        assert (await vfs.getattr(ino)).size == 2 * MiB
        with pytest.raises(UnavailableError):
            await read_file(vfs, ino)
        with pytest.raises(UnavailableError):
            await resolve(vfs, "/never-seen")
        flaky.broken.clear()
        assert len(await read_file(vfs, ino)) == 2 * MiB

    trio.run(main)


def test_sequential_reads_trigger_readahead() -> None:
    src = CountingSource(MemorySource({"f": blob(16 * MiB)}))

    async def main() -> None:
        vfs = make_vfs({"/": src}, readahead=8 * MiB, prefetch_memory=32 * MiB)
        ino = await resolve(vfs, "/f")
        async with trio.open_nursery() as n:
            vfs.prefetcher.start(n)
            vfs.cache.start(n)
            fh, _ = await vfs.open(ino, os.O_RDONLY)
            await vfs.read(fh, 0, 128 * 1024)
            await vfs.read(fh, 128 * 1024, 128 * 1024)
            await trio.sleep(0.2)
            # blocks beyond the one read were fetched in the background
            assert len({start for _p, start, _e in src.reads}) > 1
            n.cancel_scope.cancel()

    trio.run(main)


def test_xattrs() -> None:
    src = MemorySource({"d/f": b"abc"})

    async def main() -> None:
        vfs = make_vfs({"/m": src})
        ino = await resolve(vfs, "/m/d/f")
        assert await vfs.getxattr(ino, b"user.fluidfs.source") == b"memory:///d/f"
        assert b"user.fluidfs.source" in await vfs.listxattr(ino)
        await read_file(vfs, ino)
        assert await vfs.getxattr(ino, b"user.fluidfs.cached") == b"1.0000"
        with pytest.raises(FsOpError) as ei:
            await vfs.getxattr(ino, b"user.other")
        assert ei.value.errno == errno.ENODATA
        assert await vfs.listxattr(ROOT_INODE) == []

    trio.run(main)


def test_stat_matches_source_exactly() -> None:
    # mtimes and sizes are exactly the source's
    src = MemorySource({"f": b"12345"})

    async def main() -> None:
        vfs = make_vfs({"/": src})
        a = await vfs.getattr(await resolve(vfs, "/f"))
        e = src.stat("f")
        assert a.size == 5 and a.mtime_ns == int(round(e.mtime * 1e9))

    trio.run(main)


def test_small_file_open_prefetches_siblings() -> None:
    files = {f"cls/img{i:03d}.jpg": blob(50_000, i) for i in range(40)}
    src = CountingSource(MemorySource(files))

    async def main() -> None:
        vfs = make_vfs({"/": src}, sibling_prefetch=8, prefetch_memory=64 * MiB)
        async with trio.open_nursery() as n:
            vfs.prefetcher.start(n)
            d = await resolve(vfs, "/cls")
            await listdir(vfs, d)
            ino = await resolve(vfs, "/cls/img017.jpg")
            assert await read_file(vfs, ino) == files["cls/img017.jpg"]
            await trio.sleep(0.2)
            fetched = {p for p, _s, _e in src.reads}
            assert len(fetched) >= 8  # siblings arrived in the background
            reads = src.calls["read"]
            for p in sorted(fetched)[:5]:
                assert await read_file(vfs, await resolve(vfs, "/" + p)) == files[p]
            n.cancel_scope.cancel()
        # each prefetched sibling was fetched exactly once
        assert len(src.reads) == len({p for p, _s, _e in src.reads})
        assert reads <= src.calls["read"]

    trio.run(main)


def test_lookups_without_listing_list_the_directory_once() -> None:
    files = {f"d/f{i:03d}": b"x" for i in range(300)}
    src = CountingSource(MemorySource(files, page_size=100))

    async def main() -> None:
        vfs = make_vfs({"/": src}, metadata_ttl=60.0)
        d = await resolve(vfs, "/d")
        before = dict(src.calls)
        for i in range(0, 300, 7):
            assert (await vfs.lookup(d, f"f{i:03d}")).size == 1
        with pytest.raises(NotFoundError):
            await vfs.lookup(d, "missing")
        stats = src.calls["stat"] - before.get("stat", 0)
        lists = src.calls["list"] - before.get("list", 0)
        assert stats == 1 and lists == 1, dict(src.calls)  # not one request per name

    trio.run(main)


def test_listing_a_directory_prefetches_its_subdirectories() -> None:
    files = {f"c{i:02d}/f{j}": b"x" for i in range(20) for j in range(5)}
    src = CountingSource(MemorySource(files))

    async def main() -> None:
        vfs = make_vfs({"/": src}, metadata_ttl=60.0)
        async with trio.open_nursery() as n:
            vfs.ns.start(n)
            assert len(await listdir(vfs, ROOT_INODE)) == 20
            await trio.sleep(0.3)
            lists = src.calls["list"]
            assert lists == 21  # the root, then every class directory in the background
            for i in range(20):
                assert len(await listdir(vfs, await resolve(vfs, f"/c{i:02d}"))) == 5
            assert src.calls["list"] == lists  # the walk itself sent no request
            n.cancel_scope.cancel()

    trio.run(main)


def test_readahead_is_not_lost_when_the_memory_tier_is_full_under_none() -> None:
    data = blob(24 * MiB, 5)
    src = CountingSource(MemorySource({"f": data}))

    async def main() -> None:
        # memory-only, policy none, memory 4 blocks: the tier fills and stops admitting
        vfs = make_vfs({"/": src}, eviction="none", memory_size=4 * MiB, readahead=8 * MiB, prefetch_memory=16 * MiB)
        ino = await resolve(vfs, "/f")
        async with trio.open_nursery() as n:
            vfs.prefetcher.start(n)
            fh, _ = await vfs.open(ino, os.O_RDONLY)
            out = bytearray()
            off = 0
            while chunk := await vfs.read(fh, off, 1 << 20):
                out += chunk
                off += len(chunk)
                await trio.sleep(0.001)
            n.cancel_scope.cancel()
        assert bytes(out) == data
        starts = [start for _p, start, _e in src.reads]
        assert len(starts) == len(set(starts)) == 24  # every block fetched once: no prefetch thrown away

    trio.run(main)
