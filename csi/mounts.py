"""Node-level mount manager: one shared fluidfs mount per dataset, read-only binds on top of it.

Layout under ``--state-dir``::

    mounts/<key>/                 the shared fluidfs mount of one dataset (a private mount)
    datasets/<key>/               its document, secrets and identity (``csi/datasetfiles.py``)
    datasets/<key>/daemon.pid, daemon.log

and ``--cache-root/<dataset id>/`` holds the dataset's block cache, named by the dataset and not by
the credentials (kept after unmount: warm restarts, also with a rotated key; ``csi/caches.py``).
What each mount may hold of the node's memory and disk is granted before its daemon starts
(``csi/reserve.py``, ``csi/budget.py``); every daemon runs in the environment the node's policy
allows (``csi/policy.py``).

Every volume staged with the dataset gets a read-only bind of the shared mount at its
``staging_target_path``; every publish binds the shared mount (or its ``subPath``) read-only at
the ``target_path`` (``csi/binds.py``).  The shared mount is reference-counted by the volumes
that use it; the last unstage unmounts it, after ``unstage_grace`` seconds if set.

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
Lock order: volume (``csi/node.py``) -> dataset -> reservations -> state.

Caveats: a hung (not dead) daemon is reported and left alone: killing it would turn slow reads
into errors.  Two volumes of one dataset with different cache settings share one mount; the
first stage's settings win until the mount is released.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping

import grpc

from fluidfs.config import DEFAULT_REQUEST_TIMEOUT
from fluidfs.daemon.record import read_record
from fluidfs.errors import FluidfsError
from fluidfs.spec import identity
from fluidfs.util.mounts import is_mounted, mounts_under

from . import binds, daemons, datasetfiles, metrics, peers
from .budget import NodeBudget
from .caches import CacheDirs
from .daemons import MountFailed
from .mountops import make_private, unmount_all
from .policy import Policy
from .reserve import Reservation, Reservations, wanted
from .rpc import Budget
from .state import SharedMount, State, StateStore, Volume
from .volumes import DatasetRequest, RequestError

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 60.0  # default for one `fluidfs mount` (--mount-timeout)
STOP_TIMEOUT = 30.0  # one `fluidfs umount`
MIN_MOUNT_TIME = 2.0  # a mount attempt is not started with less time than this left
#: `fluidfs mount` needs time to report a source that does not answer: its own --timeout must
#: exceed the source request timeout by this much (else it refuses to start)
SOURCE_REPORT_SLACK = 10.0
MIN_MOUNT_TIMEOUT = DEFAULT_REQUEST_TIMEOUT + SOURCE_REPORT_SLACK  # the least --mount-timeout
CACHE_GRACE = 86400.0  # an unused cache directory is removed after this long (--cache-gc-grace)


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
        peer_ports: tuple[int, int] = peers.DEFAULT_PORTS,
        member_id: str = "",
        policy: Policy | None = None,
        budget: NodeBudget | None = None,
        cache_grace: float = CACHE_GRACE,
    ) -> None:
        self.store = store
        self.state = state
        self.cache_root = cache_root
        self.unstage_grace = unstage_grace
        self.fluidfs_cmd = fluidfs_cmd
        self.mount_timeout = mount_timeout
        self.policy = policy if policy is not None else Policy()
        self.state_lock = threading.RLock()
        self.state_dir = store.state_dir
        os.makedirs(cache_root, mode=0o700, exist_ok=True)
        self.reservations = Reservations(
            state,
            self.state_lock,
            self.save,
            budget if budget is not None else NodeBudget(cache_root),
            CacheDirs(cache_root, cache_grace),
        )
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._retry_at: dict[str, float] = {}  # key -> monotonic time of the next remount try
        self.peer_ports = peer_ports  # clustered datasets' peer servers (csi/peers.py)
        self.member_id = member_id
        self._reserved_ports: set[int] = set()  # chosen by a mount in progress (guarded by state_lock)
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
                name, dataset_key = datasetfiles.read_identity(os.path.join(self.state_dir, "datasets", key))
                metrics.set_dataset(key, name, dataset_key)
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

    def daemon_endpoints(self) -> list[tuple[str, str]]:
        """``(key, metrics URL or "")`` of every mounted dataset (from each daemon's runtime record)."""
        with self.state_lock:
            mounts = [(m.key, m.mountpoint) for m in self.state.mounts.values()]
        out = []
        for key, mountpoint in mounts:
            try:
                rec = read_record(mountpoint)
            except FluidfsError:
                rec = None
            out.append((key, str((rec or {}).get("metrics") or "")))
        return out

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
        datasetfiles.check_secret_keys(secrets)
        request_timeout = wanted(req).request_timeout
        most = self.mount_timeout - SOURCE_REPORT_SLACK
        if request_timeout > most:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"dataset {req.name}: request timeout {request_timeout:g} s does not fit the node's mount timeout"
                f" ({self.mount_timeout:g} s, mounter.mountTimeout): at most {most:g} s",
            )
        self._release_unused_peers(key, req.dataset_digest()[:20], budget)
        res = self.reservations.reserve(key, req)
        port = 0
        try:
            m = self._prepare(key, req, secrets, res)
            port = peers.port_of(m) or 0
            m.request_timeout = request_timeout
            try:
                self._mount(m, budget)
            except BaseException:
                shutil.rmtree(os.path.dirname(m.source), ignore_errors=True)
                raise
        except BaseException:
            self.reservations.cancel(key)
            with self.state_lock:
                self._reserved_ports.discard(port)
            raise
        with self.state_lock:
            self.state.mounts[key] = m
            self._reserved_ports.discard(port)
            self.save()
        self.reservations.commit(key)
        metrics.set_dataset(key, req.name, identity.key_of(req.dataset_digest()))
        peers.publish(m)
        return m

    def _release_unused_peers(self, key: str, dataset: str, budget: Budget) -> None:
        """Unmount the other mounts of ``dataset`` that no volume uses (kept in their unstage grace
        period): a volume staged again with rotated credentials then finds the cache directory
        free, and warm.  A peer busy with a call is left alone (the new mount gets a directory
        of its own)."""
        with self.state_lock:
            idle = [
                m
                for k, m in self.state.mounts.items()
                if k != key and m.dataset == dataset and not self.state.users_of(k)
            ]
        for m in idle:
            lock = self._lock_of(m.key)
            if not lock.acquire(blocking=False):
                continue
            try:
                with self.state_lock:
                    if self.state.mounts.get(m.key) is not m or self.state.users_of(m.key):
                        continue
                log.info("dataset %s: unused mount of the same data (other credentials) released for %s", m.key, key)
                self._unmount_shared(m, budget)
            finally:
                lock.release()

    def _prepare(self, key: str, req: DatasetRequest, secrets: Mapping[str, str], res: Reservation) -> SharedMount:
        ddir = os.path.join(self.state_dir, "datasets", key)
        files = datasetfiles.secret_files(ddir, secrets)
        with self.state_lock:  # a clustered dataset gets its peer port, member id and secret file
            args = peers.cluster_args(
                list(res.args), files, list(self.state.mounts.values()), ports=self.peer_ports,
                member_id=self.member_id, reserved=self._reserved_ports,
            )  # fmt: skip
            listen = peers.flag_value(args, "--listen")
            if listen is not None:
                self._reserved_ports.add(int(listen.rpartition(":")[2]))
        source = datasetfiles.write(ddir, req, secrets, files)
        return SharedMount(
            key=key,
            mountpoint=os.path.join(self.state_dir, "mounts", key),
            source=source,
            args=args,
            cache_dir=res.cache_dir,
            secret_dir=os.path.join(ddir, datasetfiles.SECRETS_DIR),
            pid_file=os.path.join(ddir, "daemon.pid"),
            dataset=res.dataset,
            memory=res.grant.memory,
            cache=res.grant.cache,
        )

    def _mount(self, m: SharedMount, budget: Budget) -> None:
        if self.fluidfs_cmd is None:
            raise MountFailed("the fluidfs command is not available", grpc.StatusCode.UNAVAILABLE)
        need = (m.request_timeout or DEFAULT_REQUEST_TIMEOUT) + SOURCE_REPORT_SLACK
        timeout = min(self.mount_time(m), budget.require(need + 1.0, f"mount dataset {m.key}") - 1.0)
        unmount_all(m.mountpoint, lazy=True)
        try:
            daemons.start(self.fluidfs_cmd, m, timeout, env=self.policy.daemon_env(os.environ))
            # Private, so that binds of it are not its peers (see csi/mountops.py).
            make_private(m.mountpoint)
        except BaseException:
            daemons.kill_daemon(m)
            unmount_all(m.mountpoint, lazy=True)
            raise

    def mount_time(self, m: SharedMount) -> float:
        """How long one mount of ``m`` may take: ``--mount-timeout``, but never less than its source's
        request timeout plus the time to report it (a mount recorded under a longer
        ``--mount-timeout`` keeps the time it was accepted with)."""
        return max(self.mount_timeout, (m.request_timeout or DEFAULT_REQUEST_TIMEOUT) + SOURCE_REPORT_SLACK)

    def shared_healthy(self, m: SharedMount) -> bool:
        if daemons.daemon_pid(m) is None:
            return False
        return binds.healthy(m.mountpoint)

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
        peers.unpublish(m)
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
        self.reservations.released(m)

    # -- binds (csi/binds.py) ------------------------------------------------------------------
    def source_of(self, vol: Volume) -> str:
        with self.state_lock:
            m = self.state.mounts[vol.key]
        return binds.source_path(m.mountpoint, vol)

    def bind_healthy(self, path: str) -> bool:
        return binds.healthy(path)

    def stage_bind(self, vol: Volume) -> None:
        with self.state_lock:
            mp = self.state.mounts[vol.key].mountpoint
        binds.fresh_bind(mp, vol.staging_target_path)

    def publish_bind(self, vol: Volume, target: str, is_dir: bool) -> None:
        binds.fresh_bind(self.source_of(vol), target, create_dir=is_dir)

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
                self.remount(m, Budget(self.mount_time(m) + 1.5))
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
            repairs += binds.repair_volume(m, v)
            metrics.set_volume(v.volume_id, True)
        return repairs
