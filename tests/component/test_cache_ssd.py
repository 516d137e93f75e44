"""SSD tier: format validation, quota under concurrency, persistence, crash safety, locking, disk full."""

from __future__ import annotations

import logging
import os
import random
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fluidfs.cache import blockfile
from fluidfs.cache.base import BlockKey
from fluidfs.cache.ssd import SSDTier, cache_dir_usage
from fluidfs.cache.ssdlayout import TMP_PREFIX
from fluidfs.errors import CacheError, ConfigError

REPO = Path(__file__).resolve().parents[2]
BS = 64 * 1024
UNIT = 4096


def key(i: int, url: str = "s3://bucket/data/file.bin", version: str = '"etag-1"') -> BlockKey:
    return BlockKey(url, version, BS, i)


def payload(i: int, n: int = 1000) -> bytes:
    return random.Random(i).randbytes(n)


def block_file(tier: SSDTier, k: BlockKey) -> Path:
    return Path(tier.directory, "blocks", k.digest[:2], k.digest)


def disk_files(directory: str | Path) -> list[os.stat_result]:
    """stat of every file under blocks/ (block and tmp files), each inode once."""
    seen: dict[int, os.stat_result] = {}
    for root, _dirs, files in os.walk(os.path.join(directory, "blocks")):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            seen[st.st_ino] = st
    return list(seen.values())


