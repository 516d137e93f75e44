"""Cluster-benchmark members: fluidfs mounts and workers, each started inside its network namespace.

A :class:`Member` is one ``fluidfs mount --foreground`` (``kind="mount"``) or ``fluidfs worker``
(``kind="worker"``) process, run as ``nsenter --net=/run/netns/NS python -m fluidfs ...`` so
that it talks to the store and to its peers through its shaped veth while its FUSE mount stays
visible to the host (the readers run there).  With ``clustered`` it joins the cluster of the
shared peers file (``--listen IP:7070 --peers FILE --peer-secret-file FILE``); without, it is an
independent node with the same cache settings.  Its metrics are served on ``IP:9100``.

Every member registers its mount point and pid with the harness's :class:`Janitor`, so a
failed or interrupted run still unmounts and kills everything.

Caveats: ports are fixed (each member has its own namespace, so they cannot collide).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fluidfs.util.proc import pid_alive
from fluidfs.util.prom import Sample, parse_samples
from fluidfs.util.prom import total as prom_total
from tools.bench.netlab import Slot
from tools.bench.store import Store
from tools.bench.systems import Janitor, force_unmount, kill_pid, raise_readahead, wait_mounted

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER_PORT = 7070
METRICS_PORT = 9100
SECRET = "fluidfs-cluster-bench-secret-0123456789"  # loopback-only benchmark cluster


@dataclass
class CacheSpec:
    """Cache settings of a member (the same for clustered and independent members of a phase)."""

    cache_size: int
    memory_size: int
    eviction: str | None = None  # None: fluidfs's default
    extra: list[str] = field(default_factory=list)  # more fluidfs flags (e.g. --peer-copy ssd)


def write_peers(path: Path, slots: list[Slot]) -> None:
    """Atomically (tmp + rename) write the peers file naming ``slots`` (ids m1, m2, ..., weight 1)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"m{s.index} {s.ip}:{PEER_PORT} 1\n" for s in slots))
    os.replace(tmp, path)


class Member:
    """One member process (see the module docstring)."""

    def __init__(
        self,
        slot: Slot,
        kind: str,
        base: Path,
        store: Store,
        janitor: Janitor,
        cache: CacheSpec,
        *,
        clustered: bool,
        peers_file: Path | None,
        secret_file: Path | None,
        read_ahead_kb: int = 1024,
    ) -> None:
        self.slot, self.kind, self.store, self.janitor, self.cache = slot, kind, store, janitor, cache
        self.clustered = clustered
        self.name = f"m{slot.index}"
        self.base = base / f"{self.name}-{kind}"
        self.mnt = self.base / "mnt"
        self.cache_dir = self.base / "cache"
        self.log = self.base / "fluidfs.log"
        self.peers_file, self.secret_file = peers_file, secret_file
        self.read_ahead_kb = read_ahead_kb
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        src = f"s3://{self.store.bucket}"
        cmd = [*self.slot.prefix(), sys.executable, "-m", "fluidfs", self.kind, src]
        if self.kind == "mount":
            cmd += [str(self.mnt), "--foreground", "--log-file", str(self.log)]
        cmd += [
            "--cache-dir", str(self.cache_dir),
            "--cache-size", str(self.cache.cache_size),
            "--memory-size", str(self.cache.memory_size),
            "--endpoint", self.store.endpoint,
            "--metrics-addr", f"{self.slot.ip}:{METRICS_PORT}",
        ]  # fmt: skip
        if self.cache.eviction:
            cmd += ["--eviction", self.cache.eviction]
        if self.clustered:
            assert self.peers_file is not None and self.secret_file is not None
            # Teardown between phases need not wait long for handoffs (no phase measures a graceful leave).
            cmd += ["--listen", f"{self.slot.ip}:{PEER_PORT}", "--peers", str(self.peers_file),
                    "--peer-secret-file", str(self.secret_file), "--handoff-timeout", "5"]  # fmt: skip
        return cmd + self.cache.extra

    def start(self, timeout: float = 120.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process (returns at once; :meth:`wait_ready` waits for the mount and metrics)."""
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.store.env())
        if self.kind == "mount":
            self.janitor.add_mount(str(self.mnt))
        out = open(self.base / f"{self.kind}.out", "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        finally:
            out.close()
        self.janitor.add_pid(self.proc.pid)

    def wait_ready(self, timeout: float = 120.0) -> None:
        if self.kind == "mount":
            wait_mounted(str(self.mnt), timeout, self.proc, self.base / f"{self.kind}.out")
            raise_readahead(str(self.mnt), self.read_ahead_kb)
        self.wait_metrics(timeout)

    def wait_metrics(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.metrics() is None:
            if self.proc is not None and self.proc.poll() is not None:
                tail = (self.base / f"{self.kind}.out").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{self.name} ({self.kind}) exited {self.proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} ({self.kind}): no metrics at {self.metrics_url()} in {timeout:.0f}s")
            time.sleep(0.1)

    def metrics_url(self) -> str:
        return f"http://{self.slot.ip}:{METRICS_PORT}/metrics"

    def metrics(self) -> list[Sample] | None:
        """Every sample of the member's Prometheus endpoint; None if it does not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url(), timeout=5) as r:
                return parse_samples(r.read().decode())
        except OSError:
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL, no handoff (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Unmount (mount) or SIGTERM (worker); SIGKILL whatever is left after a grace period."""
        if self.kind == "mount":
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([sys.executable, "-m", "fluidfs", "umount", str(self.mnt)], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)  # fmt: skip
            force_unmount(str(self.mnt))
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    kill_pid(self.proc.pid, grace=0.1)
                    self.proc.wait(10)
            elif pid_alive(self.proc.pid):
                kill_pid(self.proc.pid)


def total(samples: list[Sample] | None, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels``; 0 when the member did not answer."""
    return prom_total(samples or [], name, **labels)
