"""The SSD cache tier: validated, quota-bounded, crash-persistent block files in one directory.

Layout of the directory (``DIR/.lock``, ``DIR/blocks/ab/<digest>``): see ssdlayout.py; format of
one block file: see blockfile.py.

Guarantees:

* **The quota is never exceeded**, not even transiently under concurrent puts: a put reserves
  the block's on-disk size (header + payload rounded up to the filesystem allocation unit,
  >= 4 KiB) in the index under the lock *before* creating its tmp file, and an evicted block's
  bytes stay reserved until its file is unlinked.
* **Free-space floor**: a put is refused when it would leave less than ``free_space_floor``
  bytes free on the filesystem (``statvfs``; bytes reserved by puts in flight are counted as
  used).  With ``eviction="lru"`` the tier evicts its own blocks to get back above the floor.
* **Never serves bad bytes**: ``get`` validates magic, format, header checksum, key, length
  and payload CRC; any failure deletes the file and counts a ``corrupt`` event.  What it
  returns is a read-only view of a buffer that holds only the payload (read with ``preadv``,
  large payloads with ``O_DIRECT`` where the filesystem supports it: ``direct_io``, probed at
  start-up; see blockfile.py), so the memory tier keeps it without a copy.
* **Survives unmount, kill -9 and reboot**: the index is rebuilt at start-up by scanning the
  directory (``stat`` only, headers are validated lazily by ``get``); leftover tmp files and
  foreign files in ``blocks/`` are deleted; if the quota shrank, blocks are evicted to fit.
* **One owner**: an exclusive ``flock`` (see dirlock.py); a second tier on the same directory
  raises :class:`~fluidfs.errors.CacheError`.  :meth:`SSDTier.inspect` reads without locking.
* **Write errors degrade, never raise**: the first OSError while writing (ENOSPC, EIO, EROFS,
  EDQUOT...) removes the tmp file, releases the reservation, logs one warning and switches the
  tier to *degraded*: puts return False; gets of existing blocks keep working.  After
  ``degraded_retry_s`` seconds (None: never) one put probes again; success re-enables writes.

Eviction policies: ``"none"`` (default; CoorDL's "keep what is there": once full, new blocks are
not admitted, so under per-epoch shuffling the hit ratio stays at cache/dataset) and ``"lru"``
(when a put would cross ``high_watermark * quota``, least-recently-used blocks -- recency from
``get`` and ``put`` -- are deleted until the put fits under ``low_watermark * quota``).

Caveats: no fsync -- after a power loss a block may be missing, empty or torn; validation
rejects it, so the cost is a re-fetch, never bad bytes.  Recency is in memory only: after a
restart LRU order is approximated by file mtime (write time).  The quota counts block files
and tmp files, not the (<= 257) shard directories' own metadata blocks.  The index costs
roughly 300 bytes of RAM per block.  Construction scans the whole directory synchronously
(~0.3 s per 100k blocks here; see docs/cache.md).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Literal

from fluidfs.cache import blockfile
from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.dirlock import LOCK_NAME, DirLock
from fluidfs.cache.ssdlayout import (
    BLOCKS_DIR,
    TMP_PREFIX,
    CacheDirInfo,
    alloc_unit,
    cache_dir_usage,
    inspect_directory,
    round_up,
    scan_directory,
    unlink_quiet,
)
from fluidfs.errors import CacheError, ConfigError
from fluidfs.util.sizes import format_size

log = logging.getLogger(__name__)

__all__ = ["SSDTier", "CacheDirInfo", "cache_dir_usage", "GiB"]

GiB = 1 << 30

_READY, _PENDING, _EVICTING = 0, 1, 2


class _Entry:
    __slots__ = ("size", "state")

    def __init__(self, size: int, state: int) -> None:
        self.size = size
        self.state = state


def admission_problem(directory: str, quota: int, free_space_floor: int, block_size: int) -> str | None:
    """Why an SSD tier with these settings could never admit a block (None if it can).

    Checked: a quota smaller than one block on disk, and a free-space floor at least as large
    as the filesystem holding ``directory`` (or its nearest existing parent)."""
    one_block = round_up(block_size + 4096, alloc_unit(directory) if os.path.isdir(directory) else 4096)
    if quota < one_block:
        return f"the SSD cache quota ({format_size(quota)}) is smaller than one block ({format_size(one_block)})"
    probe = os.path.abspath(directory)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    disk = st.f_blocks * st.f_frsize
    if free_space_floor >= disk:
        return (
            f"the free-space floor ({format_size(free_space_floor)}) is not below the size of the disk "
            f"holding {directory} ({format_size(disk)})"
        )
    return None


class SSDTier:
    """A :class:`~fluidfs.cache.base.Tier` storing blocks as files under ``directory``.

    Thread-safe; the index is guarded by one lock, file I/O happens outside it.
    """

    def __init__(
        self,
        directory: str,
        quota: int,
        *,
        high_watermark: float = 0.95,
        low_watermark: float = 0.85,
        free_space_floor: int = GiB,
        eviction: Literal["lru", "none"] = "none",
        name: str = "ssd",
        degraded_retry_s: float | None = 300.0,
        scan: Literal["stat", "headers"] = "stat",
        direct_io: bool | None = None,
    ) -> None:
        if quota <= 0:
            raise ConfigError(f"SSD cache quota must be > 0 bytes, got {quota}")
        if not 0.0 < low_watermark <= high_watermark <= 1.0:
            raise ConfigError(
                f"SSD cache watermarks need 0 < low <= high <= 1, got low={low_watermark} high={high_watermark}"
            )
        if eviction not in ("lru", "none"):
            raise ConfigError(f"SSD cache eviction must be 'lru' or 'none', got {eviction!r}")
        if free_space_floor < 0:
            raise ConfigError(f"SSD cache free_space_floor must be >= 0, got {free_space_floor}")
        if scan not in ("stat", "headers"):
            raise ConfigError(f"SSD cache scan must be 'stat' or 'headers', got {scan!r}")
        self.name = name
        self.directory = os.path.abspath(directory)
        self._quota = int(quota)
        self._high = int(quota * high_watermark)
        self._low = int(quota * low_watermark)
        self._floor = int(free_space_floor)
        self._lru = eviction == "lru"
        self._retry_s = degraded_retry_s
        self._blocks_dir = os.path.join(self.directory, BLOCKS_DIR)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)  # a directory we create is private
            os.makedirs(self._blocks_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create SSD cache directory {self._blocks_dir}: {e.strerror}") from e
        self._dirlock = DirLock(self.directory)
        self._unit = alloc_unit(self.directory)
        if direct_io is None:  # large blocks are read with O_DIRECT where the filesystem allows it
            direct_io = blockfile.direct_io_supported(os.path.join(self.directory, LOCK_NAME))
        self.direct_io = direct_io
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._index: OrderedDict[str, _Entry] = OrderedDict()
        self._used = 0  # bytes of every entry in the index (ready, pending and evicting)
        self._pending = 0  # bytes reserved by puts still writing
        self._evicting = 0  # bytes of blocks chosen for eviction, not unlinked yet
        self._ready = 0  # number of READY entries
        self._closed = False
        self._degraded = False
        self._degraded_at = 0.0
        self._tmp_seq = itertools.count()
        self._c = dict.fromkeys(("hits", "misses", "puts", "rejected", "evictions", "corrupt", "errors"), 0)
        try:
            self._rebuild(scan == "headers")
        except BaseException:
            self._dirlock.release()
            raise

    # ----------------------------------------------------------------- start-up / inspection

    def _rebuild(self, headers: bool) -> None:
        t0 = time.monotonic()
        res = scan_directory(self.directory, unit=self._unit, headers=headers)
        for path in res.tmp_files + res.foreign_files + res.bad_headers:
            err = unlink_quiet(path)
            if err is not None:
                log.warning("SSD cache %s: cannot delete leftover %s: %s", self.directory, path, err)
        res.blocks.sort(key=lambda b: b.mtime_ns)  # oldest first = least recently used
        for b in res.blocks:
            self._index[b.digest] = _Entry(b.size, _READY)
            self._used += b.size
        self._ready = len(self._index)
        evicted = 0
        if self._used > self._quota:  # the quota shrank since the last mount
            target = self._low if self._lru else self._quota
            order = list(self._index) if self._lru else list(reversed(self._index))
            for dg in order:  # lru: drop oldest; none: keep the first blocks, drop the newest
                if self._used <= target:
                    break
                e = self._index.pop(dg)
                err = unlink_quiet(self._path(dg))
                if err is not None:
                    log.warning("SSD cache %s: cannot evict %s: %s", self.directory, dg, err)
                self._used -= e.size
                self._ready -= 1
                evicted += 1
            self._c["evictions"] += evicted
        log.info(
            "SSD cache %s: %d blocks, %d bytes of %d quota (%d evicted, %d tmp and %d foreign "
            "files removed, %d bad headers) in %.3f s; large blocks read with O_DIRECT: %s",
            self.directory,
            self._ready,
            self._used,
            self._quota,
            evicted,
            len(res.tmp_files),
            len(res.foreign_files),
            len(res.bad_headers),
            time.monotonic() - t0,
            "yes" if self.direct_io else "no (not supported here)",
        )

    @staticmethod
    def inspect(directory: str, *, verify_headers: bool = False) -> CacheDirInfo:
        """Describe a cache directory without locking or modifying it (for ``fluidfs status``)."""
        return inspect_directory(directory, verify_headers=verify_headers)

    # ------------------------------------------------------------------------ Tier protocol

    def _path(self, digest: str) -> str:
        return os.path.join(self._blocks_dir, digest[:2], digest)

    def contains(self, key: BlockKey) -> bool:
        with self._lock:
            e = self._index.get(key.digest)
            return e is not None and e.state == _READY

    def discard(self, key: BlockKey) -> bool:
        """Delete the cached block ``key`` (True if it was there and is gone)."""
        dg = key.digest
        with self._cond:
            e = self._index.get(dg)
            if e is None or e.state != _READY:
                return False
            self._drop_if_current(dg, e, unlink=True)
            return self._index.get(dg) is not e

    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    def quota_bytes(self) -> int:
        return self._quota

    @property
    def is_degraded(self) -> bool:
        return self._degraded

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._c)
            out.update(used_bytes=self._used, blocks=self._ready, quota_bytes=self._quota, degraded=int(self._degraded))
            return out

    def get(self, key: BlockKey) -> Buffer | None:
        dg = key.digest
        with self._lock:
            e = self._index.get(dg)
            if e is None or e.state != _READY or self._closed:
                self._c["misses"] += 1
                return None
            self._index.move_to_end(dg)
        path = self._path(dg)
        try:
            payload = blockfile.read_block(path, key, direct=self.direct_io)
        except FileNotFoundError:
            # deleted behind our back (or evicted between the lookup and the open)
            with self._cond:
                self._c["misses"] += 1
                self._drop_if_current(dg, e, unlink=False)
            return None
        except blockfile.BlockFormatError as err:
            log.warning(
                "SSD cache %s: discarding corrupt block %s (%s block %d): %s",
                self.directory,
                dg,
                key.url,
                key.index,
                err,
            )
            with self._cond:
                self._c["corrupt"] += 1
                self._c["misses"] += 1
                self._drop_if_current(dg, e, unlink=True)
            return None
        except OSError as err:
            log.warning(
                "SSD cache %s: read error on block %s (%s block %d): %s", self.directory, dg, key.url, key.index, err
            )
            with self._cond:
                self._c["errors"] += 1
                self._c["misses"] += 1
                self._drop_if_current(dg, e, unlink=True)
            return None
        with self._lock:
            self._c["hits"] += 1
        return payload

    def _drop_if_current(self, dg: str, e: _Entry, *, unlink: bool) -> None:
        """Remove ``e`` from the index if it is still the live entry for ``dg`` (lock held).

        The unlink happens under the lock: a new put of the same key cannot create its file
        while the old entry is in the index, so we never delete a freshly written block.
        """
        if self._index.get(dg) is not e or e.state != _READY:
            return
        if unlink:
            err = unlink_quiet(self._path(dg))
            if err is not None:
                log.warning("SSD cache %s: cannot delete block %s: %s", self.directory, dg, err)
                e.state = _EVICTING  # the file is still there: keep it counted, never serve it
                self._ready -= 1
                return
        del self._index[dg]
        self._used -= e.size
        self._ready -= 1
        self._cond.notify_all()

    # ------------------------------------------------------------------------------- put

    def put(self, key: BlockKey, data: bytes | memoryview) -> bool:
        if len(data) > key.block_size:
            raise ValueError(f"block of {len(data)} bytes > block size {key.block_size}")
        dg = key.digest
        size = round_up(blockfile.encoded_size(key, len(data)), self._unit)
        entry: _Entry | None = None
        probing = False
        for _round in range(8):  # admission, possibly after eviction rounds
            victims: list[tuple[str, _Entry]] = []
            with self._cond:
                while True:
                    if self._closed:
                        return False
                    e = self._index.get(dg)
                    if e is not None:
                        if e.state == _READY:
                            self._index.move_to_end(dg)
                            return True  # already cached (blocks of a key are immutable)
                        self._c["rejected"] += 1
                        return False  # another thread is writing or evicting it
                    if self._degraded:
                        if self._retry_s is None or time.monotonic() - self._degraded_at < self._retry_s:
                            self._c["rejected"] += 1
                            return False
                        self._degraded_at = time.monotonic()  # this put probes; others wait
                        probing = True
                    decision = self._plan(size)
                    if isinstance(decision, list):
                        victims = decision
                        break
                    if decision == "admit":
                        entry = _Entry(size, _PENDING)
                        self._index[dg] = entry
                        self._used += size
                        self._pending += size
                        break
                    if decision == "reject":
                        self._c["rejected"] += 1
                        return False
                    self._cond.wait(timeout=5.0)  # "wait": another thread's eviction makes room
            if entry is not None:
                break
            self._evict(victims)
        if entry is None:
            with self._lock:
                self._c["rejected"] += 1
            return False
        return self._write(key, dg, data, entry, probing)

    def _plan(self, size: int) -> str | list[tuple[str, _Entry]]:
        """Admission decision for ``size`` more bytes (lock held): "admit", "reject", "wait"
        (another thread's eviction will make room) or a list of victims (marked EVICTING)."""
        if size > self._quota:
            return "reject"
        floor_short = 0
        if self._floor:
            try:
                st = os.statvfs(self._blocks_dir)
                avail = st.f_bavail * st.f_frsize
            except OSError:
                avail = 0
            floor_short = self._floor + size + self._pending - avail
        fits = self._used + size <= self._quota and floor_short <= 0
        if not self._lru:
            return "admit" if fits else "reject"
        projected = self._used - self._evicting
        want = projected + size - self._low if projected + size > self._high else 0
        want = max(want, floor_short - self._evicting)
        if want > 0:
            victims: list[tuple[str, _Entry]] = []
            freed = 0
            for dg, e in self._index.items():  # least recently used first
                if e.state != _READY:
                    continue
                victims.append((dg, e))
                freed += e.size
                if freed >= want:
                    break
            if victims:
                for _dg, e in victims:
                    e.state = _EVICTING
                    self._ready -= 1
                self._evicting += freed
                self._c["evictions"] += len(victims)
                return victims
        if fits:
            return "admit"
        return "wait" if self._evicting else "reject"

    def _evict(self, victims: list[tuple[str, _Entry]]) -> None:
        """Unlink victims outside the lock; release their bytes only once their files are gone."""
        failed: list[tuple[str, OSError]] = []
        for dg, _e in victims:
            err = unlink_quiet(self._path(dg))
            if err is not None:
                failed.append((dg, err))
        stuck = {dg for dg, _err in failed}
        with self._cond:
            for dg, e in victims:
                self._evicting -= e.size
                if dg in stuck:
                    continue  # the file is still there: keep it indexed (unreadable) and counted
                if self._index.get(dg) is e:
                    del self._index[dg]
                self._used -= e.size
            self._cond.notify_all()
        for dg, err in failed:
            self._degrade(err, f"evicting block {dg}")

    def _write(self, key: BlockKey, dg: str, data: bytes | memoryview, entry: _Entry, probing: bool) -> bool:
        path = self._path(dg)
        tmp = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}{dg}.{os.getpid()}.{next(self._tmp_seq)}")
        try:
            try:
                blockfile.write_file(tmp, key, data)
            except FileNotFoundError:  # shard directory not created yet (or removed)
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                blockfile.write_file(tmp, key, data)
            os.replace(tmp, path)
        except OSError as err:
            unlink_quiet(tmp)
            with self._cond:
                self._c["errors"] += 1
                self._c["rejected"] += 1
                if self._index.get(dg) is entry:
                    del self._index[dg]
                self._used -= entry.size
                self._pending -= entry.size
                self._cond.notify_all()
            self._degrade(err, f"writing block {dg} ({key.url} block {key.index})")
            return False
        with self._cond:
            self._pending -= entry.size
            entry.state = _READY
            self._ready += 1
            self._c["puts"] += 1
            recovered = probing and self._degraded
            if recovered:
                self._degraded = False
        if recovered:
            log.info("SSD cache %s: writes re-enabled after a successful probe", self.directory)
        return True

    def _degrade(self, err: OSError, what: str) -> None:
        with self._lock:
            first = not self._degraded
            self._degraded = True
            self._degraded_at = time.monotonic()
        reason = errno.errorcode.get(err.errno or 0, str(err.errno))
        if first:
            log.warning(
                "SSD cache %s degraded: %s failed (%s: %s); new blocks are no longer cached "
                "here, existing blocks stay readable%s",
                self.directory,
                what,
                reason,
                err.strerror or err,
                f"; retrying in {self._retry_s:.0f} s" if self._retry_s is not None else "",
            )
        else:
            log.debug("SSD cache %s still degraded: %s failed (%s)", self.directory, what, reason)

    # ---------------------------------------------------------------------------- life cycle

    def close(self, timeout: float = 30.0) -> None:
        """Stop admitting, wait (bounded) for in-flight writes, release the directory lock."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            while (self._pending or self._evicting) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
        self._dirlock.release()

    def __enter__(self) -> SSDTier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SSDTier({self.directory!r}, quota={self._quota}, "
            f"eviction={'lru' if self._lru else 'none'}, used={self._used})"
        )
