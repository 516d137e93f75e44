"""Systems under test (fluidfs, s3fs, rclone, boto3-direct, local) with setup/teardown, and the
janitor that guarantees no mount or process outlives the harness.

Each system exposes ``skip_reason()`` (None when runnable), ``setup()`` (a *fresh* instance:
empty cache), ``backend()`` (what the workload child reads: a path or the S3 endpoint),
``peak_rss_mib()`` (VmHWM of the FUSE daemon, read just before teardown), ``metrics()``
(fluidfs only: its Prometheus counters summed over labels) and ``teardown()``.

All FUSE systems read the bucket root through the same proxied endpoint; the kernel readahead
of every FUSE mount is raised to the same value (docs/benchmarks.md) so none is held to 128 KiB
requests.

Caveats: s3fs/rclone daemon pids are found by scanning /proc for the mount point in the
command line.  drop_caches needs root; without it "cold"/"warm_dropped" keep the page cache
(noted in the result's meta).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from fluidfs.util.proc import pid_alive
from fluidfs.util.prom import parse_samples
from tests.support.net import free_port
from tools.bench.procs import (
    cpu_seconds as cpu_seconds,
)
from tools.bench.procs import (
    force_unmount as force_unmount,
)
from tools.bench.procs import (
    kill_pid as kill_pid,
)
from tools.bench.procs import (
    mounted_under as mounted_under,
)
from tools.bench.procs import (
    pids_naming,
)
from tools.bench.procs import (
    pids_with_arg as pids_with_arg,
)
from tools.bench.procs import (
    raise_readahead as raise_readahead,
)
from tools.bench.procs import (
    vm_hwm_mib as vm_hwm_mib,
)
from tools.bench.procs import (
    wait_mounted as wait_mounted,
)
from tools.bench.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- janitor


class Janitor:
    """Remembers every mount point and process the harness created; ``sweep()`` removes them.

    Idempotent, registered with atexit, and persisted to ``state.json`` in the workdir so a
    test can check afterwards that everything is gone.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mounts: list[str] = []
        self.pids: list[int] = []
        self.all_mounts: list[str] = []
        self.all_pids: list[int] = []
        atexit.register(self.sweep)

    def _save(self) -> None:
        with contextlib.suppress(OSError):
            (self.workdir / "state.json").write_text(json.dumps({"mounts": self.all_mounts, "pids": self.all_pids}))

    def add_mount(self, path: str) -> None:
        self.mounts.append(path)
        self.all_mounts.append(path)
        self._save()

    def add_pid(self, pid: int) -> None:
        self.pids.append(pid)
        self.all_pids.append(pid)
        self._save()

    def sweep(self) -> None:
        for m in reversed(self.mounts):
            force_unmount(m)
        self.mounts.clear()
        # Anything still mounted under the workdir (e.g. a mount we never got to register).
        for m in mounted_under(self.workdir):
            force_unmount(m)
        for pid in reversed(self.pids):
            kill_pid(pid)
        self.pids.clear()
        # An emulated trainer still running with its report in the workdir (one started just as
        # an interrupt arrived, before it could be registered); servers are left to their owners.
        for pid in pids_naming("tools.bench.trainer", str(self.workdir)):
            kill_pid(pid)


# ---------------------------------------------------------------------------- systems


class System:
    """Base: a system that is set up fresh (cold) and torn down per measurement group."""

    name = "?"
    fuse = False

    def __init__(self, store: Store, workdir: Path, janitor: Janitor, opts: dict[str, Any]) -> None:
        self.store = store
        self.workdir = workdir
        self.janitor = janitor
        self.opts = opts
        self.seq = 0

    @classmethod
    def skip_reason(cls) -> str | None:
        return None

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def backend(self) -> dict[str, Any]:
        raise NotImplementedError

    def peak_rss_mib(self) -> float | None:
        return None

    def cpu_seconds(self) -> float | None:
        """CPU time the system's daemon has used so far (None: no daemon of its own)."""
        return None

    def metrics(self) -> dict[str, dict[str, float]] | None:
        return None

    def metrics_url(self) -> str | None:
        return None


class Local(System):
    """The same files on the local filesystem: the storage limit."""

    name = "local"

    def backend(self) -> dict[str, Any]:
        return {"kind": "path", "root": str(self.workdir / "local")}


class Boto3Direct(System):
    """Parallel (range) GETs with boto3 through the proxy, no FUSE: the network limit."""

    name = "boto3"

    def backend(self) -> dict[str, Any]:
        return {
            "kind": "s3",
            "endpoint": self.store.endpoint,
            "bucket": self.store.bucket,
            "access_key": self.store.access_key,
            "secret_key": self.store.secret_key,
        }


