"""Node-level mount manager: one shared fluidfs mount per dataset, read-only binds on top of it.

Layout under ``--state-dir``::

    mounts/<key>/                 the shared fluidfs mount of one dataset (+ credentials)
    datasets/<key>/dataset.yaml   the generated Dataset document (credentials as {file: ...})
    datasets/<key>/secrets/<k>    one 0600 file per CSI secret value (dir 0700)
    datasets/<key>/daemon.pid, daemon.log

and ``--cache-root/<key>/`` holds the dataset's block cache (kept after unmount: warm restarts).

Every volume staged with the dataset gets a read-only bind of the shared mount at its
``staging_target_path``; every publish binds the shared mount (or its ``subPath``) read-only at
the ``target_path`` (``mount --bind`` then ``mount -o remount,bind,ro``).  The shared mount is
reference-counted by the volumes that use it; the last unstage unmounts it, after
``unstage_grace`` seconds if set.

``check_all()`` (called every ~1 s by ``csi/recovery.py``) repairs what broke: a dead daemon
(pid gone, mount missing or ``ENOTCONN``) is lazily unmounted and mounted again at the same
path, then every stale staging/publish bind is lazily unmounted and bound again, so reads
through the pods' target paths work again without restarting any pod.

Caveats: all mount-table changes are serialised by one lock (mounting can take seconds, during
which other RPCs wait).  Containers see a re-bound target only if their volumeMount uses
``mountPropagation: HostToContainer`` (see docs/kubernetes.md).  Probes run ``statvfs`` in a helper
thread with a timeout so a hung (not dead) daemon cannot stall the monitor; a hung daemon is
reported, not killed.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping

import grpc
import yaml

from fluidfs.util.mounts import is_mounted
from fluidfs.util.proc import pid_alive

from . import metrics
from .state import SharedMount, State, StateStore, Volume
from .volumes import DatasetRequest, RequestError, build_document

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 90.0
PROBE_TIMEOUT = 5.0
_SECRET_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,253}$")


class MountFailed(RequestError):
    """A mount or bind operation failed (INTERNAL unless the mount rejected its input)."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INTERNAL) -> None:
        super().__init__(code, message)


_probes: dict[str, threading.Thread] = {}
_probes_lock = threading.Lock()


def probe(path: str, timeout: float = PROBE_TIMEOUT) -> str:
    """``ok`` | ``enotconn`` | ``missing`` | ``hung`` | ``error:<errno>`` for ``statvfs(path)``,
    without ever blocking the caller longer than ``timeout``."""
    with _probes_lock:
        pending = _probes.get(path)
        if pending is not None and pending.is_alive():
            return "hung"
    result: list[str] = []

    def run() -> None:
        try:
            # statvfs always reaches the FUSE daemon; stat() may be answered from the kernel's
            # attribute cache for a dead connection until attr_timeout expires.
            os.statvfs(path)
            result.append("ok")
        except FileNotFoundError:
            result.append("missing")
        except OSError as e:
            result.append("enotconn" if e.errno == errno.ENOTCONN else f"error:{e.errno}")

    t = threading.Thread(target=run, name=f"csi-probe:{path}", daemon=True)
    with _probes_lock:
        _probes[path] = t
    t.start()
    t.join(timeout)
    if t.is_alive():
        return "hung"
    with _probes_lock:
        _probes.pop(path, None)
    return result[0] if result else "error:unknown"


def _run(cmd: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)


def unmount(path: str, lazy: bool = False) -> None:
    """Unmount every mount stacked on ``path``; lazily (detach) if asked or if a plain unmount
    fails.  A path that is not mounted is fine."""
    for _ in range(8):
        if not is_mounted(path):
            return
        if not lazy:
            r = _run(["umount", path])
            if r.returncode == 0:
                continue
        r = _run(["umount", "-l", path])
        if r.returncode != 0:
            r2 = _run(["fusermount3", "-uz", path]) if shutil.which("fusermount3") else r
            if r2.returncode != 0 and is_mounted(path):
                raise MountFailed(f"cannot unmount {path}: {(r.stderr or r2.stderr).strip()}")
    if is_mounted(path):
        raise MountFailed(f"cannot unmount {path}: still mounted")


