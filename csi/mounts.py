"""Node-level mount manager: one shared fluidfs mount per dataset, read-only binds on top of it.

Layout under ``--state-dir``::

    mounts/<key>/                 the shared fluidfs mount of one dataset (a private mount)
    datasets/<key>/dataset.yaml   the generated Dataset document (credentials as {file: ...})
    datasets/<key>/secrets/<k>    one 0600 file per CSI secret value (dir 0700)
    datasets/<key>/daemon.pid, daemon.log
    datasets/<key>/identity.json  the dataset's name and dataset key (``fluidfs_csi_dataset_info``)

and ``--cache-root/<key>/`` holds the dataset's block cache (kept after unmount: warm restarts).

Every volume staged with the dataset gets a read-only bind of the shared mount at its
``staging_target_path``; every publish binds the shared mount (or its ``subPath``) read-only at
the ``target_path``.  The shared mount is reference-counted by the volumes that use it; the last
unstage unmounts it, after ``unstage_grace`` seconds if set.

Repairs (:meth:`MountManager.check_dataset`, called about once a second per dataset by
``csi/recovery.py``): a dead daemon (gone, mount missing or ``ENOTCONN``) is killed if need be,
its mount detached and the dataset mounted again at the same path; then every staging and
target bind that does not answer gets a fresh bind *stacked on top of* the dead one, so the
repair reaches the containers' copies of the target (``csi/mountops.py`` explains why); unstage
and unpublish remove every layer.

Locks: one per dataset key, held while that dataset is mounted, repaired, bound or released (a
mount may take up to ``mount_timeout``), and one short ``state_lock`` for the ``State`` and its
file, never held across a mount, a probe or a subprocess.  Calls on different datasets never
wait for each other; a call on a busy dataset waits at most its own budget (then UNAVAILABLE).
Lock order: volume (``csi/node.py``) -> dataset -> state.

Caveats: a hung (not dead) daemon is reported and left alone: killing it would turn slow reads
into errors.  Two volumes of one dataset with different cache settings share one mount; the
first stage's settings win until the mount is released.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping

import grpc
import yaml

from fluidfs.spec import identity
from fluidfs.util.mounts import is_mounted, mounts_under

from . import daemons, metrics
from .daemons import MountFailed
from .mountops import bind_ro, healthy_mount, make_private, path_kind, top_device, unmount_all
from .rpc import Budget
from .state import SharedMount, State, StateStore, Volume
from .volumes import DatasetRequest, RequestError, build_document

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 60.0  # default for one `fluidfs mount` (--mount-timeout)
PROBE_TIMEOUT = 5.0  # one statvfs health check
STOP_TIMEOUT = 30.0  # one `fluidfs umount`
MIN_MOUNT_TIME = 2.0  # a mount attempt is not started with less time than this left
_SECRET_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
#: datasets/<key>/identity.json: the dataset's name and key, for fluidfs_csi_dataset_info
IDENTITY_FILE = "identity.json"


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
        mount_timeout: float = MOUNT_TIMEOUT,
    ) -> None:
        self.store = store
        self.state = state
        self.cache_root = cache_root
        self.unstage_grace = unstage_grace
        self.fluidfs_cmd = fluidfs_cmd
        self.mount_timeout = mount_timeout
        self.state_lock = threading.RLock()
        self.state_dir = store.state_dir
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._retry_at: dict[str, float] = {}  # key -> monotonic time of the next remount try
        self._backoff: dict[str, float] = {}

    # -- state ----------------------------------------------------------------------------------
    def save(self) -> None:
        with self.state_lock:
            self.store.save(self.state)
            metrics.SHARED_MOUNTS.set(len(self.state.mounts))

    def publish_datasets(self) -> None:
        """Export ``fluidfs_csi_dataset_info`` for the mounts of the state (after a restart)."""
        for key in self.keys():
            try:
                with open(os.path.join(self.state_dir, "datasets", key, IDENTITY_FILE), encoding="utf-8") as f:
                    ident = json.load(f)
                metrics.set_dataset(key, str(ident["dataset"]), str(ident["dataset_key"]))
            except (OSError, ValueError, KeyError, TypeError):
                log.debug("dataset %s: no identity file (mounted by an older plugin)", key)

    def keys(self) -> list[str]:
        with self.state_lock:
            return list(self.state.mounts)

    def users_of(self, key: str) -> list[Volume]:
        with self.state_lock:
            return self.state.users_of(key)

    def volume(self, volume_id: str) -> Volume | None:
        with self.state_lock:
            return self.state.volumes.get(volume_id)

    # -- locks ----------------------------------------------------------------------------------
    def _lock_of(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def dataset(self, key: str, budget: Budget) -> Iterator[None]:
        """Hold ``key``'s lock; waits at most the budget, then UNAVAILABLE."""
        lock = self._lock_of(key)
        if not lock.acquire(timeout=budget.left()):
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                f"dataset {key} is busy (being mounted or repaired); retry",
            )
        try:
            yield
        finally:
            lock.release()

    # -- shared mounts (the caller holds the dataset's lock) ---------------------------------------
    def ensure_shared(self, key: str, req: DatasetRequest, secrets: Mapping[str, str], budget: Budget) -> SharedMount:
        """The healthy shared mount for ``key``, mounting it if needed; cancels a pending release."""
        with self.state_lock:
            m = self.state.mounts.get(key)
        if m is not None:
            if m.release_at is not None:
                log.info("dataset %s: re-staged within the grace period, reusing mount", key)
                m.release_at = None
                self.save()
            if not self.shared_healthy(m):
                self.remount(m, budget)
            return m
        m = self._prepare(key, req, secrets)
        try:
            self._mount(m, budget)
        except BaseException:
            shutil.rmtree(os.path.dirname(m.source), ignore_errors=True)
            raise
        with self.state_lock:
            self.state.mounts[key] = m
            self.save()
        metrics.set_dataset(key, req.name, identity.key_of(req.dataset_digest()))
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
        ident = {"dataset": req.name, "dataset_key": identity.key_of(req.dataset_digest())}
        _write_private(os.path.join(ddir, IDENTITY_FILE), json.dumps(ident))
        return SharedMount(
            key=key,
            mountpoint=os.path.join(self.state_dir, "mounts", key),
            source=source,
            args=list(req.cache_args),
            cache_dir=os.path.join(self.cache_root, key),
            secret_dir=sdir,
            pid_file=os.path.join(ddir, "daemon.pid"),
        )

    def _mount(self, m: SharedMount, budget: Budget) -> None:
        if self.fluidfs_cmd is None:
            raise MountFailed("the fluidfs command is not available", grpc.StatusCode.UNAVAILABLE)
        timeout = min(self.mount_timeout, budget.require(MIN_MOUNT_TIME, f"mount dataset {m.key}") - 1.0)
        unmount_all(m.mountpoint, lazy=True)
        try:
            daemons.start(self.fluidfs_cmd, m, max(1.0, timeout))
            # Private, so that binds of it are not its peers (see csi/mountops.py).
            make_private(m.mountpoint)
        except BaseException:
            daemons.kill_daemon(m)
            unmount_all(m.mountpoint, lazy=True)
            raise

    def shared_healthy(self, m: SharedMount) -> bool:
        if daemons.daemon_pid(m) is None:
            return False
        return healthy_mount(m.mountpoint, PROBE_TIMEOUT)

    def remount(self, m: SharedMount, budget: Budget) -> None:
        """Replace a dead shared mount by a fresh one at the same path."""
        log.warning("dataset %s: mount at %s is dead; remounting", m.key, m.mountpoint)
        users = self.users_of(m.key)
        for v in users:
            metrics.set_volume(v.volume_id, False)
        daemons.kill_daemon(m)
        self._mount(m, budget)
        self.save()
        metrics.RECOVERIES.labels(kind="mount").inc()
        for v in users:
            metrics.set_volume(v.volume_id, True)

    def release(self, key: str, budget: Budget) -> None:
        """Called when a volume stops using ``key``: unmount now, or after the grace period."""
        with self.state_lock:
            m = self.state.mounts.get(key)
            if m is None or self.state.users_of(key):
                return
        if self.unstage_grace > 0:
            m.release_at = time.time() + self.unstage_grace
            log.info("dataset %s: unused; unmounting in %.0f s", key, self.unstage_grace)
            self.save()
        else:
            self._unmount_shared(m, budget)

    def _unmount_shared(self, m: SharedMount, budget: Budget) -> None:
        log.info("dataset %s: unmounting %s", m.key, m.mountpoint)
        daemons.stop(self.fluidfs_cmd, m, min(STOP_TIMEOUT, budget.left()))
        unmount_all(m.mountpoint, lazy=True)
        try:
            os.rmdir(m.mountpoint)
        except OSError:
            pass
        shutil.rmtree(os.path.dirname(m.source), ignore_errors=True)  # credentials included
        with self.state_lock:
            self.state.mounts.pop(m.key, None)
            self.save()
        metrics.drop_dataset(m.key)

    # -- binds ----------------------------------------------------------------------------------
    def source_of(self, vol: Volume) -> str:
        with self.state_lock:
            m = self.state.mounts[vol.key]
        return os.path.join(m.mountpoint, vol.sub_path) if vol.sub_path else m.mountpoint

    def bind_healthy(self, path: str) -> bool:
        return healthy_mount(path, PROBE_TIMEOUT)

    @staticmethod
    def _create(dst: str, is_dir: bool) -> None:
        """Create a missing bind target (a directory, or a file for a file of the dataset)."""
        if os.path.lexists(dst):
            return
        if is_dir:
            os.makedirs(dst, exist_ok=True)
        else:
            open(dst, "a").close()

    def fresh_bind(self, src: str, dst: str, *, create_dir: bool | None = None) -> None:
        """A new bind at ``dst`` (stage, publish): whatever was left there is removed first (no
        container uses a path before the call that creates it has succeeded).  ``create_dir``:
        create a missing ``dst`` as a directory (True) or a file (False)."""
        unmount_all(dst, lazy=True)
        if create_dir is not None:
            self._create(dst, create_dir)
        try:
            bind_ro(src, dst, probe_timeout=PROBE_TIMEOUT)
        except OSError as e:
            raise MountFailed(f"bind {src} -> {dst} failed: {e.strerror or e}") from None

    def repair_bind(self, src: str, dst: str, *, create: bool = False) -> None:
        """Stack a fresh bind on top of the dead one at ``dst`` (never unmount first)."""
        if create and not is_mounted(dst):
            kind = path_kind(src, PROBE_TIMEOUT)
            if kind not in ("dir", "file"):
                raise MountFailed(f"re-bind {src} -> {dst}: the dataset path is {kind}")
            self._create(dst, kind == "dir")
        try:
            bind_ro(src, dst, probe_timeout=PROBE_TIMEOUT)
        except OSError as e:
            raise MountFailed(f"re-bind {src} -> {dst} failed: {e.strerror or e}") from None

    def stage_bind(self, vol: Volume) -> None:
        with self.state_lock:
            mp = self.state.mounts[vol.key].mountpoint
        self.fresh_bind(mp, vol.staging_target_path)

    def publish_bind(self, vol: Volume, target: str, is_dir: bool) -> None:
        self.fresh_bind(self.source_of(vol), target, create_dir=is_dir)

    # -- recovery -------------------------------------------------------------------------------
    def sweep_orphans(self) -> list[str]:
        """At start, before serving: unmount dataset mounts and remove dataset directories that
        the state file does not know (a crash between mounting and saving).  Their daemons end
        with their mounts.  Returns the keys removed."""
        with self.state_lock:
            known = set(self.state.mounts)
        root = os.path.join(self.state_dir, "mounts")
        orphans = {os.path.basename(p) for p in mounts_under(root) if os.path.dirname(p) == root}
        ddir = os.path.join(self.state_dir, "datasets")
        orphans |= set(os.listdir(ddir)) if os.path.isdir(ddir) else set()
        orphans -= known
        for key in sorted(orphans):
            log.warning("dataset %s: not in the state file; removing its mount and files", key)
            try:
                unmount_all(os.path.join(root, key), lazy=True)
            except OSError as e:
                log.error("dataset %s: %s", key, e)
            shutil.rmtree(os.path.join(ddir, key), ignore_errors=True)
        return sorted(orphans)

    def adopt(self, key: str) -> bool:
        """At start: whether ``key``'s daemon from before is still running (it is then kept)."""
        with self.state_lock:
            m = self.state.mounts.get(key)
        if m is None:
            return False
        pid = daemons.daemon_pid(m)
        if pid is not None and is_mounted(m.mountpoint):
            log.info("dataset %s: adopting its running daemon (pid %d)", key, pid)
            return True
        log.warning("dataset %s: its daemon is gone; it will be mounted again", key)
        return False

    def check_dataset(self, key: str) -> int:
        """Repair ``key``'s mount and binds (skipped while a call holds the dataset); returns the
        number of repairs made."""
        lock = self._lock_of(key)
        if not lock.acquire(blocking=False):
            return 0
        try:
            return self.check_locked(key)
        finally:
            lock.release()

    def check_all(self) -> int:
        return sum(self.check_dataset(key) for key in self.keys())

    def check_locked(self, key: str) -> int:
        """:meth:`check_dataset` for a caller that holds the dataset's lock already."""
        with self.state_lock:
            m = self.state.mounts.get(key)
            users = self.state.users_of(key)
        if m is None:
            return 0
        if not users:
            if m.release_at is None or m.release_at <= time.time():
                self._unmount_shared(m, Budget(STOP_TIMEOUT))
            return 0
        if m.release_at is not None:
            m.release_at = None
            self.save()
        repairs = 0
        if not self.shared_healthy(m):
            if time.monotonic() < self._retry_at.get(key, 0.0):
                return 0
            try:
                self.remount(m, Budget(self.mount_timeout + 1.0))
            except RequestError as e:
                # Back off (1 s doubling to 60 s): a source that is down will not come back faster.
                delay = min(60.0, self._backoff.get(key, 0.5) * 2)
                self._backoff[key] = delay
                self._retry_at[key] = time.monotonic() + delay
                log.error("dataset %s: remount failed (next try in %.0f s): %s", key, delay, e.message)
                return 0
            repairs += 1
            self._backoff.pop(key, None)
            self._retry_at.pop(key, None)
        for v in users:
            repairs += self._repair_binds(m, v)
            metrics.set_volume(v.volume_id, True)
        return repairs

    def _repair_binds(self, m: SharedMount, v: Volume) -> int:
        repairs = 0
        paths = [v.staging_target_path] if v.staging_target_path else []
        live = top_device(m.mountpoint)
        for p in paths + list(v.publications):
            if self.bind_healthy(p):
                continue
            if live is not None and top_device(p) == live:
                # Already a bind of the current dataset mount: that mount itself is what failed
                # (it died after it was checked); the next check mounts it again.
                continue
            staging = p == v.staging_target_path
            if staging and not is_mounted(p) and not os.path.isdir(p):
                continue  # kubelet removed its staging dir; it will unstage the volume
            src = m.mountpoint if staging else self.source_of(v)
            try:
                log.warning("volume %s: bind at %s does not answer; binding the dataset over it", v.volume_id, p)
                self.repair_bind(src, p, create=not staging)
                metrics.RECOVERIES.labels(kind="bind").inc()
                repairs += 1
            except (RequestError, OSError) as e:
                log.error("volume %s: re-bind of %s failed: %s", v.volume_id, p, e)
        return repairs
