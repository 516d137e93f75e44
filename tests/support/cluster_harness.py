"""Test helpers for the cluster cache: counting source, in-process members, member processes.

* :class:`CountingSource` — a LocalSource that counts reads per block, can be slowed down or
  switched "down" (every read raises UnavailableError).
* :func:`make_files` — random files in a directory; returns their bytes.
* :class:`Member` / :func:`start_members` — in-process members (TieredCache + CacheBlockProvider +
  PeerNode over a peers file) for component tests inside one trio loop.
* :class:`MemberProcess` — a member in its own process (``tests/support/cluster_member.py``),
  driven with JSON lines over stdin/stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from fluidfs.cache.base import BlockKey, Buffer
from fluidfs.cache.memory import MemoryTier
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.cluster.node import PeerNode, PeerSettings
from fluidfs.cluster.provider import CacheBlockProvider
from fluidfs.errors import UnavailableError
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.local import LocalSource, version_of

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"cluster-test-secret-0123456789abcdef"
KiB = 1024
MiB = 1024 * KiB


class CountingSource(LocalSource):
    """A LocalSource that counts block reads (``reads[(path, start)]``), can be slow or down."""

    def __init__(self, root: str | os.PathLike[str], delay: float = 0.0) -> None:
        super().__init__(root)
        self.lock = threading.Lock()
        self.reads: Counter[tuple[str, int]] = Counter()
        self.delay = delay
        self.down = False

    def read(self, path: str, start: int, end: int, version: str = "") -> bytes:
        if self.down:
            raise UnavailableError("source is down (test)", self.url(path))
        with self.lock:
            self.reads[(path, start)] += 1
        if self.delay:
            time.sleep(self.delay)
        return super().read(path, start, end, version)

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.reads.values())


def make_files(root: Path, sizes: dict[str, int], seed: int = 1) -> dict[str, bytes]:
    """Create files of the given sizes with random content under ``root``; return their bytes."""
    rnd = random.Random(seed)
    out: dict[str, bytes] = {}
    for name, size in sizes.items():
        data = rnd.randbytes(size)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[name] = data
    return out


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound and released: tiny race, fine for tests)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def write_peers(path: Path, members: Sequence[tuple[str, str] | tuple[str, str, float]]) -> None:
    """Write a peers file atomically (so a polling reader never sees half a file)."""
    lines = ["# test peers file"] + [" ".join(str(x) for x in m) for m in members]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def block_keys(source: LocalSource, rel: str, bs: int) -> list[BlockKey]:
    st = os.stat(os.path.join(source.root, rel))
    n = max(1, -(-st.st_size // bs))
    return [BlockKey(source.url(rel), version_of(st), bs, i) for i in range(n)]


async def read_through(cache: TieredCache, asource: AsyncSource, rel: str, bs: int, concurrency: int = 4) -> bytes:
    """Read a whole file block by block through ``cache`` (as the FUSE reader does)."""
    assert isinstance(asource.source, LocalSource)
    keys = block_keys(asource.source, rel, bs)
    size = os.stat(os.path.join(asource.source.root, rel)).st_size
    parts: list[Buffer] = [b""] * len(keys)
    todo = iter(enumerate(keys))

    async def worker() -> None:
        for i, key in todo:
            start, end = key.start, min(key.start + bs, size)

            async def fetch(start: int = start, end: int = end, version: str = key.version) -> bytes:
                return await asource.read(rel, start, end, version)

            parts[i] = await cache.get(key, fetch)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return b"".join(bytes(p) for p in parts)


@dataclass
class Member:
    """One in-process member: its source, cache, provider and PeerNode."""

    name: str
    source: CountingSource
    asource: AsyncSource
    cache: TieredCache
    node: PeerNode
    bs: int
    ssd: SSDTier | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def read(self, rel: str, concurrency: int = 4) -> bytes:
        return await read_through(self.cache, self.asource, rel, self.bs, concurrency)

    def close(self) -> None:
        if self.ssd is not None:
            self.ssd.close()


def build_member(
    name: str,
    data_root: Path,
    work: Path,
    listen: str,
    peers_file: Path,
    dataset: str,
    *,
    bs: int = 256 * KiB,
    mem: int = 64 * MiB,
    ssd_quota: int | None = None,
    source_delay: float = 0.0,
    **settings: Any,
) -> Member:
    source = CountingSource(data_root, delay=source_delay)
    asource = AsyncSource(source, dataset, trio.CapacityLimiter(8))
    ssd = None
    if ssd_quota:
        ssd = SSDTier(str(work / f"ssd-{name}"), ssd_quota, free_space_floor=0)
    cache = TieredCache(MemoryTier(mem, "lru"), ssd, dataset=dataset)
    provider = CacheBlockProvider(dataset, cache, [asource], block_size=bs)
    opts: dict[str, Any] = {"poll_interval": 0.1, "connect_timeout": 0.5, "read_timeout": 2.0, "fetch_timeout": 5.0}
    opts.update(settings)
    node = PeerNode(
        dataset, PeerSettings(listen=listen, peers_file=str(peers_file), **opts), cache, provider, secret=SECRET
    )
    return Member(name, source, asource, cache, node, bs, ssd)


async def start_member(nursery: trio.Nursery, m: Member) -> None:
    """Run ``m`` (its cache's background writes and its node) in ``nursery`` until ``m.scope`` is cancelled."""

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with m.scope:
            async with trio.open_nursery() as inner:
                m.cache.start(inner)
                await inner.start(m.node.run)
                task_status.started()

    await nursery.start(run)


# ------------------------------------------------------------------------ member processes


class MemberProcess:
    """A member in its own process; ``call(op, **args)`` sends one JSON command, returns the reply."""

    def __init__(self, args: dict[str, Any], *, log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.cluster_member", json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
        )
        self._buf = b""
        ready = self._line(30.0)
        if not ready.get("ready"):
            self.kill()
            raise RuntimeError(f"member did not start: {ready} (log {log_path})")
        self.address = str(ready["address"])

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from member within {timeout} s (log {self.log_path})")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise EOFError(f"member exited ({self.proc.poll()}); log {self.log_path}:\n{self.log_tail()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float = 30.0) -> dict[str, Any]:
        got = self._line(timeout)
        if "error" in got:
            raise RuntimeError(f"member error: {got['error']} (log {self.log_path})")
        return got

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.reply(timeout)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit", timeout=10)
            except (OSError, EOFError, TimeoutError, RuntimeError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
