"""The emulated remote object store: SeaweedFS on loopback plus the latency proxy in front of it.

With a bandwidth cap and root, the proxy runs inside a network namespace joined by a veth pair
that carries a ``tc tbf`` qdisc (:class:`NetnsLink`); otherwise the proxy shapes in user space.

:func:`open_store` starts SeaweedFS through the test suite's launcher
(``tests.support.s3server.S3Server("seaweed")``), then starts ``python -m tools.bench.proxy`` as
its own process.  Dataset generation talks to SeaweedFS directly (``direct_endpoint``); every
system under test gets ``endpoint`` (the proxy).

Caveats: free ports are picked by binding port 0 and closing the socket, so a concurrent
process could steal one (startup then fails with a clear error).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.s3server import S3Server

ACCESS_KEY = "fluidfs-bench-key"
SECRET_KEY = "fluidfs-bench-secret"  # throw-away credentials for a loopback-only server
REGION = "us-east-1"
BUCKET = "fluidfs-bench"


def kill_group(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """SIGTERM the process group of ``proc`` (started with a new session), SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def make_client(endpoint: str, access_key: str, secret_key: str, pool: int = 32) -> Any:
    """A boto3 S3 client with path-style addressing and ``pool`` connections."""
    import boto3.session
    from botocore.config import Config

    cfg = Config(
        s3={"addressing_style": "path"},
        max_pool_connections=pool,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION)
    return session.client("s3", endpoint_url=endpoint, config=cfg)


@dataclass
class Store:
    """A running store + proxy.  ``endpoint`` is the proxied URL all systems use."""

    direct_endpoint: str
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str = BUCKET
    pids: list[int] = field(default_factory=list)
    shaping: str = "none"
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def direct_client(self) -> Any:
        return make_client(self.direct_endpoint, self.access_key, self.secret_key, pool=32)

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()


