"""The cache worker (``fluidfs worker``): a FUSE-less member of a dataset's cluster cache — sources → cache → peers.

A worker holds cache capacity for the cluster and serves its peers; it mounts nothing.  It is
the same data plane as a mount daemon — the same Dataset document, the same :func:`build_cache`
(same SSD cache format: a directory filled by ``fluidfs load`` or a mount can be a worker's),
the same metrics — with the peer server as its only client.  It runs in the foreground (a
container's main process) and logs to stderr.

Start-up: the sources are opened and checked (a source failure is exit 3), the cache and the
member are built (a bad peers file, a missing secret or a bad address is exit 2), the metrics
endpoint and the peer server are started; then one line goes to stdout::

    fluidfs worker: dataset imagenet: serving peers on 10.0.0.5:7070 as worker-0, metrics http://...

Stopping: SIGTERM, SIGINT or SIGHUP hands the blocks this member owns to their next owners
(``PeerNode.leave``, at most ``handoff_timeout`` seconds; the peer server keeps serving
meanwhile; a second signal cuts it short), then stops and exits 0.  The stop is bounded: a worker
still busy :data:`SHUTDOWN_GRACE` seconds after the handoff budget exits anyway.

Every source operation ends within ``request_timeout``, and each source has its own thread limiter
(``source_threads``), as in a mount.

Caveats: blocks held only in the memory tier are not handed off (a worker keeps what it owns on
SSD).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator

import trio

from fluidfs import metrics
from fluidfs.cache.ssd import SSDTier
from fluidfs.cluster.member import join
from fluidfs.cluster.node import PeerNode
from fluidfs.config import MountConfig
from fluidfs.daemon.tiers import build_cache, tune_malloc
from fluidfs.errors import ConfigError, FluidfsError, MountError, unwrap
from fluidfs.sources.aio import AsyncSource
from fluidfs.sources.base import Source
from fluidfs.sources.registry import open_sources
from fluidfs.spec.model import Dataset, MountSpec

log = logging.getLogger(__name__)

__all__ = ["CacheWorker", "run_worker", "SHUTDOWN_GRACE"]

#: seconds a stopping worker waits, after its handoff budget, before it exits anyway
SHUTDOWN_GRACE = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class CacheWorker:
    """One worker: the dataset's sources, its tiered cache and its member of the cluster."""

    def __init__(self, dataset: Dataset, cfg: MountConfig, sources: list[tuple[Source, MountSpec]]) -> None:
        check_config(cfg)
        self.dataset = dataset
        self.cfg = cfg
        # one limiter per source: a source that stops answering holds only its own threads
        self.sources = [
            AsyncSource(src, dataset.name, trio.CapacityLimiter(cfg.source_threads), cfg.request_timeout)
            for src, _spec in sources
        ]
        self.cache = build_cache(dataset, cfg)
        try:
            node = join(dataset.name, cfg, self.cache, self.sources, worker=True)
        except BaseException:
            self.close()
            raise
        assert node is not None  # check_config: the configuration names a cluster
        self.node: PeerNode = node
        self.metrics_url: str | None = None

    def close(self) -> None:
        if isinstance(self.cache.ssd, SSDTier):
            self.cache.ssd.close()

    def run(self) -> None:
        """Serve until a stop signal, hand the blocks over, stop.  Blocks; raises FluidfsError."""
        tune_malloc()
        try:
            if self.cfg.metrics_addr:
                try:
                    host, port = metrics.serve(self.cfg.metrics_addr)
                except OSError as exc:
                    raise MountError(f"metrics address {self.cfg.metrics_addr}: {exc.strerror or exc}") from None
                self.metrics_url = f"http://{host}:{port}/metrics"
            try:
                trio.run(self._main)
            except BaseException as exc:
                inner = unwrap(exc)
                if inner is not exc and isinstance(inner, FluidfsError):  # one task's start-up error
                    raise inner from None
                raise
        finally:
            self.close()

    async def _main(self) -> None:
        async with trio.open_nursery() as outer:
            with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
                async with trio.open_nursery() as nursery:
                    self.cache.start(nursery)
                    address = await nursery.start(self.node.run)
                    print(
                        f"fluidfs worker: dataset {self.dataset.name}: serving peers on {address} as "
                        f"{self.node.view.self_id or 'a non-member (not in the member set yet)'}, "
                        f"metrics {self.metrics_url or 'off'}",
                        flush=True,
                    )
                    async for sig in signals:
                        log.info("dataset %s: %s, handing blocks over", self.dataset.name, signal.Signals(sig).name)
                        break
                    budget = self.cfg.handoff_timeout + 1.0
                    outer.start_soon(self._deadline, budget + SHUTDOWN_GRACE)
                    with trio.CancelScope() as handoff:
                        nursery.start_soon(self._cut_short, signals, handoff)
                        with trio.move_on_after(budget):
                            await self._hand_off()
                    if handoff.cancelled_caught:
                        log.warning("dataset %s: handoff cut short by a second signal", self.dataset.name)
                    nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()

    async def _hand_off(self) -> None:
        report = await self.node.leave()
        log.info(
            "dataset %s: handed off %d of %d owned blocks (%d already there, %d failed, %d not sent)",
            self.dataset.name, report.pushed, report.owned, report.present, report.failed, report.unsent,
        )  # fmt: skip

    async def _cut_short(self, signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
        async for _sig in signals:
            scope.cancel()
            return

    async def _deadline(self, grace: float) -> None:
        await trio.sleep(grace)
        log.warning("dataset %s: still stopping %.0fs after the signal; exiting anyway", self.dataset.name, grace)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)


def check_config(cfg: MountConfig) -> None:
    """What a worker needs beyond a valid configuration: a cache directory and a cluster (ConfigError)."""
    if not cfg.cache_dir:
        raise ConfigError("a worker holds cache for its cluster: give it --cache-dir DIR")
    if not cfg.clustered:
        raise ConfigError(
            "a worker serves a cluster: give --listen HOST:PORT and --peers FILE or --kube-service NAMESPACE/NAME"
        )


def run_worker(dataset: Dataset, cfg: MountConfig) -> int:
    """Open the sources, build the worker and serve until stopped.  Returns 0; raises FluidfsError."""
    check_config(cfg)
    sources = open_sources(dataset)
    CacheWorker(dataset, cfg, sources).run()
    return 0
