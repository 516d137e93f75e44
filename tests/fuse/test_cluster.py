"""The cluster cache end to end: a real FUSE mount and ``fluidfs worker`` processes on loopback over a
real S3 server (SeaweedFS), all reading one dataset.

- a mount and two workers read every byte correctly, and each block leaves the source once for the
  whole cluster; ``fluidfs status`` shows the members (from the mount, and ``--worker`` from a worker);
- a worker stopped with SIGTERM hands its blocks over: the remaining members serve them with no
  source read;
- a worker killed with SIGKILL while the mount reads costs no read error;
- a worker that joins gets the blocks it now owns from the workers that held them (pushed, then
  dropped there), with no source read;
- mistakes (bad peers file, missing or short secret, ``--listen`` alone, a worker without a cache
  directory, a peer port in use) end with one line and exit 2; a bad source with exit 3.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fluidfs.util.prom import fetch_samples, total
from tests.support.fuse import Mount, fluidfs, needs_fuse
from tests.support.net import free_ports
from tests.support.s3server import S3Server
from tests.support.workers import SECRET, WorkerProcess, write_peers, write_secret

pytestmark = needs_fuse

BUCKET = "cluster"
MiB = 1 << 20
FILES = {
    "a/shard-0.bin": 5 * MiB + 100,
    "a/shard-1.bin": 3 * MiB + 7,
    "c/one.bin": MiB,
    "d/big.bin": 8 * MiB + 3,
    **{f"b/small-{i}.txt": 40_000 + 1000 * i for i in range(6)},
}
BLOCKS = sum(max(1, -(-size // MiB)) for size in FILES.values())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server("seaweed", data_dir=tmp_path_factory.mktemp("weed")) as s:
        yield s


@pytest.fixture(scope="module")
def data(server: S3Server) -> dict[str, bytes]:
    rnd = random.Random(11)
    out = {name: rnd.randbytes(size) for name, size in FILES.items()}
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    for name, body in out.items():
        client.put_object(Bucket=BUCKET, Key=f"ds/{name}", Body=body)
    return out


class Cluster:
    """A peers file naming a mount ``m`` and workers, the secret, and how to start each of them."""

    def __init__(self, tmp: Path, server: S3Server, workers: list[str]) -> None:
        self.tmp, self.server = tmp, server
        names = ["m", *workers]
        self.addrs = {n: f"127.0.0.1:{p}" for n, p in zip(names, free_ports(len(names)), strict=True)}
        self.peers = tmp / "peers"
        write_peers(self.peers, self.addrs)
        self.secret = write_secret(tmp / "secret")
        self.env = server.env()
        self.source = f"s3://{BUCKET}/ds"
        self.workers: dict[str, WorkerProcess] = {}

    def start_workers(self) -> None:
        for n, addr in self.addrs.items():
            if n != "m":
                self.workers[n] = WorkerProcess(
                    n, self.source, self.tmp / f"cache-{n}", addr, self.peers, self.secret,
                    "--endpoint", self.server.endpoint, log_path=self.tmp / f"{n}.log", env=self.env, wait=False,
                )  # fmt: skip
        for w in self.workers.values():
            w.wait_ready()

    def mount(self) -> Mount:
        return Mount(
            self.source, str(self.tmp / "mnt"), "--endpoint", self.server.endpoint, "--cache-dir",
            str(self.tmp / "cache-m"), "--block-size", "1Mi", "--memory-size", "64Mi", "--metadata-ttl", "indefinite",
            "--listen", self.addrs["m"], "--peers", str(self.peers), "--peer-secret-file", str(self.secret),
            "--peer-connect-timeout", "0.5", "--peer-read-timeout", "3", "--log-file", str(self.tmp / "m.log"),
            env=self.env,
        )  # fmt: skip

    def stop(self) -> None:
        for w in self.workers.values():
            w.kill()


@pytest.fixture
def cluster(tmp_path: Path, server: S3Server, data: dict[str, bytes]) -> Iterator[Cluster]:
    c = Cluster(tmp_path, server, ["w0", "w1"])
    try:
        c.start_workers()
        yield c
    finally:
        c.stop()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_all(mnt: str, names: list[str], threads: int = 4) -> dict[str, str]:
    def one(name: str) -> tuple[str, str]:
        with open(os.path.join(mnt, name), "rb") as f:
            return name, sha(f.read())

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, names))


def mount_metrics(m: Mount) -> tuple[float, float, float]:
    """(source block reads, source bytes, FUSE errors) of a mount."""
    samples = fetch_samples(str(m.record()["metrics"]))
    return (
        total(samples, "fluidfs_source_requests_total", op="read"),
        total(samples, "fluidfs_source_bytes_total"),
        total(samples, "fluidfs_fuse_errors_total"),
    )


def test_a_mount_and_two_workers_read_every_byte_fetching_each_block_once(
    cluster: Cluster, data: dict[str, bytes]
) -> None:
    expected = {n: sha(b) for n, b in data.items()}
    with cluster.mount() as m:
        assert read_all(m.mnt, sorted(data)) == expected
        assert read_all(m.mnt, sorted(data, reverse=True)) == expected  # again: nothing new from the source
        reads, nbytes, errors = mount_metrics(m)
        for w in cluster.workers.values():
            samples = w.metrics()
            reads += total(samples, "fluidfs_source_requests_total", op="read")
            nbytes += total(samples, "fluidfs_source_bytes_total")
        assert (reads, nbytes, errors) == (BLOCKS, sum(FILES.values()), 0)
        # each worker served some of the mount's reads
        for w in cluster.workers.values():
            assert total(w.metrics(), "fluidfs_peer_requests_total", side="server", op="get", result="ok") > 0, w.name

        st = json.loads(fluidfs("status", "--json", m.mnt).stdout)["cluster"]
        assert st["self"] == "m" and st["dataset"] == BUCKET
        assert {r["id"]: r["health"] for r in st["members"]} == {"m": "up", "w0": "up", "w1": "up"}
        assert sum(r["ssd_used_bytes"] for r in st["members"]) >= sum(FILES.values())
        assert sum(r["share"] for r in st["members"]) == pytest.approx(1.0)
        text = fluidfs("status", m.mnt).stdout
        assert "cluster    m at " in text and "3 members" in text, text
        w0 = cluster.workers["w0"]
        res = fluidfs("status", "--worker", w0.address, env={"FLUIDFS_PEER_SECRET": SECRET})
        assert res.returncode == 0, res.stderr
        assert f"fluidfs member {w0.address} of dataset {BUCKET}" in res.stdout
        assert all(f" {n} " in res.stdout for n in ("m", "w0", "w1")), res.stdout
        res = fluidfs("status", "--worker", w0.address, env={"FLUIDFS_PEER_SECRET": "x" * 32})
        assert res.returncode == 1 and "401" in res.stdout, res.stdout


def test_a_worker_stopped_with_sigterm_hands_its_blocks_over(cluster: Cluster, data: dict[str, bytes]) -> None:
    expected = {n: sha(b) for n, b in data.items()}
    w0, w1 = cluster.workers["w0"], cluster.workers["w1"]
    with cluster.mount() as m:
        assert read_all(m.mnt, sorted(data)) == expected
        owned_by_w0 = w0.source_reads()
        assert owned_by_w0 > 0
        # w0 leaves: first the membership (as a terminating pod leaves its EndpointSlice), then SIGTERM
        write_peers(cluster.peers, {n: a for n, a in cluster.addrs.items() if n != "w0"})
        assert w0.stop() == 0
        log = w0.log_path.read_text()
        assert f"handed off {owned_by_w0} of {owned_by_w0} owned blocks" in log, log
        assert "0 failed, 0 not sent" in log, log
        w1_reads = w1.source_reads()
    # a new mount process (its memory tier empty; same SSD directory) reads everything again: the blocks
    # w0 owned are now at their new owners, so nothing comes from the source
    with cluster.mount() as m:
        assert read_all(m.mnt, sorted(data)) == expected
        reads, _, errors = mount_metrics(m)
        assert (reads, errors) == (0, 0)
        assert w1.source_reads() == w1_reads


def test_a_worker_killed_while_the_mount_reads_costs_no_read_error(cluster: Cluster, data: dict[str, bytes]) -> None:
    expected = {n: sha(b) for n, b in data.items()}
    names = ["c/one.bin", "d/big.bin", "a/shard-0.bin", "a/shard-1.bin", *sorted(n for n in data if "small" in n)]
    with cluster.mount() as m:
        first_done = threading.Event()
        got: dict[str, str] = {}
        failures: list[BaseException] = []

        def reader() -> None:
            try:
                for name in names:
                    with open(os.path.join(m.mnt, name), "rb") as f:
                        got[name] = sha(f.read())
                    first_done.set()
            except BaseException as exc:  # reported below
                failures.append(exc)
                first_done.set()

        t = threading.Thread(target=reader)
        t.start()
        assert first_done.wait(60)
        cluster.workers["w0"].kill()  # SIGKILL while the big file is being read
        t.join(120)
        assert not t.is_alive() and not failures, failures
        assert got == {n: expected[n] for n in names}
        _, _, errors = mount_metrics(m)
        assert errors == 0


def ssd_used(w: WorkerProcess) -> float:
    return total(w.metrics(), "fluidfs_cache_used_bytes", tier="ssd")


def test_a_joining_worker_gets_its_share_from_the_workers_that_held_it(
    tmp_path: Path, server: S3Server, data: dict[str, bytes]
) -> None:
    expected = {n: sha(b) for n, b in data.items()}
    c = Cluster(tmp_path, server, ["w0", "w1"])
    write_peers(c.peers, {n: a for n, a in c.addrs.items() if n != "w1"})  # w1 starts outside the set
    try:
        c.start_workers()
        w0, w1 = c.workers["w0"], c.workers["w1"]
        with c.mount() as m:  # the mount stays a member while the blocks move (a node keeps its mount)
            assert read_all(m.mnt, sorted(data)) == expected
            held = ssd_used(w0)
            assert held > 0 and w0.source_reads() > 0
            write_peers(c.peers, c.addrs)  # w1 joins (its pod became ready)
            deadline = time.monotonic() + 60
            while "rebalanced:" not in w0.log_path.read_text():
                assert time.monotonic() < deadline, w0.log_tail()
                time.sleep(0.2)
        line = next(ln for ln in w0.log_path.read_text().splitlines() if "rebalanced:" in ln)
        pattern = r"(\d+) of (\d+) held blocks are owned by others: (\d+) moved, (\d+) already there, (\d+) kept"
        found = re.search(pattern, line)
        assert found is not None, line
        disowned, _held, moved, present, kept = map(int, found.groups())
        assert disowned > 0 and kept == 0 and moved + present == disowned, line
        assert total(w0.metrics(), "fluidfs_peer_rebalance_blocks_total", result="moved") == moved
        assert ssd_used(w0) < held  # the space of the blocks it gave away is free for the ones it owns
        assert ssd_used(w1) > 0 and w1.source_reads() == 0  # pushed, not fetched
        sources_before = w0.source_reads()
        with c.mount() as m:  # a new mount process reads everything again: nothing from the source
            assert read_all(m.mnt, sorted(data)) == expected
            reads, _, errors = mount_metrics(m)
            assert (reads, errors) == (0, 0)
        assert (w0.source_reads(), w1.source_reads()) == (sources_before, 0)
    finally:
        c.stop()


# ----------------------------------------------------------------------------- mistakes


@pytest.fixture
def local(tmp_path: Path) -> tuple[Path, Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(b"x" * 1000)
    return src, write_secret(tmp_path / "secret"), tmp_path / "mnt"


def one_error_line(res: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    """Exit ``code`` and one error line (the last; a worker's log lines may come before it)."""
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("fluidfs: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    assert all(ln[:4].isdigit() for ln in lines[:-1]), res.stderr  # log lines only
    for p in parts:
        assert p in errors[0], (p, errors[0])


def test_mount_with_a_bad_peers_file_or_secret_exits_2_with_one_line(
    local: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    src, secret, mnt = local
    mnt.mkdir()
    (port,) = free_ports(1)
    peers = tmp_path / "peers"
    peers.write_text(f"# members\nm 127.0.0.1:{port}\nw0 nowhere\n")
    base = ["mount", str(src), str(mnt), "--listen", f"127.0.0.1:{port}", "--peers", str(peers)]
    env = {"FLUIDFS_PEER_SECRET": ""}
    one_error_line(fluidfs(*base, "--peer-secret-file", str(secret), env=env), 2, f"{peers}:3", "HOST:PORT")
    write_peers(peers, {"m": f"127.0.0.1:{port}"})
    one_error_line(fluidfs(*base, env=env), 2, "no peer secret")
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []


def test_a_worker_on_a_taken_port_exits_2_and_on_a_bad_source_3(local: tuple[Path, Path, Path], tmp_path: Path) -> None:
    src, secret, _ = local
    (port,) = free_ports(1)
    peers = tmp_path / "peers"
    write_peers(peers, {"w": f"127.0.0.1:{port}"})
    flags = ["--cache-dir", str(tmp_path / "cache"), "--listen", f"127.0.0.1:{port}", "--peers", str(peers)]
    flags += ["--peer-secret-file", str(secret), "--metrics-addr", "none"]
    one_error_line(fluidfs("worker", f"file://{tmp_path}/missing", *flags), 3, "does not exist")
    with socket.create_server(("127.0.0.1", port)):  # the peer port is taken
        one_error_line(fluidfs("worker", str(src), *flags), 2, f"127.0.0.1:{port}")
