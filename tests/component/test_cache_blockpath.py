"""The zero-copy block path: block files read with ``preadv`` into pooled buffers (large payloads at
an aligned offset, with ``O_DIRECT``), checked with zlib-ng's CRC-32 (the same values); format 1
files of the previous version still served; the memory tier adopting buffers instead of copying
them, SSD promotions and FUSE-bound reads sharing one buffer, and the pool staying bounded while
the memory tier evicts."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import struct
import zlib
from pathlib import Path

import pytest
import trio

from fluidfs.cache import blockfile
from fluidfs.cache.base import BlockKey
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.util import buffers
from tests.support.cache import make_vfs_with_cache, resolve, unique_dataset
from tests.support.doubles import MemorySource

MiB = 1 << 20

#: a block file written by the previous implementation (format 1: stdlib zlib CRC-32, os.writev):
#: caches written before stay valid
OLD_KEY = BlockKey("s3://bucket/dir/shard-0001.tar", '"9b2cf535f27731c974343645a3985328"', 4096, 3)
OLD_PAYLOAD = b"fluidfs block payload\n" * 3
OLD_FILE = bytes.fromhex(
    "464c4653424c4b3101000000980000005feec9cfed3ad4d89942b96188a3e20b2f93d30e24e604ffaf16afeabe9ab2c3"
    "001000000000000003000000000000004200000000000000513a0adc1e000000220000008252f45173333a2f2f627563"
    "6b65742f6469722f73686172642d303030312e74617222396232636635333566323737333163393734333433363435613"
    "339383533323822666c756964667320626c6f636b207061796c6f61640a666c756964667320626c6f636b207061796c6f"
    "61640a666c756964667320626c6f636b207061796c6f61640a"
)


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("size", [0, 1, 5 * 1024, 5 * 1024 + 1, MiB + 3, 4 * MiB])
def test_checksum_is_zlib_crc32_whole_and_piecewise(size: int) -> None:
    data = blob(size, size)
    assert blockfile.checksum(data) == zlib.crc32(data)
    view = memoryview(bytearray(data))  # peers checksum views of their receive buffer
    running = 0
    for i in range(0, size, 65536 + 7):
        running = blockfile.checksum(view[i : i + 65536 + 7], running)
    assert running == zlib.crc32(data)


def v1_file(key: BlockKey, payload: bytes) -> bytes:
    """A block file in format version 1 (unpadded header), as the previous writer made it."""
    url, version = key.url.encode(), key.version.encode()
    header_len = 88 + len(url) + len(version)
    fixed = struct.pack(
        "<8sHHI32sQQQIIII",
        b"FLFSBLK1",
        1,
        0,
        header_len,
        bytes.fromhex(key.digest),
        key.block_size,
        key.index,
        len(payload),
        zlib.crc32(payload),
        len(url),
        len(version),
        0,
    )
    crc = zlib.crc32(url + version, zlib.crc32(fixed))
    return fixed[:84] + struct.pack("<I", crc) + url + version + payload


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("size", [0, 100, blockfile.DIRECT_MIN - 1, blockfile.DIRECT_MIN, 4 * MiB])
def test_format_1_files_stay_readable(tmp_path: Path, size: int, direct: bool) -> None:
    assert v1_file(OLD_KEY, OLD_PAYLOAD) == OLD_FILE  # the helper writes what the old writer wrote
    (tmp_path / "old").write_bytes(OLD_FILE)
    assert bytes(blockfile.read_block(str(tmp_path / "old"), OLD_KEY, direct=direct)) == OLD_PAYLOAD
    key = BlockKey("s3://b/k", "v1", 4 * MiB, 1)
    data = blob(size, 7)
    (tmp_path / "v1").write_bytes(v1_file(key, data))
    assert bytes(blockfile.read_block(str(tmp_path / "v1"), key, direct=direct)) == data
    if size:
        bad = bytearray(v1_file(key, data))
        bad[-1] ^= 1
        (tmp_path / "bad").write_bytes(bad)
        with pytest.raises(blockfile.BlockFormatError):
            blockfile.read_block(str(tmp_path / "bad"), key, direct=direct)


def test_new_files_are_format_2_with_large_payloads_at_an_aligned_offset(tmp_path: Path) -> None:
    blockfile.write_file(str(tmp_path / "small"), OLD_KEY, OLD_PAYLOAD)
    small = (tmp_path / "small").read_bytes()
    assert small[8:10] == (2).to_bytes(2, "little")  # format 2, otherwise the same bytes but the header CRC
    assert small[:8] == OLD_FILE[:8] and small[10:84] == OLD_FILE[10:84] and small[88:] == OLD_FILE[88:]
    key = BlockKey("s3://b/k", "v1", 4 * MiB, 0)
    unpadded = blockfile.FIXED_LEN + len(key.url) + len(key.version)
    for size in (blockfile.DIRECT_MIN, 3 * MiB + 5, 4 * MiB):
        data = blob(size, size)
        blockfile.write_file(str(tmp_path / "large"), key, data)
        raw = (tmp_path / "large").read_bytes()
        h = blockfile.decode_header(raw)
        assert h.header_len == blockfile.ALIGN == blockfile.header_size(key, size) and h.payload_len == size
        assert not any(raw[unpadded : h.header_len])  # zero padding
        assert raw[h.header_len :] == data
        assert blockfile.encoded_size(key, size) == len(raw)
        (tmp_path / "large").unlink()
    assert blockfile.FORMAT_VERSION == 2 and blockfile.CHECKSUM_NAME == "crc32"


SIZES = [0, 100, blockfile.DIRECT_MIN - 1, blockfile.DIRECT_MIN, blockfile.DIRECT_MIN + 1, 3 * MiB + 5, 4 * MiB]


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_read_block_returns_a_read_only_view_of_exactly_the_payload(tmp_path: Path, size: int, direct: bool) -> None:
    key = BlockKey("s3://b/k", "v1", 4 * MiB, 2)
    data = blob(size, 1)
    blockfile.write_file(str(tmp_path / "f"), key, data)
    got = blockfile.read_block(str(tmp_path / "f"), key, direct=direct)
    assert got.readonly and got.format == "B" and got.nbytes == size
    assert bytes(got) == data
    if size == 4 * MiB:  # a full block: a pooled, huge-page buffer (no bytes object in between)
        assert got.obj.__class__.__name__ == "mmap"


def _corruptions(raw: bytes) -> dict[str, bytes]:
    hlen = blockfile.decode_header(raw).header_len
    flipped = bytearray(raw)
    flipped[hlen + 10] ^= 0x40
    last = bytearray(raw)
    last[hlen - 1] ^= 1  # the last header byte: padding in a large block
    return {
        "empty": b"",
        "header only": raw[:hlen],
        "truncated payload": raw[:-1],
        "extended": raw + b"\0",
        "extended by a page": raw + bytes(blockfile.ALIGN),
        "payload bit flip": bytes(flipped),
        "header bit flip": raw[:20] + bytes([raw[20] ^ 1]) + raw[21:],
        "last header byte flip": bytes(last),
        "format 1 label": raw[:8] + b"\1" + raw[9:],
    }


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("size", [5000, blockfile.DIRECT_MIN, 2 * MiB])
def test_read_block_rejects_every_damaged_file(tmp_path: Path, size: int, direct: bool) -> None:
    key = BlockKey("s3://b/k", "v1", 2 * MiB, 0)
    blockfile.write_file(str(tmp_path / "good"), key, blob(size, 2))
    raw = (tmp_path / "good").read_bytes()
    for name, bad in _corruptions(raw).items():
        (tmp_path / name).write_bytes(bad)
        with pytest.raises(blockfile.BlockFormatError):
            blockfile.read_block(str(tmp_path / name), key, direct=direct)
    with pytest.raises(FileNotFoundError):
        blockfile.read_block(str(tmp_path / "missing"), key, direct=direct)


@pytest.mark.parametrize(
    "other",
    [
        BlockKey("s3://b/k", "v1", 2 * MiB, 1),  # another index, same header length
        BlockKey("s3://b/kk", "v1", 2 * MiB, 0),  # a longer header: the payload offset differs
        BlockKey("s3://b", "v1", 2 * MiB, 0),  # a shorter header
        BlockKey("s3://b/k", "v2", 2 * MiB, 0),  # another version
    ],
)
@pytest.mark.parametrize("size", [1000, 2 * MiB])
def test_read_block_rejects_another_keys_file(tmp_path: Path, other: BlockKey, size: int) -> None:
    blockfile.write_file(str(tmp_path / "f"), other, blob(size, 3))
    for direct in (False, True):
        with pytest.raises(blockfile.BlockFormatError):
            blockfile.read_block(str(tmp_path / "f"), BlockKey("s3://b/k", "v1", 2 * MiB, 0), direct=direct)


def test_direct_reads_fall_back_to_the_page_cache_where_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = BlockKey("s3://b/k", "v1", 4 * MiB, 0)
    data = blob(4 * MiB, 8)
    blockfile.write_file(str(tmp_path / "f"), key, data)
    real = os.preadv
    refused: list[int] = []

    def preadv(fd: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "preadv", preadv)
    assert bytes(blockfile.read_block(str(tmp_path / "f"), key, direct=True)) == data
    assert refused  # it tried, was refused, and read through the page cache
    assert blockfile.direct_io_supported(str(tmp_path / "f")) is False
    monkeypatch.setattr(blockfile, "_set_direct", lambda fd, on: False)  # a filesystem without O_DIRECT
    refused.clear()
    assert bytes(blockfile.read_block(str(tmp_path / "f"), key, direct=True)) == data
    assert not refused
    monkeypatch.undo()
    assert blockfile.direct_io_supported(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("direct_io", [None, False, True])
def test_ssd_tier_serves_large_blocks_in_every_read_mode(tmp_path: Path, direct_io: bool | None) -> None:
    bs = 4 * MiB
    d = str(tmp_path / "ssd")
    blocks = {BlockKey("s3://b/k", "v", bs, i): blob(bs if i < 3 else 1234567, i) for i in range(4)}
    old = BlockKey("s3://b/old", "v", bs, 0)  # a format 1 file left by the previous version
    with SSDTier(d, 256 * MiB, free_space_floor=0, direct_io=direct_io) as tier:
        if direct_io is None:
            assert tier.direct_io == blockfile.direct_io_supported(os.path.join(d, ".lock"))
        for k, v in blocks.items():
            assert tier.put(k, v)
    path = Path(d, "blocks", old.digest[:2], old.digest)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(v1_file(old, blob(bs, 99)))
    with SSDTier(d, 256 * MiB, free_space_floor=0, direct_io=direct_io) as tier:
        for k, v in blocks.items():
            got = tier.get(k)
            assert got is not None and bytes(got) == v
        got = tier.get(old)
        assert got is not None and bytes(got) == blob(bs, 99)
        assert tier.stats()["corrupt"] == 0


def test_no_memory_for_a_buffer_never_costs_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = BlockKey("s3://b/k", "v", 4 * MiB, 0)
    with SSDTier(str(tmp_path / "ssd"), 64 * MiB, free_space_floor=0) as tier:
        assert tier.put(key, blob(4 * MiB, 9))

        def no_memory(size: int) -> memoryview:
            raise MemoryError("cannot map a buffer")

        monkeypatch.setattr(blockfile, "block_buffer", no_memory)
        with pytest.raises(MemoryError):  # TieredCache turns it into a miss (one warning)
            tier.get(key)
        monkeypatch.undo()
        got = tier.get(key)  # the block file was not taken for a bad one
        assert got is not None and bytes(got) == blob(4 * MiB, 9)
        assert tier.stats()["corrupt"] == tier.stats()["errors"] == 0


def test_memory_tier_adopts_buffers_instead_of_copying() -> None:
    mem = MemoryTier(8 * MiB)
    key = BlockKey("s3://b/k", "v", MiB, 0)
    buf = bytearray(blob(MiB, 4))
    assert mem.put(key, memoryview(buf))
    got = mem.get(key)
    assert got is not None and got.readonly and got.nbytes == MiB  # type: ignore[union-attr]
    buf[0] ^= 0xFF  # (callers never do this) the tier kept the caller's buffer, not a copy
    assert got[0] == buf[0]
    assert mem.used_bytes() == MiB
    with pytest.raises(TypeError):
        got[1] = 0  # type: ignore[index]


def test_memory_tier_accounts_views_by_their_bytes() -> None:
    mem = MemoryTier(3 * MiB, "none")
    for i in range(3):
        assert mem.put(BlockKey("s3://b/k", "v", MiB, i), memoryview(bytes(MiB)).cast("B", (1024, 1024)))
    assert mem.used_bytes() == 3 * MiB
    assert not mem.put(BlockKey("s3://b/k", "v", MiB, 3), b"x")  # full under "none"
    block = mem.get(BlockKey("s3://b/k", "v", MiB, 0))
    assert block is not None and memoryview(block).ndim == 1 and len(block) == MiB


def test_ssd_promotion_shares_the_buffer_with_the_memory_tier(tmp_path: Path) -> None:
    bs = 4 * MiB
    ssd = SSDTier(str(tmp_path / "ssd"), 64 * MiB, free_space_floor=0)
    key = BlockKey("s3://b/k", "v", bs, 0)
    data = blob(bs, 5)
    assert ssd.put(key, data)
    cache = TieredCache(MemoryTier(8 * MiB), ssd, dataset=unique_dataset("blockpath"))

    async def main() -> None:
        async def never() -> bytes:
            raise AssertionError("served from the SSD tier")

        got = memoryview(await cache.get(key, never))
        kept = cache.mem.get(key)
        assert kept is not None
        assert memoryview(kept).obj is got.obj  # one buffer, no copy between the tiers
        assert bytes(got) == data

    trio.run(main)
    ssd.close()


def test_pool_stays_bounded_while_the_memory_tier_evicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = buffers.BufferPool()
    monkeypatch.setattr(buffers, "_POOL", pool)  # counted apart from other tests' buffers
    bs = 2 * MiB
    ssd = SSDTier(str(tmp_path / "ssd"), 256 * MiB, free_space_floor=0)
    keys = [BlockKey("s3://b/pool", "v", bs, i) for i in range(24)]
    for i, k in enumerate(keys):
        assert ssd.put(k, blob(bs, i))
    cache = TieredCache(MemoryTier(4 * bs), ssd, dataset=unique_dataset("blockpath"))

    async def never() -> bytes:
        raise AssertionError("served from the SSD tier")

    async def main() -> None:
        for _ in range(3):
            for i, k in enumerate(keys):
                got = await cache.get(k, never)
                assert bytes(got[:64]) == blob(bs, i)[:64]
                del got

    trio.run(main)
    stats = pool.stats()
    # four blocks in the memory tier, the rest reused: far fewer buffers than the 72 reads
    assert stats["buffers"] - stats["free"] <= 4 + 2
    assert stats["buffers"] <= 4 + 2 + buffers.POOL_FREE_BYTES // bs + 1
    ssd.close()


def test_a_read_within_one_block_is_a_view_of_the_cached_block() -> None:
    bs = MiB
    data = blob(3 * bs + 123, 6)
    cache = TieredCache(MemoryTier(16 * MiB), dataset=unique_dataset("blockpath"))
    vfs = make_vfs_with_cache({"/": MemorySource({"f": data})}, cache, block_size=bs, dataset=cache.dataset)

    async def main() -> None:
        inode = await resolve(vfs, "f")
        fh, _ = await vfs.open(inode, os.O_RDONLY)
        try:
            one = await vfs.read(fh, bs + 10, 4096)
            assert isinstance(one, memoryview) and bytes(one) == data[bs + 10 : bs + 10 + 4096]
            assert len(one.obj) == bs  # a view into the whole cached block, not a copy of 4 KiB
            across = await vfs.read(fh, bs - 5, 10)  # spans two blocks: one copy, right bytes
            assert bytes(across) == data[bs - 5 : bs + 5]
            tail = await vfs.read(fh, 3 * bs, 4096)
            assert bytes(tail) == data[3 * bs :]
        finally:
            vfs.release(fh)

    trio.run(main)