def bind_ro(src: str, dst: str) -> None:
    """Read-only bind of ``src`` at ``dst`` (``dst`` must exist)."""
    r = _run(["mount", "--bind", src, dst])
    if r.returncode != 0:
        raise MountFailed(f"bind {src} -> {dst} failed: {r.stderr.strip()}")
    r = _run(["mount", "-o", "remount,bind,ro", dst])
    if r.returncode != 0:
        err = r.stderr.strip()
        unmount(dst, lazy=True)
        raise MountFailed(f"read-only remount of {dst} failed: {err}")


def fluidfs_command() -> list[str] | None:
    """How to run the fluidfs CLI: ``$FLUIDFS_CSI_FLUIDFS_CMD`` (split on spaces, for tests),
    the ``fluidfs`` script next to ``sys.executable``, ``python -m fluidfs`` if importable, or
    ``fluidfs`` on PATH; None when none is available."""
    override = os.environ.get("FLUIDFS_CSI_FLUIDFS_CMD")
    if override:
        return override.split()
    sibling = os.path.join(os.path.dirname(sys.executable), "fluidfs")
    if os.access(sibling, os.X_OK):
        return [sibling]
    try:
        if importlib.util.find_spec("fluidfs.cli.main") is not None:
            return [sys.executable, "-m", "fluidfs"]
    except (ImportError, ValueError):
        pass
    found = shutil.which("fluidfs")
    return [found] if found else None


