"""``fluidfs worker`` processes for tests: start one, wait for its ready line, read its metrics, stop or kill it.

    with WorkerProcess("w0", source, cache_dir, listen, peers, secret, log_path=..., env=...) as w:
        # (wait=False starts it without waiting; then w.wait_ready(): start several at once)
        w.metrics()          # its Prometheus samples
        w.stop()             # SIGTERM: hand off, exit (returns the exit code)

The worker runs the real CLI (``python -m fluidfs worker``); its stderr (the log) goes to
``log_path``.  Leaving the ``with`` block kills it if it still runs, so no test leaves one behind.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from fluidfs.util.prom import Sample, fetch_samples, total

ROOT = Path(__file__).resolve().parents[2]
SECRET = "cluster-test-secret-0123456789abcdef"
_READY = re.compile(r"serving peers on (\S+) as (.+), metrics (\S+)$")


def write_secret(path: Path) -> Path:
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def write_peers(path: Path, members: dict[str, str]) -> None:
    """A peers file ``ID HOST:PORT`` per member, replaced atomically (a polling reader never sees half)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{name} {addr}\n" for name, addr in members.items()))
    os.replace(tmp, path)


class WorkerProcess:
    """One ``fluidfs worker`` (see the module docstring)."""

    def __init__(
        self,
        name: str,
        source: str,
        cache_dir: Path,
        listen: str,
        peers: Path,
        secret: Path,
        *flags: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
        wait: bool = True,
    ) -> None:
        self.name = name
        self.log_path = log_path
        argv = [
            sys.executable, "-m", "fluidfs", "worker", source, "--cache-dir", str(cache_dir), "--listen", listen,
            "--peers", str(peers), "--peer-secret-file", str(secret), "--metrics-addr", "127.0.0.1:0",
            "--block-size", "1Mi", "--memory-size", "32Mi", "--peer-connect-timeout", "0.5",
            "--peer-read-timeout", "3", "--log-level", "info", *flags,
        ]  # fmt: skip
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT, env={**os.environ, **(env or {})}
        )
        self.address = self.member = self.metrics_url = ""
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the ready line (address, member id, metrics URL); kills the worker on failure."""
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker {self.name} not ready within {timeout} s:\n{self.log_tail()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"worker {self.name} exited ({self.proc.wait()}):\n{self.log_tail()}")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        found = _READY.search(line)
        if found is None:
            raise RuntimeError(f"worker {self.name}: unexpected first line {line!r}")
        self.address, self.member, self.metrics_url = found.group(1), found.group(2), found.group(3)

    def metrics(self) -> list[Sample]:
        return fetch_samples(self.metrics_url)

    def source_reads(self) -> int:
        return int(total(self.metrics(), "fluidfs_source_requests_total", op="read"))

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful leave with handoff); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.kill()
