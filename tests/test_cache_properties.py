"""Property tests (hypothesis) of the whole read path against a reference model: random
interleavings of reads at random offsets and sizes, from many trio tasks at once, over several
files, through a tiny MEM tier and a tiny SSD tier (so both evict or refuse all the time),
with readahead and background SSD writes running, always return the source's bytes — and
the quotas hold after every read.  The reference model is simply the source's bytes."""

from __future__ import annotations

import os
import tempfile

import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fluidfs.cache.base import BlockKey
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.errors import VersionChangedError
from fluidfs.testing import CountingSource, MemorySource
from tests.test_cache_tiered import (
    block_disk_size,
    blob,
    check_quotas,
    make_vfs_with_cache,
    resolve,
    unique_dataset,
)

BS = 8 * 1024  # tiny blocks: many blocks per file, many evictions per example

file_sizes = st.lists(st.integers(min_value=0, max_value=6 * BS + 100), min_size=0, max_size=4)
read_op = st.tuples(
    st.integers(min_value=0, max_value=4),  # file (modulo the number of files; "big" is first)
    st.integers(min_value=0, max_value=7 * BS),  # offset (past EOF too)
    st.sampled_from([1, 100, 4096, BS - 1, BS, BS + 1, 3 * BS, 8 * BS]),  # size
    st.booleans(),  # continue sequentially from the previous read (grows readahead)
)
task_ops = st.lists(read_op, min_size=3, max_size=12)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    sizes=file_sizes,
    tasks=st.lists(task_ops, min_size=2, max_size=8),
    mem_blocks=st.integers(min_value=1, max_value=3),
    ssd_blocks=st.integers(min_value=1, max_value=5),
    mem_policy=st.sampled_from(["lru", "none"]),
    ssd_policy=st.sampled_from(["lru", "none"]),
    readahead_blocks=st.integers(min_value=0, max_value=4),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_random_concurrent_reads_return_source_bytes(
    sizes: list[int],
    tasks: list[list[tuple[int, int, int, bool]]],
    mem_blocks: int,
    ssd_blocks: int,
    mem_policy: str,
    ssd_policy: str,
    readahead_blocks: int,
    seed: int,
) -> None:
    files = {f"d{i % 2}/f{i}": blob(n, seed * 10 + i) for i, n in enumerate(sizes)}
    files["big"] = blob(6 * BS + seed, seed)  # always more blocks than both tiers hold
    names = sorted(files)
    counting = CountingSource(MemorySource(files))
    ds = unique_dataset("prop")
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fluidfs-prop-") as tmp:
        ssd = SSDTier(
            tmp,
            ssd_blocks * block_disk_size("memory:///d0/f0", "v1", BS),
            eviction=ssd_policy,  # type: ignore[arg-type]
            free_space_floor=0,
        )
        cache = TieredCache(MemoryTier(mem_blocks * BS, mem_policy), ssd, dataset=ds, ssd_write_slots=2)
        vfs = make_vfs_with_cache(
            {"/": counting},
            cache,
            block_size=BS,
            dataset=ds,
            readahead=readahead_blocks * BS,
            prefetch_memory=2 * BS * readahead_blocks,
        )

        async def reader(ops: list[tuple[int, int, int, bool]]) -> None:
            handles: dict[str, int] = {}
            pos: dict[str, int] = {}
            for file_i, offset, size, sequential in ops:
                name = names[file_i % len(names)]
                if name not in handles:
                    handles[name], _ = await vfs.open(await resolve(vfs, "/" + name), os.O_RDONLY)
                if sequential:
                    offset = pos.get(name, 0)
                got = bytes(await vfs.read(handles[name], offset, size))
                want = files[name][offset : offset + size]
                if got != want:
                    errors.append(f"{name}[{offset}:+{size}]: got {len(got)} bytes, differing from the source")
                pos[name] = offset + len(got)
                errors.extend(check_quotas(cache))
                await trio.sleep(0)  # let other tasks interleave between reads
            for fh in handles.values():
                vfs.release(fh)

        async def main() -> None:
            async with trio.open_nursery() as background:
                cache.start(background)
                vfs.prefetcher.start(background)
                async with trio.open_nursery() as readers:
                    for ops in tasks:
                        readers.start_soon(reader, ops)
            # every background write and prefetch has finished

        try:
            trio.run(main)
            assert not errors, errors[:5]
            assert not check_quotas(cache)
            s = ssd.stats()
            assert s["corrupt"] == 0 and s["errors"] == 0
            event(f"ssd {ssd_policy}: evicted={s['evictions'] > 0} rejected={s['rejected'] > 0}")
            assert SSDTier.inspect(tmp).tmp_files == 0
            # whatever the tiers kept is the source's bytes under the right key
            for name, data in files.items():
                version = counting.stat(name).version
                for index in range(-(-len(data) // BS)):
                    key = BlockKey(counting.url(name), version, BS, index)
                    for got in (cache.mem.get(key), ssd.get(key)):
                        assert got is None or bytes(got) == data[index * BS : (index + 1) * BS]
        finally:
            ssd.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(min_value=1, max_value=5 * BS),
    reads_before=st.lists(st.tuples(st.integers(0, 5 * BS), st.integers(1, 2 * BS)), min_size=1, max_size=5),
    reads_after=st.lists(st.tuples(st.integers(0, 5 * BS), st.integers(1, 2 * BS)), min_size=1, max_size=5),
    mem_blocks=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_changed_object_never_mixes_versions(
    size: int,
    reads_before: list[tuple[int, int]],
    reads_after: list[tuple[int, int]],
    mem_blocks: int,
    seed: int,
) -> None:
    """A handle opened before the object changed returns old bytes or fails (VersionChanged →
    EIO), never new or mixed bytes; a handle opened after the metadata TTL reads the new bytes."""
    old, new = blob(size, seed), blob(size + seed % 3, seed + 1)
    src = MemorySource({"f": old})
    ds = unique_dataset("ver")
    with tempfile.TemporaryDirectory(prefix="fluidfs-ver-") as tmp:
        ssd = SSDTier(tmp, 4 * block_disk_size("memory:///f", "v1", BS), eviction="lru", free_space_floor=0)
        cache = TieredCache(MemoryTier(mem_blocks * BS, "lru"), ssd, dataset=ds)
        vfs = make_vfs_with_cache({"/": src}, cache, block_size=BS, dataset=ds, metadata_ttl=0.0, prefetch_memory=0)

        async def main() -> None:
            ino = await resolve(vfs, "/f")
            fh_old, _ = await vfs.open(ino, os.O_RDONLY)
            for off, n in reads_before:
                assert bytes(await vfs.read(fh_old, off, n)) == old[off : off + n]
            src.put("f", new)
            for off, n in reads_after:
                try:
                    got = bytes(await vfs.read(fh_old, off, n))
                except VersionChangedError:
                    continue
                assert got == old[off : off + n], "an old handle served bytes of the new version"
            fh_new, _ = await vfs.open(ino, os.O_RDONLY)
            for off, n in reads_before + reads_after:
                assert bytes(await vfs.read(fh_new, off, n)) == new[off : off + n]
            vfs.release(fh_old)
            vfs.release(fh_new)

        try:
            trio.run(main)
        finally:
            ssd.close()
