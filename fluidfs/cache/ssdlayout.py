"""Layout of an SSD cache directory on disk: where block files live, scanning, inspection.

    DIR/.lock                 flock held by the owning tier (see dirlock.py)
    DIR/blocks/ab/abcdef...   one block file per BlockKey digest, sharded by its first two hex
                              digits (256 shards: 1M blocks means ~4k entries per directory)
    DIR/blocks/ab/.tmp-...    a block being written; renamed into place when complete

Everything here is read-only except :func:`unlink_quiet`; :func:`inspect_directory` and
:func:`cache_dir_usage` never take the directory lock, so ``fluidfs status`` can use them while
a mount owns the directory.

Caveats: a scan of a directory that a live mount is changing is a snapshot of nothing in
particular (files come and go while it runs); sizes are apparent sizes rounded up to the
filesystem allocation unit, the same rule the tier uses for its quota.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from fluidfs.cache import blockfile
from fluidfs.cache.dirlock import lock_holder

log = logging.getLogger(__name__)

BLOCKS_DIR = "blocks"
TMP_PREFIX = ".tmp-"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ScannedBlock:
    digest: str
    size: int  # on-disk bytes (apparent size rounded up to the allocation unit)
    mtime_ns: int


@dataclass(slots=True)
class ScanResult:
    blocks: list[ScannedBlock]
    tmp_files: list[str]  # paths of leftover tmp files
    foreign_files: list[str]  # paths of files in blocks/ that are not block files
    bad_headers: list[str]  # paths whose header failed validation (scan="headers" only)


@dataclass(frozen=True, slots=True)
class CacheDirInfo:
    """What :meth:`SSDTier.inspect` reports about a cache directory (no lock taken)."""

    directory: str
    used_bytes: int
    blocks: int
    tmp_files: int
    foreign_files: int
    bad_headers: int  # only counted with verify_headers=True
    locked_by: int | None  # pid of the mount holding the directory, None if free


def _is_digest(name: str) -> bool:
    return len(name) == 64 and _HEX.issuperset(name)


def alloc_unit(directory: str) -> int:
    """Accounting unit for on-disk sizes: the filesystem fragment size, at least 4 KiB."""
    try:
        frsize = os.statvfs(directory).f_frsize
    except OSError:
        frsize = 4096
    return max(4096, frsize)


def round_up(n: int, unit: int) -> int:
    """``n`` rounded up to a multiple of ``unit`` (at least one unit)."""
    return max(unit, -(-n // unit) * unit)


def scan_directory(directory: str, *, unit: int | None = None, headers: bool = False) -> ScanResult:
    """List the block files of a cache directory (read-only).

    ``headers=False`` stats each file; ``headers=True`` also reads and validates each header
    and checks that it belongs to the digest in the file name.
    """
    unit = unit or alloc_unit(directory)
    res = ScanResult([], [], [], [])
    root = os.path.join(directory, BLOCKS_DIR)
    try:
        shards = list(os.scandir(root))
    except FileNotFoundError:
        return res
    for shard in shards:
        if not (len(shard.name) == 2 and _HEX.issuperset(shard.name) and shard.is_dir(follow_symlinks=False)):
            if not shard.is_dir(follow_symlinks=False):
                res.foreign_files.append(shard.path)
            continue
        try:
            entries = list(os.scandir(shard.path))
        except OSError as e:
            log.warning("cannot list cache shard %s: %s", shard.path, e)
            continue
        for ent in entries:
            name = ent.name
            if name.startswith(TMP_PREFIX):
                res.tmp_files.append(ent.path)
                continue
            if not (_is_digest(name) and name.startswith(shard.name)) or not ent.is_file(follow_symlinks=False):
                if not ent.is_dir(follow_symlinks=False):
                    res.foreign_files.append(ent.path)
                continue
            try:
                st = ent.stat(follow_symlinks=False)
                if headers:
                    h = blockfile.read_header(ent.path)
                    if h.digest.hex() != name or st.st_size != h.header_len + h.payload_len:
                        raise blockfile.BlockFormatError("header does not match file")
            except FileNotFoundError:
                continue
            except (OSError, blockfile.BlockFormatError):
                res.bad_headers.append(ent.path)
                continue
            res.blocks.append(ScannedBlock(name, round_up(st.st_size, unit), st.st_mtime_ns))
    return res


def cache_dir_usage(directory: str) -> tuple[int, int]:
    """``(used_bytes, blocks)`` of a cache directory, without taking its lock."""
    res = scan_directory(directory)
    return sum(b.size for b in res.blocks), len(res.blocks)


def unlink_quiet(path: str) -> OSError | None:
    """Unlink ``path``; a missing file is fine; return any other error instead of raising."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return e
    return None


def inspect_directory(directory: str, *, verify_headers: bool = False) -> CacheDirInfo:
    """Describe a cache directory without locking or modifying it (for ``fluidfs status``)."""
    res = scan_directory(directory, headers=verify_headers)
    return CacheDirInfo(
        directory=os.path.abspath(directory),
        used_bytes=sum(b.size for b in res.blocks),
        blocks=len(res.blocks),
        tmp_files=len(res.tmp_files),
        foreign_files=len(res.foreign_files),
        bad_headers=len(res.bad_headers),
        locked_by=lock_holder(directory),
    )