def fuse_usable() -> bool:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _write_private(path: str, data: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class MountManager:
    """Owns the node's mount table entries made by the plugin, and the persisted ``State``."""

    def __init__(
        self,
        store: StateStore,
        state: State,
        cache_root: str,
        unstage_grace: float = 0.0,
        fluidfs_cmd: list[str] | None = None,
    ) -> None:
        self.store = store
        self.state = state
        self.cache_root = cache_root
        self.unstage_grace = unstage_grace
        self.fluidfs_cmd = fluidfs_cmd
        self.lock = threading.RLock()
        self.state_dir = store.state_dir
        self._retry_at: dict[str, float] = {}  # key -> monotonic time of the next remount try
        self._backoff: dict[str, float] = {}

    def save(self) -> None:
        self.store.save(self.state)

    # -- shared mounts ------------------------------------------------------------------------
    def ensure_shared(self, key: str, req: DatasetRequest, secrets: Mapping[str, str]) -> SharedMount:
        """The healthy shared mount for ``key``, mounting it if needed; cancels a pending release."""
        with self.lock:
            m = self.state.mounts.get(key)
            if m is not None:
                if m.release_at is not None:
                    log.info("dataset %s: re-staged within the grace period, reusing mount", key)
                    m.release_at = None
                    self.save()
                if not self.shared_healthy(m):
                    self.remount(m)
                return m
            m = self._prepare(key, req, secrets)
            self.state.mounts[key] = m
            try:
                self._mount(m)
            except BaseException:
                del self.state.mounts[key]
                shutil.rmtree(os.path.dirname(m.source), ignore_errors=True)
                raise
            self.save()
            metrics.SHARED_MOUNTS.set(len(self.state.mounts))
            return m

    def _prepare(self, key: str, req: DatasetRequest, secrets: Mapping[str, str]) -> SharedMount:
        bad = [k for k in secrets if not _SECRET_KEY_RE.match(k)]
        if bad:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "secret keys must match [A-Za-z0-9._-]+")
        ddir = os.path.join(self.state_dir, "datasets", key)
        sdir = os.path.join(ddir, "secrets")
        os.makedirs(sdir, mode=0o700, exist_ok=True)
        os.chmod(ddir, 0o700)
        os.chmod(sdir, 0o700)
        files = {}
        for k, v in secrets.items():
            path = os.path.join(sdir, k)
            _write_private(path, v)
            files[k] = path
        doc = build_document(req, files)
        source = os.path.join(ddir, "dataset.yaml")
        _write_private(source, yaml.safe_dump(doc, sort_keys=False))
        cache_dir = os.path.join(self.cache_root, key)
        return SharedMount(
            key=key,
            mountpoint=os.path.join(self.state_dir, "mounts", key),
            source=source,
            args=list(req.cache_args),
            cache_dir=cache_dir,
            secret_dir=sdir,
            pid_file=os.path.join(ddir, "daemon.pid"),
        )

    def _mount(self, m: SharedMount) -> None:
        if self.fluidfs_cmd is None:
            raise MountFailed("the fluidfs command is not available", grpc.StatusCode.UNAVAILABLE)
        if is_mounted(m.mountpoint):
            unmount(m.mountpoint, lazy=True)
        os.makedirs(m.mountpoint, exist_ok=True)
        os.makedirs(m.cache_dir, mode=0o700, exist_ok=True)
        log_file = os.path.join(os.path.dirname(m.source), "daemon.log")
        cmd = [
            *self.fluidfs_cmd,
            "mount",
            m.source,
            m.mountpoint,
            "--cache-dir",
            m.cache_dir,
            "--allow-other",
            "--pid-file",
            m.pid_file,
            "--log-file",
            log_file,
            *m.args,
        ]
        log.info("dataset %s: mounting at %s", m.key, m.mountpoint)
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err:
            # stderr to a file, not a pipe: the daemon may keep inherited fds open.
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=MOUNT_TIMEOUT,
                    start_new_session=True,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                unmount(m.mountpoint, lazy=True)
                raise MountFailed(f"fluidfs mount of dataset {m.key} timed out") from None
            err.seek(0)
            lines = [ln for ln in err.read().splitlines() if ln.strip()]
        if proc.returncode != 0:
            msg = lines[-1] if lines else f"exit code {proc.returncode}"
            code = grpc.StatusCode.INVALID_ARGUMENT if proc.returncode == 2 else grpc.StatusCode.INTERNAL
            if is_mounted(m.mountpoint):
                unmount(m.mountpoint, lazy=True)
            raise MountFailed(f"fluidfs mount failed: {msg}", code)

    def daemon_pid(self, m: SharedMount) -> int | None:
        try:
            with open(m.pid_file, encoding="utf-8") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def shared_healthy(self, m: SharedMount) -> bool:
        pid = self.daemon_pid(m)
        if pid is not None and not pid_alive(pid, reap=True):
            return False
        if not is_mounted(m.mountpoint):
            return False
        return probe(m.mountpoint) in ("ok", "hung")

    def remount(self, m: SharedMount) -> None:
        """Replace a dead shared mount by a fresh one at the same path."""
        with self.lock:
            log.warning("dataset %s: mount at %s is dead; remounting", m.key, m.mountpoint)
            for v in self.state.users_of(m.key):
                metrics.set_volume(v.volume_id, False)
            pid = self.daemon_pid(m)
            if pid is not None and pid_alive(pid, reap=True):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            unmount(m.mountpoint, lazy=True)
            self._mount(m)
            metrics.RECOVERIES.labels(kind="mount").inc()
            for v in self.state.users_of(m.key):
                metrics.set_volume(v.volume_id, True)

    def release(self, key: str) -> None:
        """Called when a volume stops using ``key``: unmount now, or after the grace period."""
        with self.lock:
            m = self.state.mounts.get(key)
            if m is None or self.state.users_of(key):
                return
            if self.unstage_grace > 0:
                m.release_at = time.time() + self.unstage_grace
                log.info("dataset %s: unused; unmounting in %.0f s", key, self.unstage_grace)
                self.save()
            else:
                self._unmount_shared(m)

    def _unmount_shared(self, m: SharedMount) -> None:
        log.info("dataset %s: unmounting %s", m.key, m.mountpoint)
        pid = self.daemon_pid(m)
        if is_mounted(m.mountpoint) and self.fluidfs_cmd is not None:
            try:
                _run([*self.fluidfs_cmd, "umount", m.mountpoint], timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if is_mounted(m.mountpoint):
            r = _run(["fusermount3", "-u", m.mountpoint]) if shutil.which("fusermount3") else None
            if r is None or r.returncode != 0:
                unmount(m.mountpoint, lazy=True)
        if pid is not None and pid_alive(pid, reap=True):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        try:
            os.rmdir(m.mountpoint)
        except OSError:
            pass
        shutil.rmtree(os.path.dirname(m.source), ignore_errors=True)  # credentials included
        del self.state.mounts[m.key]
        self.save()
        metrics.SHARED_MOUNTS.set(len(self.state.mounts))

    def reap_released(self, now: float | None = None) -> None:
        """Unmount shared mounts whose grace period has passed and that are still unused."""
        now = time.time() if now is None else now
        with self.lock:
            for m in list(self.state.mounts.values()):
                if self.state.users_of(m.key):
                    if m.release_at is not None:
                        m.release_at = None
                        self.save()
                elif m.release_at is None or m.release_at <= now:
                    self._unmount_shared(m)

    # -- binds ----------------------------------------------------------------------------------
    def source_of(self, vol: Volume) -> str:
        m = self.state.mounts[vol.key]
        return os.path.join(m.mountpoint, vol.sub_path) if vol.sub_path else m.mountpoint

    def bind(self, src: str, dst: str, *, create: bool = False) -> None:
        if is_mounted(dst):
            unmount(dst, lazy=True)
        if create and not os.path.lexists(dst):
            if os.path.isdir(src):
                os.makedirs(dst, exist_ok=True)
            else:
                open(dst, "a").close()
        bind_ro(src, dst)

    def bind_healthy(self, path: str) -> bool:
        return is_mounted(path) and probe(path) in ("ok", "hung")

    def stage_bind(self, vol: Volume) -> None:
        self.bind(self.state.mounts[vol.key].mountpoint, vol.staging_target_path)

    def publish_bind(self, vol: Volume, target: str) -> None:
        self.bind(self.source_of(vol), target, create=True)

    # -- recovery -------------------------------------------------------------------------------
    def check_all(self) -> int:
        """Repair every broken shared mount and bind; returns the number of repairs made."""
        repairs = 0
        with self.lock:
            self.reap_released()
            for m in list(self.state.mounts.values()):
                users = self.state.users_of(m.key)
                if not users:
                    continue
                if not self.shared_healthy(m):
                    if time.monotonic() < self._retry_at.get(m.key, 0.0):
                        continue
                    try:
                        self.remount(m)
                        repairs += 1
                        self._backoff.pop(m.key, None)
                        self._retry_at.pop(m.key, None)
                    except RequestError as e:
                        # Back off (1 s doubling to 60 s): a remount holds the lock for up to
                        # MOUNT_TIMEOUT, and a source that is down will not come back faster.
                        delay = min(60.0, self._backoff.get(m.key, 0.5) * 2)
                        self._backoff[m.key] = delay
                        self._retry_at[m.key] = time.monotonic() + delay
                        log.error("dataset %s: remount failed (next try in %.0f s): %s", m.key, delay, e.message)
                        continue
                for v in users:
                    paths = [v.staging_target_path] if v.staging_target_path else []
                    for p in paths + list(v.publications):
                        if self.bind_healthy(p):
                            continue
                        if p == v.staging_target_path and not os.path.isdir(p) and not is_mounted(p):
                            continue  # kubelet removed its staging dir; it will unstage the volume
                        src = m.mountpoint if p == v.staging_target_path else self.source_of(v)
                        try:
                            log.warning("volume %s: bind at %s is stale; re-binding", v.volume_id, p)
                            self.bind(src, p, create=p != v.staging_target_path)
                            metrics.RECOVERIES.labels(kind="bind").inc()
                            repairs += 1
                        except (RequestError, OSError) as e:
                            log.error("volume %s: re-bind of %s failed: %s", v.volume_id, p, e)
                    metrics.set_volume(v.volume_id, True)
        return repairs