class _FuseSystem(System):
    fuse = True
    exe_names: tuple[str, ...] = ()

    def _fresh_dirs(self) -> tuple[Path, Path]:
        self.seq += 1
        base = self.workdir / "systems" / f"{self.name}-{self.seq}"
        if base.exists():
            shutil.rmtree(base)
        mnt, cache = base / "mnt", base / "cache"
        mnt.mkdir(parents=True)
        cache.mkdir()
        self.base, self.mnt, self.cache = base, mnt, cache
        return mnt, cache

    def backend(self) -> dict[str, Any]:
        return {"kind": "path", "root": str(self.mnt)}

    def daemon_pids(self) -> list[int]:
        return pids_with_arg(self.exe_names, str(self.mnt))

    def peak_rss_mib(self) -> float | None:
        vals = [v for v in (vm_hwm_mib(p) for p in self.daemon_pids()) if v is not None]
        return max(vals) if vals else None

    def cpu_seconds(self) -> float | None:
        vals = [v for v in (cpu_seconds(p) for p in self.daemon_pids()) if v is not None]
        return sum(vals) if vals else None

    def _after_mount(self) -> None:
        for pid in self.daemon_pids():
            self.janitor.add_pid(pid)
        raise_readahead(str(self.mnt), int(self.opts.get("fuse_read_ahead_kb", 1024)))

    def teardown(self) -> None:
        if not hasattr(self, "mnt"):
            return
        pids = self.daemon_pids()
        self._unmount()
        force_unmount(str(self.mnt))
        for pid in pids:
            kill_pid(pid, grace=10)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.base)

    def _unmount(self) -> None:
        force_unmount(str(self.mnt))


class S3fs(_FuseSystem):
    """s3fs-fuse (Debian ``s3fs``) with its disk cache on."""

    name = "s3fs"
    exe_names = ("s3fs",)

    @classmethod
    def skip_reason(cls) -> str | None:
        return None if shutil.which("s3fs") else "s3fs not installed (apt-get install s3fs)"

    def setup(self) -> None:
        mnt, cache = self._fresh_dirs()
        passwd = self.base / "passwd"
        passwd.write_text(f"{self.store.access_key}:{self.store.secret_key}\n")
        passwd.chmod(0o600)
        self.janitor.add_mount(str(mnt))
        log = self.base / "s3fs.log"
        opts = (
            f"ro,use_path_request_style,url={self.store.endpoint},use_cache={cache},"
            f"passwd_file={passwd},endpoint=us-east-1,logfile={log}"
        )
        out = self.base / "s3fs.out"
        with open(out, "wb") as f:
            proc = subprocess.run(
                ["s3fs", self.store.bucket, str(mnt), "-o", opts],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=60,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"s3fs failed: {out.read_text(errors='replace')[-1000:]}")
        wait_mounted(str(mnt), 30, log=log)
        self._after_mount()


class Rclone(_FuseSystem):
    """rclone mount (Debian ``rclone``) with ``--vfs-cache-mode full``."""

    name = "rclone"
    exe_names = ("rclone",)

    @classmethod
    def skip_reason(cls) -> str | None:
        return None if shutil.which("rclone") else "rclone not installed (apt-get install rclone)"

    def setup(self) -> None:
        mnt, cache = self._fresh_dirs()
        conf = self.base / "rclone.conf"
        conf.write_text(
            "[bench]\ntype = s3\nprovider = Other\nenv_auth = false\n"
            f"access_key_id = {self.store.access_key}\nsecret_access_key = {self.store.secret_key}\n"
            f"endpoint = {self.store.endpoint}\nregion = us-east-1\nforce_path_style = true\n"
        )
        conf.chmod(0o600)
        log = self.base / "rclone.log"
        self.janitor.add_mount(str(mnt))
        cmd = [
            "env",
            "-u",
            "AWS_CA_BUNDLE",
            "rclone",
            "--config",
            str(conf),
            "mount",
            f"bench:{self.store.bucket}",
            str(mnt),
            "--read-only",
            "--vfs-cache-mode",
            "full",
            "--cache-dir",
            str(cache),
            "--daemon",
            "--log-file",
            str(log),
        ]
        # Not a pipe: the --daemon child would inherit it and run() would wait for its EOF.
        out = self.base / "rclone.out"
        with open(out, "wb") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"rclone failed: {out.read_text(errors='replace')[-1000:]}")
        wait_mounted(str(mnt), 30, log=log)
        self._after_mount()


