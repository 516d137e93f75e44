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
    72     4     payload_crc      zlib.crc32 of the payload
    76     4     url_len
    80     4     version_len
    84     4     header_crc       zlib.crc32 of bytes [0, header_len) with this field zeroed
    88     ...   url (utf-8, surrogateescape), then the version token (same encoding)
    header_len   payload

A file is valid for a key only if: the magic and format version match, the header checksum
matches, the digest, url, version, block size and index all equal the requested key's, the file
is exactly ``header_len + payload_len`` bytes long and the payload checksum matches.

Checksum choice: ``zlib.crc32`` runs at ~6 GB/s here (4 MiB payload: ~0.65 ms) against ~1.3 GB/s
for ``blake2b`` and ~2 GB/s for ``sha256``, and ``zlib`` releases the GIL on large buffers.  The
checksum defends against torn writes, truncation, bit rot and stray files, not against an
attacker who can write into the cache directory (such a user could write a valid crc as
easily as a valid hash), so a 32-bit CRC is the right tool.

Caveats: a CRC-32 misses a random multi-bit corruption with probability 2**-32 per block; the
header is validated in full before any payload byte is returned, but nothing protects against a
malicious writer with access to the cache directory (it is expected to be root-owned, 0700).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from fluidfs.cache.base import BlockKey, Buffer

MAGIC = b"FLFSBLK1"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<8sHHI32sQQQIIII")
FIXED_LEN = _FIXED.size  # 88
_HEADER_CRC_OFFSET = FIXED_LEN - 4
MAX_HEADER_LEN = 1 << 20  # refuse absurd headers before allocating for them


#: name of the payload checksum below (peers compare it: a change of algorithm is detected)
CHECKSUM_NAME = "crc32"


def checksum(data: Buffer, value: int = 0) -> int:
    """The payload checksum of block files (and of peer transfers): CRC-32 (``zlib.crc32``).

    ``value`` continues a running checksum, so a payload received in pieces is checksummed
    piece by piece as it arrives (no second pass)."""
    return zlib.crc32(data, value)


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
    crc = zlib.crc32(url + version, zlib.crc32(fixed))
    return body + struct.pack("<I", crc) + url + version


def encoded_size(key: BlockKey, payload_len: int) -> int:
    """Exact file size of a block with ``payload_len`` bytes of payload."""
    return FIXED_LEN + len(_enc(key.url)) + len(_enc(key.version)) + payload_len


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
    crc = zlib.crc32(mv[:_HEADER_CRC_OFFSET])
    crc = zlib.crc32(b"\0\0\0\0", crc)
    crc = zlib.crc32(mv[FIXED_LEN:header_len], crc)
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


def read_file(path: str) -> bytes:
    """Read a whole block file: one ``fstat`` and (on a regular file) one ``read``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)
        if len(data) < size:  # rare: a short read; collect the rest
            parts = [data]
            got = len(data)
            while got < size:
                chunk = os.read(fd, size - got)
                if not chunk:
                    break  # shrank under us: the caller's length check rejects it
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


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
    """Create ``path`` (must not exist) holding header + payload.  Raises OSError."""
    header = encode_header(key, payload)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        bufs = [memoryview(header), memoryview(payload).cast("B")]
        total = sum(len(b) for b in bufs)
        done = 0
        while done < total:
            n = os.writev(fd, bufs)
            if n <= 0:  # pragma: no cover - writev raises instead on real errors
                raise OSError("short write")
            done += n
            while bufs and n >= len(bufs[0]):
                n -= len(bufs[0])
                bufs.pop(0)
            if bufs and n:
                bufs[0] = bufs[0][n:]
    finally:
        os.close(fd)
