"""Stopping a mount at any moment: the daemon always exits, the mount is always gone, the CLI never hangs.

Each case mounts an HTTP source served by a child process (so the source can be killed or frozen
with SIGSTOP), brings the mount to a moment (idle; after reads; with a reader in flight), changes
the source (up, killed, paused), lets the metadata TTL (0, the default, 1 s) run out, and stops
the daemon with SIGTERM, SIGINT or SIGHUP, started in the background or in the foreground.  The
factors are combined pairwise (two 3-level orthogonal arrays, one per daemon mode: every pair of
levels of any two factors occurs, and 18 of the 27 TTL × source × moment triples), so the whole
matrix stays well under two minutes.  Every CLI call runs under a hard timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluidfs.daemon.record import read_record
from fluidfs.util.mounts import is_mounted
from fluidfs.util.proc import cmdline, pid_alive
from tests.support.fuse import fluidfs, force_unmount, needs_fuse
from tests.support.httpproc import HTTPServerProcess

pytestmark = needs_fuse

TTLS = {"ttl0": ["--metadata-ttl", "0"], "ttl-default": [], "ttl-expired": ["--metadata-ttl", "1"]}
SOURCES = ("up", "killed", "paused")
MOMENTS = ("idle", "after-reads", "reading")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: a 3-level orthogonal array for 4 factors (TTL, source, moment, signal): every pair occurs once
L9 = (
    (0, 0, 0, 0),
    (0, 1, 1, 1),
    (0, 2, 2, 2),
    (1, 0, 1, 2),
    (1, 1, 2, 0),
    (1, 2, 0, 1),
    (2, 0, 2, 1),
    (2, 1, 0, 2),
    (2, 2, 1, 0),
)
CASES = [
    (list(TTLS)[t], SOURCES[s], MOMENTS[(m + shift) % 3], SIGNALS[g], mode)
    for mode, shift in (("bg", 0), ("fg", 1))
    for t, s, m, g in L9
]
#: after the stop, one CLI command per case (in turn) must answer at once that nothing is mounted
AFTER = (("umount",), ("umount", "--lazy"), ("status",), ("refresh",))
#: the daemon gives in-flight requests this long after a stop (SHUTDOWN_GRACE) before it abandons them
EXIT_BOUND = 25.0
CLI_TIMEOUT = 20.0

READER = r"""
import os, sys
root = sys.argv[1]
for _ in range(50):
    for d, _dirs, names in os.walk(root):
        for n in names:
            try:
                with open(os.path.join(d, n), "rb") as f:
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    while f.read(1 << 20):
                        pass
            except OSError:
                sys.exit(0)