def netns_available() -> str | None:
    """None if a network namespace with a shaped veth can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' not installed (iproute2)"
    return None


class NetnsLink:
    """A network namespace joined to the host by a veth pair, ``tc tbf`` on the namespace side.

    Addresses are a /30 out of 10.199.0.0/16 picked from our pid; both ends live on this machine
    (the host end in the root namespace, the other in our own namespace).  ``close()`` deletes
    the namespace, which also removes the veth pair.
    """

    def __init__(self, mbit: float) -> None:
        pid = os.getpid() & 0x3FFF
        self.name = f"fbench{os.getpid()}"
        self.host_if, self.ns_if = f"fbh{pid}", f"fbn{pid}"
        base = (pid << 2) & 0xFFFF
        self.host_ip = f"10.199.{base >> 8}.{(base & 0xFF) + 1}"
        self.ns_ip = f"10.199.{base >> 8}.{(base & 0xFF) + 2}"
        self.mbit = mbit
        self.created = False

    def _ip(self, *args: str, ns: bool = False) -> None:
        cmd = (["ip", "netns", "exec", self.name] if ns else []) + list(args)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {p.stdout.decode(errors='replace').strip()}")

    def open(self) -> None:
        self._ip("ip", "netns", "add", self.name)
        self.created = True
        self._ip("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("ip", "link", "set", self.ns_if, "netns", self.name)
        self._ip("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        self._ip("ip", "link", "set", self.host_if, "up")
        self._ip("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, ns=True)
        self._ip("ip", "link", "set", self.ns_if, "up", ns=True)
        self._ip("ip", "link", "set", "lo", "up", ns=True)
        # Shape what leaves the namespace: the responses of the proxy running inside it.
        self._ip(
            "tc",
            "qdisc",
            "add",
            "dev",
            self.ns_if,
            "root",
            "tbf",
            "rate",
            f"{self.mbit:g}mbit",
            "burst",
            "256kb",
            "latency",
            "400ms",
            ns=True,
        )

    def close(self) -> None:
        if self.created:
            subprocess.run(
                ["ip", "netns", "del", self.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20
            )
            subprocess.run(
                ["ip", "link", "del", self.host_if], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20
            )
            self.created = False


def start_proxy(
    workdir: Path, tag: str, upstream: str, delay_ms: float, listen: str, prefix: list[str], extra: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / f"{tag}.port"
    with contextlib.suppress(FileNotFoundError):
        port_file.unlink()
    cmd = [
        *prefix,
        sys.executable,
        "-m",
        "tools.bench.proxy",
        "--upstream",
        upstream,
        "--listen",
        listen,
        "--delay-ms",
        str(delay_ms),
        "--port-file",
        str(port_file),
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        cwd=str(Path(__file__).resolve().parents[2]),
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / f"{tag}.log", "ab"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            raise RuntimeError(f"{tag} did not start; see {workdir}/{tag}.log")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def open_store(
    workdir: Path,
    latency_ms: float,
    bandwidth_mbit: float | None = None,
    register: Callable[[int], None] | None = None,
    shaper: str = "auto",
) -> Store:
    """Start SeaweedFS and the proxy; the caller must ``close()`` (also on failure paths).

    With ``bandwidth_mbit``, ``shaper`` picks how: ``tc`` (the latency proxy runs inside a
    network namespace whose veth carries a ``tc tbf`` qdisc; a plain relay in the root namespace
    forwards to SeaweedFS), ``proxy`` (the proxy's token bucket), or ``auto`` (tc when
    :func:`netns_available`, else proxy).  ``Store.shaping`` says which was used.
    """
    data_dir = workdir / "seaweed"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    closers: list[Callable[[], None]] = []
    pids: list[int] = []
    try:
        srv = S3Server(
            kind="seaweed", data_dir=data_dir, access_key=ACCESS_KEY, secret_key=SECRET_KEY, startup_timeout=60.0
        )
        closers.append(srv.stop)
        srv.start()
        pid = srv.pid
        if pid is not None:
            pids.append(pid)
            if register:
                register(pid)
        direct = str(srv.endpoint)
        upstream = direct.split("//", 1)[1]
        use_tc = bool(bandwidth_mbit) and shaper in ("tc", "auto") and (shaper == "tc" or netns_available() is None)
        if bandwidth_mbit and shaper == "tc" and netns_available():
            raise RuntimeError(f"--shaper tc: {netns_available()}")

        def started(proc: subprocess.Popen[bytes]) -> None:
            closers.append(lambda: kill_group(proc))
            pids.append(proc.pid)
            if register:
                register(proc.pid)

        if use_tc:
            assert bandwidth_mbit
            link = NetnsLink(bandwidth_mbit)
            closers.append(link.close)
            link.open()
            relay, rport = start_proxy(workdir, "relay", upstream, 0.0, f"{link.host_ip}:0", [], [])
            started(relay)
            pproc, port = start_proxy(
                workdir,
                "proxy",
                f"{link.host_ip}:{rport}",
                latency_ms,
                f"{link.ns_ip}:0",
                ["ip", "netns", "exec", link.name],
                [],
            )
            started(pproc)
            endpoint, shaping = f"http://{link.ns_ip}:{port}", f"tc tbf {bandwidth_mbit:g} Mbit/s in netns {link.name}"
        else:
            extra = ["--bandwidth-mbit", str(bandwidth_mbit)] if bandwidth_mbit else []
            pproc, port = start_proxy(workdir, "proxy", upstream, latency_ms, "127.0.0.1:0", [], extra)
            started(pproc)
            endpoint = f"http://127.0.0.1:{port}"
            shaping = f"proxy token bucket {bandwidth_mbit:g} Mbit/s" if bandwidth_mbit else "none"
        store = Store(direct, endpoint, srv.access_key, srv.secret_key, pids=pids, _closers=closers, shaping=shaping)
        store.direct_client().create_bucket(Bucket=BUCKET)
        return store
    except BaseException:
        for c in reversed(closers):
            with contextlib.suppress(Exception):
                c()
        raise