def fluidfs_cli_available() -> str | None:
    """None if ``python -m fluidfs mount --help`` works, else why not."""
    try:
        p = subprocess.run(
            [sys.executable, "-m", "fluidfs", "mount", "--help"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"fluidfs CLI not runnable ({exc})"
    if p.returncode != 0:
        last = (p.stdout.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        return f"fluidfs mount CLI not available ({last[:80]})"
    return None


class Fluidfs(_FuseSystem):
    """fluidfs through its CLI (``python -m fluidfs mount``), metrics on a loopback port.

    ``repo`` runs the fluidfs of another source tree (``--baseline DIR``: e.g. ``git worktree add
    DIR main``) with this interpreter, so two versions are compared in one run.
    """

    name = "fluidfs"
    exe_names = ()
    eviction: str | None = None  # None: fluidfs's own default

    def __init__(
        self,
        *a: Any,
        eviction: str | None = None,
        cache_size: int | None = None,
        memory_size: int | None = None,
        name: str | None = None,
        repo: Path | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(*a, **kw)
        self.repo = repo or REPO_ROOT
        if eviction:
            self.eviction = eviction
        if name:
            self.name = name
        self.cache_size = cache_size or int(self.opts.get("fluidfs_cache_size", 8 << 30))
        self.memory_size = memory_size or int(self.opts.get("fluidfs_memory_size", 256 << 20))
        self.metrics_port = 0
        self.pid: int | None = None

    @classmethod
    def skip_reason(cls) -> str | None:
        return fluidfs_cli_available()

    def setup(self) -> None:
        mnt, cache = self._fresh_dirs()
        self.metrics_port = free_port()
        pidf = self.base / "fluidfs.pid"
        log = self.base / "fluidfs.log"
        self.janitor.add_mount(str(mnt))
        cmd = [
            sys.executable,
            "-m",
            "fluidfs",
            "mount",
            f"s3://{self.store.bucket}",
            str(mnt),
            "--cache-dir",
            str(cache),
            "--cache-size",
            str(self.cache_size),
            "--memory-size",
            str(self.memory_size),
            "--metrics-addr",
            f"127.0.0.1:{self.metrics_port}",
            "--log-file",
            str(log),
            "--endpoint",
            self.store.endpoint,
            "--pid-file",
            str(pidf),
        ]
        if self.eviction:
            cmd += ["--eviction", self.eviction]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.store.env())
        env["PYTHONPATH"] = str(self.repo)
        out = self.base / "fluidfs.out"
        with open(out, "ab") as lf:
            proc = subprocess.Popen(
                cmd, cwd=self.repo, env=env, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT
            )
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"fluidfs mount did not return in 60s; see {log}") from None
        if proc.returncode != 0:
            raise RuntimeError(f"fluidfs mount failed: {out.read_text(errors='replace')[-1500:]}")
        wait_mounted(str(mnt), 30, log=log)
        with contextlib.suppress(OSError, ValueError):
            self.pid = int(pidf.read_text().strip())
            self.janitor.add_pid(self.pid)
        raise_readahead(str(mnt), int(self.opts.get("fuse_read_ahead_kb", 1024)))

    def daemon_pids(self) -> list[int]:
        return [self.pid] if self.pid and pid_alive(self.pid) else []

    def _unmount(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [sys.executable, "-m", "fluidfs", "umount", str(self.mnt)],
                cwd=self.repo,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )

    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    def wait_ssd_settled(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        """Wait until the SSD tier's used bytes stop changing (its background writes are done)."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while time.monotonic() < deadline:
            m = self.metrics()
            used = m.get("fluidfs_cache_used_bytes", {}).get("tier=ssd") if m else None
            if used is not None and used == last:
                return
            last = used
            time.sleep(interval)

    def metrics(self) -> dict[str, dict[str, float]] | None:
        """Prometheus counters, ``{name: {"": total, "tier=mem": ..., ...}}``; None if unreachable."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        return parse_prometheus(text)


def parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """Sum every sample over its labels, and per ``tier`` label value: {name: {"": sum, "tier=X": v}}."""
    out: dict[str, dict[str, float]] = {}
    for s in parse_samples(text):
        d = out.setdefault(s.name, {})
        d[""] = d.get("", 0.0) + s.value
        if "tier" in s.labels:
            key = f"tier={s.labels['tier']}"
            d[key] = d.get(key, 0.0) + s.value
    return out


SYSTEMS = {"fluidfs": Fluidfs, "s3fs": S3fs, "rclone": Rclone, "boto3": Boto3Direct, "local": Local}
