"""On-disk format of one SSD cache block: a self-describing header followed by the payload.

Every block file names the block it holds and checksums its own bytes, so a reader can decide
from the file alone whether it may serve it for a given :class:`~fluidfs.cache.base.BlockKey`.

Layout (all integers little-endian)::

    offset size  field
    0      8     magic            b"FLFSBLK1"
    8      2     format version   1
    10     2     flags            0 (reserved)
    12     4     header_len       bytes before the payload (fixed part + url + version token)
    16     32    key digest       sha256 of the key (raw bytes of BlockKey.digest)
    48     8     block_size
    56     8     index            block number
    64     8     payload_len      <= block_size (the last block of an object is short)
    72     4     payload_crc      CRC-32 of the payload (zlib polynomial)
    76     4     url_len
    80     4     version_len
    84     4     header_crc       CRC-32 of bytes [0, header_len) with this field zeroed
    88     ...   url (utf-8, surrogateescape), then the version token (same encoding)
    header_len   payload

A file is valid for a key only if: the magic and format version match, the header checksum
matches, the digest, url, version, block size and index all equal the requested key's, the file
is exactly ``header_len + payload_len`` bytes long and the payload checksum matches.

Checksum: CRC-32 (the zlib polynomial), computed with zlib-ng (``zlib_ng.crc32``: carry-less
multiplication folding, ~14 GB/s here against ~1.5-3.6 GB/s for the standard library's
``zlib.crc32``, the same values; both release the GIL on large buffers).  The checksum defends
against torn writes, truncation, bit rot and stray files, not against an attacker who can write
into the cache directory (such a user could write a valid crc as easily as a valid hash), so a
32-bit CRC is the right tool.  Why not CRC-32C (the hardware ``crc32`` instruction): at ~19 GB/s
it would save ~0.1 ms per 4 MiB block over zlib-ng's CRC-32, while ``google-crc32c`` only accepts
``bytes`` (a copy for every ``memoryview`` checked) and a change of algorithm would invalidate
every cached block and keep members of different versions from exchanging blocks (docs/cache.md).

Reading: :func:`read_block` knows the header length from the key, so it reads header and payload
with one ``preadv`` into two buffers of their exact sizes; the payload buffer (huge-page backed,
see ``fluidfs.util.buffers``) is returned as a read-only view and adopted by the memory tier,
never copied.  Writing: :func:`write_file`
writes header and payload with ``pwritev`` (no concatenation).

Caveats: a CRC-32 misses a random multi-bit corruption with probability 2**-32 per block; the
header is validated in full before any payload byte is returned, but nothing protects against a
malicious writer with access to the cache directory (it is expected to be root-owned, 0700).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from zlib_ng import zlib_ng

from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.util.buffers import block_buffer

MAGIC = b"FLFSBLK1"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<8sHHI32sQQQIIII")
FIXED_LEN = _FIXED.size  # 88
_HEADER_CRC_OFFSET = FIXED_LEN - 4
MAX_HEADER_LEN = 1 << 20  # refuse absurd headers before allocating for them


#: name of the payload checksum below (peers compare it: a change of algorithm is detected)
CHECKSUM_NAME = "crc32"


def checksum(data: Buffer | bytearray, value: int = 0) -> int:
    """The payload checksum of block files (and of peer transfers): CRC-32, as ``zlib.crc32``
    computes it, by zlib-ng (SIMD; releases the GIL on buffers over 5 KiB).

    ``value`` continues a running checksum, so a payload received in pieces is checksummed
    piece by piece as it arrives (no second pass)."""
    return int(zlib_ng.crc32(data, value))


class BlockFormatError(ValueError):
    """A block file is truncated, foreign, corrupt or belongs to another key."""


@dataclass(frozen=True, slots=True)
class BlockHeader:
    digest: bytes
    url: str
    version: str
    block_size: int
    index: int
    payload_len: int
    payload_crc: int
    header_len: int


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def encode_header(key: BlockKey, payload: Buffer) -> bytes:
    """Header bytes for ``payload`` stored under ``key``."""
    url = _enc(key.url)
    version = _enc(key.version)
    header_len = FIXED_LEN + len(url) + len(version)
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        0,
        header_len,
        bytes.fromhex(key.digest),
        key.block_size,
        key.index,
        len(payload),
        checksum(payload),
        len(url),
        len(version),
        0,
    )
    body = fixed[:_HEADER_CRC_OFFSET]
    crc = checksum(url + version, checksum(fixed))
    return body + struct.pack("<I", crc) + url + version


def header_size(key: BlockKey) -> int:
    """Exact header length of every block file of ``key`` (the payload's offset)."""
    return FIXED_LEN + len(_enc(key.url)) + len(_enc(key.version))


def encoded_size(key: BlockKey, payload_len: int) -> int:
    """Exact file size of a block with ``payload_len`` bytes of payload."""
    return header_size(key) + payload_len


def decode_header(buf: Buffer) -> BlockHeader:
    """Parse and checksum a header from the first bytes of a block file.

    ``buf`` must hold at least the whole header (``header_len`` bytes).  Raises
    :class:`BlockFormatError` on any problem.
    """
    mv = memoryview(buf)
    if len(mv) < FIXED_LEN:
        raise BlockFormatError(f"truncated header ({len(mv)} bytes)")
    (
        magic,
        fmt,
        _flags,
        header_len,
        digest,
        block_size,
        index,
        payload_len,
        payload_crc,
        url_len,
        version_len,
        header_crc,
    ) = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        raise BlockFormatError("bad magic (not a fluidfs block file)")
    if fmt != FORMAT_VERSION:
        raise BlockFormatError(f"unsupported block format version {fmt}")
    if header_len != FIXED_LEN + url_len + version_len or header_len > MAX_HEADER_LEN:
        raise BlockFormatError(f"inconsistent header length {header_len}")
    if len(mv) < header_len:
        raise BlockFormatError(f"truncated header ({len(mv)} of {header_len} bytes)")
    crc = checksum(mv[:_HEADER_CRC_OFFSET])
    crc = checksum(b"\0\0\0\0", crc)
    crc = checksum(mv[FIXED_LEN:header_len], crc)
    if crc != header_crc:
        raise BlockFormatError("header checksum mismatch")
    try:
        url = bytes(mv[FIXED_LEN : FIXED_LEN + url_len]).decode("utf-8", "surrogateescape")
        version = bytes(mv[FIXED_LEN + url_len : header_len]).decode("utf-8", "surrogateescape")
    except UnicodeDecodeError as e:  # pragma: no cover - surrogateescape decodes anything
        raise BlockFormatError(f"undecodable header strings: {e}") from None
    if payload_len > block_size:
        raise BlockFormatError(f"payload length {payload_len} > block size {block_size}")
    return BlockHeader(digest, url, version, block_size, index, payload_len, payload_crc, header_len)


def check_key(header: BlockHeader, key: BlockKey) -> None:
    """Raise :class:`BlockFormatError` unless ``header`` describes exactly ``key``."""
    if header.digest.hex() != key.digest:
        raise BlockFormatError("block file belongs to another key (digest mismatch)")
    if (header.url, header.version, header.block_size, header.index) != (
        key.url,
        key.version,
        key.block_size,
        key.index,
    ):
        raise BlockFormatError("block header does not match the requested key")


def decode_block(buf: Buffer, key: BlockKey) -> memoryview:
    """Validate a whole block file's bytes for ``key``; return a view of the payload."""
    header = decode_header(buf)
    check_key(header, key)
    mv = memoryview(buf)
    if len(mv) != header.header_len + header.payload_len:
        raise BlockFormatError(f"file is {len(mv)} bytes, header says {header.header_len + header.payload_len}")
    payload = mv[header.header_len :]
    if checksum(payload) != header.payload_crc:
        raise BlockFormatError("payload checksum mismatch")
    return payload


def read_block(path: str, key: BlockKey) -> memoryview:
    """Read and validate the block file ``path`` for ``key``; return its payload.

    One ``fstat`` and one ``preadv`` into two buffers of exactly the header's and the payload's
    size (the header length follows from the key; the payload's is a fresh huge-page backed
    :func:`~fluidfs.util.buffers.block_buffer`), then one checksum pass over the payload.
    The result is a read-only view of a buffer holding nothing but the payload, so a tier can
    keep it without copying.  Raises :class:`BlockFormatError` (invalid for ``key``) or OSError.
    """
    header_len = header_size(key)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        payload_len = size - header_len
        if not 0 <= payload_len <= key.block_size:
            raise BlockFormatError(
                f"file is {size} bytes: not {header_len} bytes of header and at most {key.block_size} of payload"
            )
        head = bytearray(header_len)
        payload = block_buffer(payload_len)
        got = _preadv_full(fd, [memoryview(head), payload])
    finally:
        os.close(fd)
    if got != size:
        raise BlockFormatError(f"file shrank to {got} bytes while being read ({size} expected)")
    header = decode_header(memoryview(head))
    check_key(header, key)
    if header.header_len != header_len or header.payload_len != payload_len:
        raise BlockFormatError(f"file is {size} bytes, header says {header.header_len + header.payload_len}")
    if checksum(payload) != header.payload_crc:
        raise BlockFormatError("payload checksum mismatch")
    return payload.toreadonly()


def _preadv_full(fd: int, bufs: list[memoryview]) -> int:
    """Fill ``bufs`` from offset 0 (``preadv`` until full or end of file); bytes read."""
    done = 0
    while bufs:
        n = os.preadv(fd, bufs, done)
        if n <= 0:
            break  # end of file: the caller's length check rejects the block
        done += n
        bufs = _advance(bufs, n)
    return done


def _advance(bufs: list[memoryview], n: int) -> list[memoryview]:
    """``bufs`` without their first ``n`` bytes (after a partial vectored read or write)."""
    while bufs and n >= len(bufs[0]):
        n -= len(bufs[0])
        bufs = bufs[1:]
    if bufs and n:
        bufs = [bufs[0][n:], *bufs[1:]]
    return bufs


def read_header(path: str) -> BlockHeader:
    """Read and validate only the header of a block file (for inspection and scans)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, 4096, 0)
        if len(head) >= FIXED_LEN:
            header_len = struct.unpack_from("<I", head, 12)[0]
            if len(head) < header_len <= MAX_HEADER_LEN:
                head = os.pread(fd, header_len, 0)
        return decode_header(head)
    finally:
        os.close(fd)


def write_file(path: str, key: BlockKey, payload: Buffer) -> None:
    """Create ``path`` (must not exist) holding header + payload.  Raises OSError.

    Header and payload go out in one ``pwritev`` (repeated only after a partial write): the
    payload is never copied into a file image."""
    header = encode_header(key, payload)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        bufs = [memoryview(header), memoryview(payload).cast("B")]
        done = 0
        while bufs:
            n = os.pwritev(fd, bufs, done)
            if n <= 0:  # pragma: no cover - pwritev raises instead on real errors
                raise OSError("short write")
            done += n
            bufs = _advance(bufs, n)
    finally:
        os.close(fd)
