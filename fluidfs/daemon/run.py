"""The mount daemon: open and check the sources, build cache → namespace → VFS, mount with
pyfuse3 and serve until unmounted or signalled (SIGTERM/SIGINT/SIGHUP unmount cleanly).

:func:`run_foreground` is the daemon's entry point (``fluidfs mount --foreground``, also the
detached child that :mod:`fluidfs.daemon.spawn` starts).  It resolves the mountpoint and the
path of the runtime record (:mod:`fluidfs.daemon.record`) first, then moves to ``/``: every path
the daemon keeps is absolute, and it never pins the caller's working directory (a mount started
from inside another mount does not keep that one busy).

Nothing on the trio thread ever touches the mountpoint: once mounted, every ``stat`` of it may be
a request to this very thread (always so with a metadata TTL of 0).  Readiness: a worker thread
calls ``stat`` on the mountpoint (the kernel answers through our loop), then the mount's device (for
the kernel readahead) is taken from the mount table, the record is written, and ``READY`` goes to
the readiness pipe (the parent waits for it, so ``fluidfs mount`` exits 0 only when the mount
answers), or ``ERR <exit code> <message>`` when mounting fails.

Stopping: a stop signal — also one that arrives while the mount is being set up — ends the FUSE
loop; background work is cancelled, then the mount is unmounted (``pyfuse3.close``, which needs
no answer from our loop) and the record removed by its precomputed path.  What is still running
gets :data:`SHUTDOWN_GRACE` seconds from the stop; a daemon still busy then (a request blocked on
a frozen source, say) detaches its mount, removes its record and exits anyway, so the daemon
always exits and the mount is always gone.

Cluster: with ``--peers``/``--kube-service`` the daemon is a member of the dataset's cluster
cache (:mod:`fluidfs.cluster.member`).  The member is built before mounting (a bad peers file or
a missing secret is a start-up error, exit 2) and runs in the daemon's nursery from before the
mount answers.  A stop signal first hands the blocks this member owns to their next owners
(``PeerNode.leave``, at most ``handoff_timeout`` seconds, while the mount keeps serving; a second
stop signal cuts it short), then unmounts; an unmount from outside hands them over after the
FUSE loop ended.  The stop deadline above counts from the end of that budget.

Caveats: one mount per process.  After an unmount from outside (``fluidfs umount``) the daemon
exits once its in-flight requests end; ``fluidfs umount`` stops it if that takes longer than
its ``--timeout``.  An exit forced by the grace period skips closing the SSD tier (its blocks
are written tmp → rename and its lock ends with the process: nothing is lost).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType

import pyfuse3
import trio

from fluidfs import metrics
from fluidfs.cache.ssd import SSDTier
from fluidfs.cache.tiered import TieredCache
from fluidfs.cluster.member import join
from fluidfs.cluster.node import PeerNode
from fluidfs.config import MountConfig
from fluidfs.daemon.record import checked_runtime_dir, identity, record_path, remove_record, write_record
from fluidfs.daemon.spawn import check_mountpoint, force_unmount
from fluidfs.daemon.tiers import build_cache, tune_malloc
from fluidfs.errors import FluidfsError, MountError, exit_code, unwrap
from fluidfs.fs.fuse_ops import FluidOperations
from fluidfs.fs.namespace import MountRef, Namespace
from fluidfs.fs.vfs import Vfs
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Source
from fluidfs.sources.registry import open_sources
from fluidfs.spec.model import Dataset, MountSpec
from fluidfs.util.mounts import FLUIDFS_FSTYPE, mount_at
from fluidfs.util.redact import redact_url

log = logging.getLogger(__name__)

#: seconds a stopping daemon waits for in-flight work before it exits anyway
SHUTDOWN_GRACE = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def set_kernel_readahead(dev: str, kib: int) -> None:
    """Raise the kernel readahead of the mounted filesystem ``dev`` (``major:minor``, from the mount
    table: no ``stat`` of the mountpoint) so buffered reads arrive as large requests."""
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w", encoding="ascii") as f:
            f.write(str(kib))
        log.info("kernel readahead of %s set to %d KiB", dev, kib)
    except OSError as exc:
        log.info("could not set kernel readahead of %s: %s", dev, exc)
        return
    set_max_background(dev, MAX_BACKGROUND)


#: requests the kernel keeps in flight to the daemon for readahead and async I/O (kernel default
#: 12): readers of a source that does not answer would otherwise fill the queue and stall the
#: readahead of every other source of the dataset
MAX_BACKGROUND = 256


def set_max_background(dev: str, n: int) -> None:
    """Raise the FUSE connection's background queue through the FUSE control filesystem
    (``/sys/fs/fuse/connections``, mounted by systemd on most hosts); log when it is absent."""
    conn = f"/sys/fs/fuse/connections/{dev.partition(':')[2]}"  # the connection is named by the minor
    try:
        with open(f"{conn}/max_background", "w") as f:
            f.write(str(n))
        with open(f"{conn}/congestion_threshold", "w") as f:
            f.write(str(n * 3 // 4))
        log.info("FUSE background queue set to %d requests", n)
    except OSError as exc:
        log.info(
            "could not raise the FUSE background queue (%s); mount the control filesystem "
            "(mount -t fusectl none /sys/fs/fuse/connections) so one slow source cannot stall the others' readahead",
            exc.strerror or exc,
        )


@contextlib.contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Stop signals (and SIGUSR1) are noted, not fatal, until trio's signal receiver takes over and
    after it is gone: one that arrives while the mount is being set up must not leave it behind."""
    pending: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    old = {s: signal.signal(s, note) for s in (*STOP_SIGNALS, signal.SIGUSR1)}
    try:
        yield pending
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class MountDaemon:
    """One running mount at ``mountpoint`` (resolved) with its record at ``record_file``."""

    def __init__(
        self,
        dataset: Dataset,
        cfg: MountConfig,
        mountpoint: str,
        record_file: str,
        sources: list[tuple[Source, MountSpec]],
    ) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.mountpoint = mountpoint
        self.record_file = record_file
        # readiness probe, record, kernel invalidation: never the FUSE loop's thread
        self.housekeeping = trio.CapacityLimiter(4)
        self._sources = sources
        self.metrics_addr: tuple[str, int] | None = None
        self.cache: TieredCache | None = None
        self.vfs: Vfs | None = None
        self.pid_file: str | None = None  # removed by a forced exit too
        self.dev: str | None = None  # the mounted filesystem's "major:minor", from the mount table
        self._mounted = False
        self._stopping = False
        self._fuse_done = False
        self._outer: trio.Nursery | None = None
        self.node: PeerNode | None = None  # this mount's member of the dataset's cluster, if any
        self._left = False
        self._handoff_scope: trio.CancelScope | None = None

    def _build(self) -> FluidOperations:
        # one limiter per source: a source that stops answering holds only its own threads
        mounts = [
            MountRef(
                spec,
                AsyncSource(
                    src, self.dataset.name, trio.CapacityLimiter(self.cfg.source_threads), self.cfg.request_timeout
                ),
            )
            for src, spec in self._sources
        ]
        ns = Namespace(mounts, self.dataset.name, self.cfg.metadata_ttl, self.cfg.negative_ttl)
        self.cache = build_cache(self.dataset, self.cfg)
        self.node = join(self.dataset.name, self.cfg, self.cache, [m.source for m in mounts])
        self.vfs = Vfs(ns, self.cache, self.cfg, self.dataset.name)
        return FluidOperations(self.vfs)

    def _options(self) -> set[str]:
        opts = set(pyfuse3.default_options)
        opts |= {f"fsname=fluidfs:{self.dataset.name}", "subtype=fluidfs", "ro", "noatime"}
        if self.cfg.allow_other:
            opts.add("allow_other")
        return opts

    def run(self, ready: Callable[[], None]) -> None:
        """Mount, serve until unmounted/signalled, then unmount.  Blocks."""
        tune_malloc()
        ops = self._build()
        if self.cfg.metrics_addr:
            try:
                self.metrics_addr = metrics.serve(self.cfg.metrics_addr)
            except OSError as exc:
                raise MountError(f"metrics address {self.cfg.metrics_addr}: {exc.strerror or exc}") from None
        with deferred_signals() as pending:
            check_mountpoint(self.mountpoint, nonempty=True)  # nothing was mounted there meanwhile
            try:
                pyfuse3.init(ops, self.mountpoint, self._options())
            except RuntimeError as exc:
                raise MountError(f"cannot mount {self.mountpoint}: {exc}") from None
            self._mounted = True
            entry = mount_at(self.mountpoint)  # /proc, not the mount
            if entry is not None and entry.fstype == FLUIDFS_FSTYPE:
                self.dev = entry.dev
            try:
                trio.run(self._main, ready, pending)
            except BaseException as exc:
                inner = unwrap(exc)
                if inner is not exc and isinstance(inner, FluidfsError):  # one task's start-up error (port in use)
                    raise inner from None
                raise
            finally:
                self._unmount()
                remove_record(self.record_file, os.getpid())
                if self.cache is not None and isinstance(self.cache.ssd, SSDTier):
                    self.cache.ssd.close()

    def _unmount(self) -> None:
        """Unmount (needs no answer from our loop: libfuse closes /dev/fuse, then detaches)."""
        if self._mounted:
            self._mounted = False
            pyfuse3.close(unmount=True)
            log.info("dataset %s: unmounted %s", self.dataset.name, self.mountpoint)

    async def _main(self, ready: Callable[[], None], pending: list[int]) -> None:
        assert self.cache is not None and self.vfs is not None
        async with trio.open_nursery() as outer:
            self._outer = outer
            async with trio.open_nursery() as nursery:
                self.cache.start(nursery)
                if self.node is not None:
                    await nursery.start(self.node.run)  # peers are served before the mount answers
                self.vfs.prefetcher.start(nursery)
                self.vfs.ns.start(nursery)
                nursery.start_soon(self._signals, nursery, pending)
                nursery.start_soon(self._announce, ready)
                await pyfuse3.main(min_tasks=8, max_tasks=128)
                self._fuse_done = True
                self._begin_stop(self._handoff_budget())
                await self._hand_off()  # unmounted from outside: the peer server still runs
                nursery.cancel_scope.cancel()
            self._unmount()
            remove_record(self.record_file, os.getpid())
            outer.cancel_scope.cancel()

    def _begin_stop(self, extra: float = 0.0) -> None:
        """From now on the daemon exits within ``extra`` + SHUTDOWN_GRACE seconds, whatever is still running."""
        if not self._stopping and self._outer is not None:
            self._stopping = True
            self._outer.start_soon(self._deadline, extra + SHUTDOWN_GRACE)

    def _handoff_budget(self) -> float:
        return self.cfg.handoff_timeout + 1.0 if self.node is not None and not self._left else 0.0

    async def _hand_off(self) -> None:
        """Hand the blocks this member owns to their next owners, once, within ``handoff_timeout``."""
        if self.node is None or self._left:
            return
        self._left = True
        with trio.CancelScope() as self._handoff_scope:
            with trio.move_on_after(self.cfg.handoff_timeout + 1.0):
                report = await self.node.leave()
                log.info(
                    "dataset %s: handed off %d of %d owned blocks (%d already there, %d failed, %d not sent)",
                    self.dataset.name, report.pushed, report.owned, report.present, report.failed, report.unsent,
                )  # fmt: skip
        if self._handoff_scope.cancelled_caught:
            log.warning("dataset %s: handoff cut short", self.dataset.name)

    async def _leave_then_stop(self, sig: int) -> None:
        await self._hand_off()
        if not self._fuse_done:  # else a second signal stopped it already
            self._stop(sig)

    async def _deadline(self, grace: float) -> None:
        await trio.sleep(grace)
        log.warning(
            "dataset %s: requests still running %.0fs after the stop (a source does not answer?); "
            "detaching %s and exiting anyway",
            self.dataset.name,
            grace,
            self.mountpoint,
        )
        if self._mounted and self.dev is not None:
            force_unmount(self.mountpoint, self.dev)  # lazily, by path (pyfuse3 is still busy), if still ours
        remove_record(self.record_file, os.getpid())
        if self.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(self.pid_file)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)  # the kernel ends the requests that were left when /dev/fuse closes

    async def _signals(self, nursery: trio.Nursery, pending: list[int]) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS, signal.SIGUSR1) as sigs:
            early = [s for s in pending if s in STOP_SIGNALS]
            if early:  # arrived while the mount was being set up
                self._stop(early[0])
                return
            async for sig in sigs:
                if sig == signal.SIGUSR1:
                    nursery.start_soon(self.refresh)
                    continue
                if self.node is not None and not self._left:
                    log.info("dataset %s: %s, handing blocks over before unmounting", self.dataset.name,
                             signal.Signals(sig).name)  # fmt: skip
                    self._begin_stop(self._handoff_budget())
                    nursery.start_soon(self._leave_then_stop, sig)
                    continue  # a second stop signal cuts the handoff short
                if self._handoff_scope is not None:
                    self._handoff_scope.cancel()
                self._stop(sig)
                return

    def _stop(self, sig: int) -> None:
        log.info("dataset %s: %s, unmounting %s", self.dataset.name, signal.Signals(sig).name, self.mountpoint)
        self._begin_stop()
        if not self._fuse_done:
            self._fuse_done = True
            pyfuse3.terminate()

    async def refresh(self) -> None:
        """Forget all cached metadata, ours and the kernel's (``fluidfs refresh``)."""
        assert self.vfs is not None
        ns = self.vfs.ns
        ns.invalidate_all()
        nodes = [(n.inode, n.parent, n.path.rsplit("/", 1)[1]) for n in ns.all_nodes() if n.path != "/"]

        def invalidate() -> None:
            for inode, parent, name in nodes:
                if self._stopping:
                    return
                # OSError: the kernel does not know this inode/entry, nothing to forget
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_inode(inode, attr_only=True)
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_entry(parent, name.encode("utf-8", "surrogateescape"))

        # not abandoned on cancel: it uses the FUSE session, which is closed only after it returns
        await trio.to_thread.run_sync(invalidate, limiter=self.housekeeping)
        log.info("dataset %s: metadata refreshed (%d entries invalidated)", self.dataset.name, len(nodes))

    async def _announce(self, ready: Callable[[], None]) -> None:
        try:
            # the kernel answers this stat through our own loop: a worker thread, never this one
            await trio.to_thread.run_sync(os.stat, self.mountpoint, limiter=self.housekeeping, abandon_on_cancel=True)
        except OSError as exc:
            log.warning("dataset %s: the mount at %s does not answer: %s", self.dataset.name, self.mountpoint, exc)
            return
        await trio.to_thread.run_sync(self._settle, limiter=self.housekeeping)
        log.info("dataset %s mounted at %s", self.dataset.name, self.mountpoint)
        ready()

    def _settle(self) -> None:
        """Kernel readahead (device from the mount table) and the runtime record: never the mount."""
        if self.dev is not None:
            set_kernel_readahead(self.dev, 1024)
        if not self._stopping:
            write_record(self.record_file, self._record())

    def _record(self) -> dict[str, object]:
        cfg = dataclasses.asdict(self.cfg)
        for k, v in cfg.items():
            if isinstance(v, float) and math.isinf(v):
                cfg[k] = "indefinite"
        return {
            **identity(os.getpid()),
            "mountpoint": self.mountpoint,
            "dataset": self.dataset.name,
            "sources": [redact_url(m.url) for m in self.dataset.mounts],
            "metrics": f"http://{self.metrics_addr[0]}:{self.metrics_addr[1]}/metrics" if self.metrics_addr else None,
            "peer": self.node.address if self.node is not None else None,  # `fluidfs status` asks it
            "config": cfg,
        }