def disk_usage(directory: str | Path) -> tuple[int, int]:
    """(sum of apparent sizes rounded to 4 KiB, sum of allocated bytes) of the block files."""
    sts = disk_files(directory)
    return (sum(max(UNIT, -(-s.st_size // UNIT) * UNIT) for s in sts), sum(s.st_blocks * 512 for s in sts))


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[SSDTier]:
    t = SSDTier(str(tmp_path / "cache"), 1 << 20, free_space_floor=0)
    yield t
    t.close()


def run_child(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])


# ---------------------------------------------------------------------------------- basics


def test_roundtrip_and_stats(tier: SSDTier) -> None:
    odd = BlockKey("http://h/p%20q/\udcff", "v\0\u00e9", BS, 7)  # surrogate + NUL survive
    cases = {key(0): b"", key(1): payload(1), key(2): payload(2, BS), odd: payload(3, 5000)}
    for k, data in cases.items():
        assert tier.put(k, data) is True
    for k, data in cases.items():
        assert tier.contains(k)
        got = tier.get(k)
        assert got is not None and bytes(got) == data
    assert tier.get(key(99)) is None and not tier.contains(key(99))
    assert tier.get(BlockKey(key(1).url, '"etag-2"', BS, 1)) is None  # new version: no hit
    assert tier.put(key(1), payload(1)) is True  # idempotent, not counted twice
    s = tier.stats()
    assert (s["hits"], s["misses"], s["puts"], s["blocks"], s["corrupt"]) == (4, 2, 4, 4, 0)
    assert s["used_bytes"] == tier.used_bytes() == disk_usage(tier.directory)[0]
    assert tier.used_bytes() == cache_dir_usage(tier.directory)[0]
    assert tier.quota_bytes() == 1 << 20 and not tier.is_degraded
    with pytest.raises(ValueError):
        tier.put(key(5), b"x" * (BS + 1))


def test_sharded_layout(tier: SSDTier) -> None:
    for i in range(50):
        tier.put(key(i), payload(i, 10))
    for i in range(50):
        f = block_file(tier, key(i))
        assert f.is_file() and f.parent.name == key(i).digest[:2]
        h = blockfile.read_header(str(f))
        assert (h.url, h.version, h.block_size, h.index, h.payload_len) == (key(i).url, key(i).version, BS, i, 10)


def test_config_errors(tmp_path: Path) -> None:
    for kw in ({"high_watermark": 0.5, "low_watermark": 0.8}, {"eviction": "fifo"}, {"free_space_floor": -1}):
        with pytest.raises(ConfigError):
            SSDTier(str(tmp_path / "c"), 1 << 20, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SSDTier(str(tmp_path / "c"), 0)
    SSDTier(str(tmp_path / "c"), 1 << 20, free_space_floor=0).close()  # lock was released


# --------------------------------------------------------------------------- persistence


def test_persists_across_close_and_reopen(tmp_path: Path) -> None:
    d = str(tmp_path / "c")
    with SSDTier(d, 1 << 20, free_space_floor=0) as t:
        for i in range(20):
            assert t.put(key(i), payload(i, 100 * i))
        used = t.used_bytes()
    assert t.get(key(1)) is None and t.put(key(30), b"x") is False  # closed: inert, no raise
    (tmp_path / "c" / "blocks" / "ab").mkdir(exist_ok=True)
    stray = tmp_path / "c" / "blocks" / "ab" / "not-a-block"
    stray.write_bytes(b"junk")
    outside = tmp_path / "c" / "README"
    outside.write_text("left alone")
    with SSDTier(d, 1 << 20, free_space_floor=0) as t:
        assert t.used_bytes() == used and t.stats()["blocks"] == 20
        for i in range(20):
            got = t.get(key(i))
            assert got is not None and bytes(got) == payload(i, 100 * i)
    assert not stray.exists() and outside.exists()


_CHILD_WRITER = r"""
import os, sys, time
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.base import BlockKey
import random
d, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = SSDTier(d, 1 << 30, free_space_floor=0)
def data(i): return random.Random(i).randbytes(3000 + i)
for i in range(n):
    assert t.put(BlockKey("s3://b/f", "v1", 65536, i), data(i))
    print("done", i, flush=True)
if mode == "stuck":
    def stuck(src, dst):  # the tmp file is complete, the rename never happens
        print("stuck", src, flush=True)
        time.sleep(3600)
    os.replace = stuck
    t.put(BlockKey("s3://b/f", "v1", 65536, n), data(n))
else:
    i = n
    while True:  # keep writing until killed at an arbitrary point
        t.put(BlockKey("s3://b/f", "v1", 65536, i), data(i))
        print("done", i, flush=True)
        i += 1
"""


@pytest.mark.parametrize("mode", ["stuck", "busy"])
def test_survives_sigkill(tmp_path: Path, mode: str) -> None:
    d = str(tmp_path / "c")
    p = run_child(_CHILD_WRITER, d, "10", mode)
    done: list[int] = []
    tmp_seen = None
    try:
        assert p.stdout is not None
        while True:
            line = p.stdout.readline()
            assert line, f"child died: {p.stderr.read() if p.stderr else ''}"
            word, arg = line.split()[:2]
            if word == "done":
                done.append(int(arg))
                if mode == "busy" and len(done) >= 40:
                    break
            elif word == "stuck":
                tmp_seen = arg
                break
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    if mode == "stuck":
        assert tmp_seen and os.path.basename(tmp_seen).startswith(TMP_PREFIX) and os.path.exists(tmp_seen)
        assert SSDTier.inspect(d).tmp_files == 1
    assert SSDTier.inspect(d).locked_by is None  # the kernel dropped the dead process's flock
    with SSDTier(d, 1 << 30, free_space_floor=0) as t:  # not "in use": flock died with the child
        for i in done:
            got = t.get(BlockKey("s3://b/f", "v1", BS, i))
            assert got is not None and bytes(got) == random.Random(i).randbytes(3000 + i)
        if mode == "stuck":
            assert not t.contains(BlockKey("s3://b/f", "v1", BS, 10))
        assert t.stats()["corrupt"] == 0
    info = SSDTier.inspect(d)
    assert info.tmp_files == 0 and info.foreign_files == 0


def test_quota_shrink_on_reopen(tmp_path: Path) -> None:
    d = str(tmp_path / "c")
    with SSDTier(d, 1 << 20, free_space_floor=0) as t:
        for i in range(10):
            t.put(key(i), payload(i))
            os.utime(block_file(t, key(i)), ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    with SSDTier(d, 4 * UNIT, free_space_floor=0) as t:  # none: keep the first (oldest) blocks
        assert t.used_bytes() <= 4 * UNIT and disk_usage(d)[0] <= 4 * UNIT
        assert [i for i in range(10) if t.contains(key(i))] == [0, 1, 2, 3]
    with SSDTier(
        d, 2 * UNIT, low_watermark=0.5, high_watermark=1.0, eviction="lru", free_space_floor=0
    ) as t:  # lru: drop oldest, down to the low watermark
        assert [i for i in range(10) if t.contains(key(i))] == [3]


# ---------------------------------------------------------------------------- corruption


def _corrupt_cases() -> list[str]:
    return [
        "payload-flip",
        "payload-last-byte",
        "header-magic",
        "header-digest",
        "header-crc-field",
        "header-url",
        "truncate-payload",
        "truncate-header",
        "empty",
        "extra-byte",
        "foreign",
        "other-key",
    ]


@pytest.mark.parametrize("case", _corrupt_cases())
def test_corrupt_block_is_discarded_then_rewritable(tier: SSDTier, case: str) -> None:
    k, data = key(1), payload(1, 5000)
    assert tier.put(k, data) and tier.put(key(2), payload(2, 700))
    f = block_file(tier, k)
    raw = bytearray(f.read_bytes())
    hlen = blockfile.decode_header(bytes(raw)).header_len
    flip = {
        "payload-flip": hlen + 1234,
        "payload-last-byte": len(raw) - 1,
        "header-magic": 3,
        "header-digest": 20,
        "header-crc-field": 85,
        "header-url": blockfile.FIXED_LEN + 2,
    }
    if case in flip:
        raw[flip[case]] ^= 0x01
        f.write_bytes(raw)
    elif case == "truncate-payload":
        f.write_bytes(raw[:-100])
    elif case == "truncate-header":
        f.write_bytes(raw[:40])
    elif case == "empty":
        f.write_bytes(b"")
    elif case == "extra-byte":
        f.write_bytes(raw + b"\0")
    elif case == "foreign":
        f.write_bytes(b"PK\x03\x04 this is a zip file, not a block" * 50)
    elif case == "other-key":
        f.write_bytes(block_file(tier, key(2)).read_bytes())
    used = tier.used_bytes()
    assert tier.get(k) is None
    assert not f.exists() and not tier.contains(k)
    assert tier.stats()["corrupt"] == 1 and tier.used_bytes() < used
    assert tier.used_bytes() == disk_usage(tier.directory)[0]
    assert tier.put(k, data)
    got = tier.get(k)
    assert got is not None and bytes(got) == data
    got2 = tier.get(key(2))
    assert got2 is not None and bytes(got2) == payload(2, 700)  # the other block is untouched


def test_every_single_header_byte_flip_is_detected(tmp_path: Path) -> None:
    k, data = key(3), payload(3, 300)
    with SSDTier(str(tmp_path / "c"), 1 << 20, free_space_floor=0) as t:
        t.put(k, data)
        raw = block_file(t, k).read_bytes()
        hlen = blockfile.decode_header(raw).header_len
    for pos in range(hlen):
        for bit in (0x01, 0x80):
            bad = bytearray(raw)
            bad[pos] ^= bit
            with pytest.raises(blockfile.BlockFormatError):
                blockfile.decode_block(bytes(bad), k)
    assert bytes(blockfile.decode_block(raw, k)) == data


def test_deleted_behind_our_back_is_a_miss(tier: SSDTier) -> None:
    tier.put(key(1), payload(1))
    block_file(tier, key(1)).unlink()
    assert tier.get(key(1)) is None and not tier.contains(key(1))
    assert tier.stats()["corrupt"] == 0 and tier.used_bytes() == 0


# -------------------------------------------------------------------------------- quota


@pytest.mark.parametrize("eviction", ["lru", "none"])
def test_quota_never_exceeded_under_16_threads(tmp_path: Path, eviction: str) -> None:
    quota = 40 * UNIT
    t = SSDTier(str(tmp_path / "c"), quota, eviction=eviction, free_space_floor=0)  # type: ignore[arg-type]
    errors: list[str] = []
    expected = {i: payload(i, random.Random(-i).randrange(0, 6 * UNIT)) for i in range(200)}

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            i = rng.randrange(200)
            ok = t.put(key(i), expected[i])
            j = rng.randrange(200)
            got = t.get(key(j))
            with t._lock:  # freeze admissions and releases while we look at the disk
                used = t._used
                apparent, allocated = disk_usage(t.directory)
            if not (used <= quota and apparent <= used and allocated <= used):
                errors.append(f"put->{ok}: accounted {used}, on disk {apparent}/{allocated}, quota {quota}")
            if got is not None and bytes(got) != expected[j]:
                errors.append(f"block {j}: served bytes that were never put under its key")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert not errors, errors[:5]
        s = t.stats()
        assert s["used_bytes"] == disk_usage(t.directory)[0] <= quota
        assert s["blocks"] == len(disk_files(t.directory))
        assert s["corrupt"] == 0 and s["errors"] == 0
        if eviction == "lru":
            assert s["evictions"] > 0
        else:
            assert s["evictions"] == 0 and s["rejected"] > 0
        for i, data in expected.items():
            got = t.get(key(i))
            assert got is None or bytes(got) == data
            assert (got is not None) == t.contains(key(i))
    finally:
        t.close()


def _three_unit_blocks(n: int) -> list[tuple[BlockKey, bytes]]:
    return [(key(i), payload(i, 1000)) for i in range(n)]  # 1000 B + header -> one 4 KiB unit


def test_lru_evicts_least_recently_used(tmp_path: Path) -> None:
    with SSDTier(
        str(tmp_path / "c"), 4 * UNIT, eviction="lru", high_watermark=1.0, low_watermark=0.75, free_space_floor=0
    ) as t:
        blocks = _three_unit_blocks(6)
        for k, d in blocks[:4]:
            assert t.put(k, d)
        assert t.get(blocks[0][0]) is not None  # 0 becomes most recently used
        assert t.put(*blocks[4])  # 5 units > 4: evict LRU (1, 2) down to 3 units incl. the new one
        assert [t.contains(k) for k, _ in blocks[:5]] == [True, False, False, True, True]
        assert t.stats()["evictions"] == 2 and t.used_bytes() == 3 * UNIT


def test_none_keeps_the_first_blocks(tmp_path: Path) -> None:
    with SSDTier(str(tmp_path / "c"), 4 * UNIT, eviction="none", free_space_floor=0) as t:
        blocks = _three_unit_blocks(8)
        results = [t.put(k, d) for k, d in blocks]
        assert results == [True] * 4 + [False] * 4
        for k, d in blocks[:4]:
            got = t.get(k)
            assert got is not None and bytes(got) == d
        assert t.stats()["evictions"] == 0 and t.stats()["rejected"] == 4
        assert t.put(*blocks[5]) is False and t.used_bytes() == 4 * UNIT


def test_free_space_floor_with_fake_statvfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "c"
    base = 100 * UNIT
    real = os.statvfs

    class Fake:
        f_frsize = UNIT
        f_bsize = UNIT

        def __init__(self) -> None:
            self.f_bavail = (base - disk_usage(d)[1]) // UNIT

    monkeypatch.setattr(os, "statvfs", lambda p: Fake() if str(p).startswith(str(d)) else real(p))
    with SSDTier(str(d), 1 << 30, free_space_floor=95 * UNIT) as t:
        results = [t.put(k, v) for k, v in _three_unit_blocks(10)]
        assert results == [True] * 5 + [False] * 5  # 100 units free, floor 95: room for 5
        assert Fake().f_bavail * UNIT >= 95 * UNIT and not t.is_degraded
    with SSDTier(str(d), 1 << 30, free_space_floor=95 * UNIT, eviction="lru") as t:
        for k, v in _three_unit_blocks(20):  # lru makes room by evicting its own blocks
            assert t.put(k, v)
            assert Fake().f_bavail * UNIT >= 95 * UNIT
        assert t.stats()["evictions"] > 0


@pytest.mark.parametrize("eviction", ["none", "lru"])
def test_free_space_floor_on_real_tmpfs(tmpfs: Path, eviction: str) -> None:
    floor = 512 * 1024
    with SSDTier(str(tmpfs / "c"), 1 << 30, free_space_floor=floor, eviction=eviction) as t:  # type: ignore[arg-type]
        results = []
        for i in range(60):
            results.append(t.put(key(i), payload(i, 20_000)))
            st = os.statvfs(tmpfs)
            assert st.f_bavail * st.f_frsize >= floor
        if eviction == "none":
            assert True in results and results[-1] is False
        else:  # lru keeps admitting by evicting its own oldest blocks
            assert all(results) and t.stats()["evictions"] > 0 and t.contains(key(59))
        assert t.stats()["errors"] == 0 and not t.is_degraded


# ----------------------------------------------------------------------------- disk full


def test_disk_full_degrades_once_and_keeps_serving(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fluidfs.cache")
    stored: dict[BlockKey, bytes] = {}
    with SSDTier(str(tmpfs / "c"), 64 << 20, free_space_floor=0, degraded_retry_s=None) as t:
        for i in range(100):  # 1 MiB tmpfs, 64 MiB quota: ENOSPC arrives first
            data = payload(i, 60_000)
            if not t.put(key(i), data):
                break
            stored[key(i)] = data
        assert 5 < len(stored) < 100 and t.is_degraded
        assert all(t.put(key(1000 + j), b"x") is False for j in range(20))
        for k, data in stored.items():
            got = t.get(k)
            assert got is not None and bytes(got) == data
        s = t.stats()
        assert s["errors"] == 1 and s["degraded"] == 1
        assert SSDTier.inspect(t.directory).tmp_files == 0  # the failed tmp file was removed
        assert t.used_bytes() == disk_usage(t.directory)[0]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "degraded" in warnings[0].getMessage()
    assert "ENOSPC" in warnings[0].getMessage()


def test_degraded_tier_recovers_after_retry_interval(tmpfs: Path) -> None:
    filler = tmpfs / "filler"
    with SSDTier(str(tmpfs / "c"), 64 << 20, free_space_floor=0, degraded_retry_s=0.0) as t:
        assert t.put(key(0), payload(0, 10_000))
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the filesystem from outside
        try:
            while os.write(fd, b"\0" * 4096) > 0:
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        assert t.put(key(1), payload(1, 10_000)) is False and t.is_degraded
        filler.unlink()
        assert t.put(key(2), payload(2, 10_000)) is True and not t.is_degraded
        assert all(t.get(key(i)) is not None for i in (0, 2))


# ------------------------------------------------------------------------------ locking

_CHILD_OPENER = r"""
import sys
from fluidfs.cache.ssd import SSDTier
from fluidfs.errors import CacheError
try:
    SSDTier(sys.argv[1], 1 << 20, free_space_floor=0).close()
except CacheError as e:
    print("CacheError:", e)
    sys.exit(3)
print("opened")
"""


def test_second_mount_on_same_directory_is_refused(tmp_path: Path) -> None:
    d = str(tmp_path / "c")
    t = SSDTier(d, 1 << 20, free_space_floor=0)
    try:
        t.put(key(1), payload(1))
        p = run_child(_CHILD_OPENER, d)
        out, err = p.communicate()
        assert p.returncode == 3, err
        assert f"cache directory {t.directory} is in use by another fluidfs mount (pid {os.getpid()})" in out
        with pytest.raises(CacheError, match="in use by another fluidfs mount"):
            SSDTier(d, 1 << 20, free_space_floor=0)  # a second open in-process conflicts too
        info = SSDTier.inspect(d)  # inspection works without the lock
        assert info.locked_by == os.getpid() and info.blocks == 1
        assert cache_dir_usage(d) == (t.used_bytes(), 1)
        assert t.get(key(1)) is not None  # the failed attempts did not disturb the owner
    finally:
        t.close()
    assert SSDTier.inspect(d).locked_by is None
    p = run_child(_CHILD_OPENER, d)
    out, err = p.communicate()
    assert p.returncode == 0 and "opened" in out, err


# --------------------------------------------------------------------- model-based test


class SSDModel(RuleBasedStateMachine):
    """Single-threaded puts/gets/reopens/corruptions against a dict model."""

    eviction = "none"

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="ssdmodel-")
        self.quota = 12 * UNIT
        self.t = self._open()
        self.model: dict[BlockKey, bytes] = {}

    def _open(self) -> SSDTier:
        return SSDTier(self.dir, self.quota, eviction=self.eviction, free_space_floor=0)  # type: ignore[arg-type]

    @rule(i=st.integers(0, 15), n=st.integers(0, 3 * UNIT))
    def put(self, i: int, n: int) -> None:
        data = self.model.get(key(i), payload(i, n))
        before = {k for k in self.model if self.t.contains(k)}
        if self.t.put(key(i), data):
            self.model[key(i)] = data
            assert self.t.contains(key(i))
        if self.eviction == "none":  # never loses a block
            assert before <= {k for k in self.model if self.t.contains(k)}

    @rule(i=st.integers(0, 15))
    def get(self, i: int) -> None:
        got = self.t.get(key(i))
        if got is not None:
            assert bytes(got) == self.model[key(i)]
        elif self.eviction == "none":  # nothing is ever evicted; corrupt() updates the model
            assert key(i) not in self.model

    @rule(i=st.integers(0, 15), pos=st.integers(0, 10_000))
    def corrupt(self, i: int, pos: int) -> None:
        f = block_file(self.t, key(i))
        if f.exists():
            raw = bytearray(f.read_bytes())
            raw[pos % len(raw)] ^= 0x10
            f.write_bytes(raw)
            assert self.t.get(key(i)) is None and not f.exists()
            self.model.pop(key(i), None)

    @rule()
    def reopen(self) -> None:
        self.t.close()
        self.t = self._open()

    @invariant()
    def accounting_matches_disk(self) -> None:
        assert self.t.used_bytes() == disk_usage(self.dir)[0] <= self.quota

    def teardown(self) -> None:
        import shutil

        self.t.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class SSDModelLRU(SSDModel):
    eviction = "lru"


_model_settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestSSDModelNone = SSDModel.TestCase
TestSSDModelNone.settings = _model_settings
TestSSDModelLRU = SSDModelLRU.TestCase
TestSSDModelLRU.settings = _model_settings


def test_a_cache_directory_it_creates_is_private(tmp_path: Path) -> None:
    tier = SSDTier(str(tmp_path / "new" / "cache"), 1 << 20, free_space_floor=0)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "new" / "cache").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(tmp_path / "new" / "cache" / "blocks").st_mode) == 0o700
    finally:
        tier.close()


def test_discard_deletes_the_block_and_frees_its_bytes_for_a_full_none_tier(tmp_path: Path) -> None:
    t = SSDTier(str(tmp_path / "cache"), 64 * 1024, free_space_floor=0)  # eviction none
    try:
        i = 0
        while t.put(key(i), payload(i, 8000)):
            i += 1
        assert not t.put(key(i), payload(i, 8000))  # full: "none" admits nothing more
        used = t.used_bytes()
        path = block_file(t, key(0))
        assert t.discard(key(0)) and not path.exists() and t.get(key(0)) is None
        assert t.used_bytes() < used
        assert t.put(key(i), payload(i, 8000))  # the freed space takes a new block
        assert not t.discard(key(0))  # gone already
    finally:
        t.close()