"""


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    (root / "dir").mkdir()
    (root / "dir" / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    for i in range(20):
        (root / "dir" / f"small{i:02d}.txt").write_bytes(b"x" * (1000 + i))
    (root / "top.txt").write_bytes(b"top\n")
    return root


@pytest.fixture(scope="module")
def server(www: Path) -> Iterator[HTTPServerProcess]:
    with HTTPServerProcess(www) as s:
        yield s


@pytest.mark.parametrize(
    "ttl,source,moment,sig,mode,after",
    [(*case, AFTER[i % len(AFTER)]) for i, case in enumerate(CASES)],
    ids=[f"{t}-{s}-{m}-{signal.Signals(g).name}-{d}" for t, s, m, g, d in CASES],
)
def test_stop_at_any_moment(
    server: HTTPServerProcess,
    tmp_path: Path,
    ttl: str,
    source: str,
    moment: str,
    sig: int,
    mode: str,
    after: tuple[str, ...],
) -> None:
    server.resume()
    server.start()
    mnt = tmp_path / "m"
    mnt.mkdir()
    pidfile = tmp_path / "pid"
    args = ["mount", server.url, str(mnt), "--metrics-addr", "none", "--pid-file", str(pidfile), *TTLS[ttl]]
    daemon: subprocess.Popen[bytes] | None = None
    reader: subprocess.Popen[bytes] | None = None
    try:
        if mode == "fg":
            daemon = subprocess.Popen(
                [sys.executable, "-m", "fluidfs", *args, "--foreground", "--log-file", str(tmp_path / "log")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while read_record(str(mnt)) is None:
                assert daemon.poll() is None and time.monotonic() < deadline, "foreground mount did not come up"
                time.sleep(0.05)
            pid = daemon.pid
        else:
            res = fluidfs(*args, "--timeout", "60", timeout=90)
            assert res.returncode == 0, res.stderr
            pid = int(pidfile.read_text())
        if moment == "after-reads":
            assert sorted(os.listdir(mnt)) == ["dir", "top.txt"]
            assert len((mnt / "dir" / "big.bin").read_bytes()) == 6 * 1024 * 1024
            assert (mnt / "top.txt").read_bytes() == b"top\n"
        if source == "killed":
            server.kill()
        elif source == "paused":
            server.pause()
        if moment == "reading":
            reader = subprocess.Popen([sys.executable, "-c", READER, str(mnt)])
        time.sleep(0.3)  # let the reader's requests reach the daemon
        # while it runs, the CLI finds it without touching the mount
        assert fluidfs("refresh", str(mnt), timeout=CLI_TIMEOUT).returncode == 0
        if source == "up" and moment != "reading":
            res = fluidfs("status", str(mnt), timeout=CLI_TIMEOUT)
            assert res.returncode == 0, res.stderr
        if ttl == "ttl-expired":
            time.sleep(1.5)  # every attribute the kernel holds has expired now

        os.kill(pid, sig)
        deadline = time.monotonic() + EXIT_BOUND
        if daemon is not None:
            assert daemon.wait(timeout=EXIT_BOUND) == 0
        while pid_alive(pid):
            assert time.monotonic() < deadline, f"daemon {pid} still running {EXIT_BOUND:.0f}s after the signal"
            time.sleep(0.05)
        assert not is_mounted(str(mnt))
        assert read_record(str(mnt)) is None
        if reader is not None:
            reader.wait(timeout=CLI_TIMEOUT)  # its blocked read ended with an error
        res = fluidfs(*after, str(mnt), timeout=CLI_TIMEOUT)
        assert res.returncode == 1, (after, res.stderr)
        assert "not mounted" in res.stderr or "not a fluidfs mount" in res.stderr, (after, res.stderr)
    finally:
        server.resume()
        for p in (reader, daemon):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        force_unmount(str(mnt))


def _running_with(arg: str) -> list[int]:
    """Live processes with ``arg`` on their command line."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and arg in cmdline(int(p)) and pid_alive(int(p))]


@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_stop_during_start_up(server: HTTPServerProcess, tmp_path: Path, sig: signal.Signals) -> None:
    """A daemon stopped while it still waits for a frozen source mounts nothing and leaves nothing;
    so does ``fluidfs mount`` interrupted (Ctrl-C) while it waits for its daemon."""
    server.resume()
    server.start()
    mnt, mnt2 = tmp_path / "m", tmp_path / "m2"
    mnt.mkdir()
    mnt2.mkdir()
    log = tmp_path / "parent.log"
    server.pause()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "fluidfs", "mount", server.url, str(mnt), "--foreground", "--metrics-addr", "none"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    parent = subprocess.Popen(
        [sys.executable, "-m", "fluidfs", "mount", server.url, str(mnt2), "--pid-file", str(tmp_path / "pid")]
        + ["--log-file", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not log.exists():  # the parent has started its daemon child
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        time.sleep(1.0)  # both daemons are waiting for the source now
        daemon.send_signal(sig)
        parent.send_signal(signal.SIGINT)
        daemon.wait(timeout=CLI_TIMEOUT)
        assert parent.wait(timeout=CLI_TIMEOUT) == 130
        assert parent.stderr is not None and parent.stderr.read().decode().strip() == "fluidfs: interrupted"
        assert not is_mounted(str(mnt)) and not is_mounted(str(mnt2))
        assert read_record(str(mnt)) is None
        deadline = time.monotonic() + CLI_TIMEOUT
        while _running_with(str(mnt2)):  # the parent's daemon child was stopped too
            assert time.monotonic() < deadline, _running_with(str(mnt2))
            time.sleep(0.1)
    finally:
        server.resume()
        for p in (daemon, parent):
            if p.poll() is None:
                p.kill()
                p.wait()
        force_unmount(str(mnt))
        force_unmount(str(mnt2))