def _report(fd: int | None, text: str) -> None:
    """One line to the parent's readiness pipe (``READY`` or ``ERR <code> <message>``), then close it."""
    if fd is None:
        return
    try:
        os.write(fd, (text + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def run_foreground(
    dataset: Dataset,
    cfg: MountConfig,
    mountpoint: str,
    ready_fd: int | None,
    pid_file: str | None,
    *,
    nonempty: bool = False,
) -> int:
    """Open sources, mount and serve until unmounted.  Returns the exit code."""
    pid_path = os.path.abspath(pid_file) if pid_file else None
    wrote_pid = False
    try:
        mnt = check_mountpoint(mountpoint, nonempty=nonempty)
        checked_runtime_dir(create=True)
        record_file = record_path(mnt)
        os.chdir("/")  # every path we keep is absolute from here on
        sources = open_sources(dataset, cfg.request_timeout)
        if pid_path:
            with open(pid_path, "w", encoding="ascii") as f:
                f.write(f"{os.getpid()}\n")
            wrote_pid = True
        daemon = MountDaemon(dataset, cfg, mnt, record_file, sources)
        daemon.pid_file = pid_path
        daemon.run(lambda: _report(ready_fd, "READY"))
        return 0
    except FluidfsError as exc:
        code = exit_code(exc)
        print(f"fluidfs: error: {exc}", file=sys.stderr)
        _report(ready_fd, f"ERR {code} {exc}")
        return code
    except Exception as exc:  # last line of defence: one line for the parent, traceback in the log
        log.exception("mount failed")
        _report(ready_fd, f"ERR 1 unexpected error: {exc}")
        return 1
    finally:
        if pid_path and wrote_pid:
            try:
                os.unlink(pid_path)
            except OSError:
                pass
