"""Cache-aware scheduling inside fluidfs-controller: the caches, the admission webhook, node labels and Job queues.

:class:`Scheduling` owns what the controller runs besides the Dataset reconcile loop:

- a :class:`~fluidfs.control.informer.ClusterView` (periodic lists of PVCs, PVs, StorageClasses,
  Nodes, queued Jobs and unfinished Pods), refreshed by the controller's loop on every replica;
- the mutating admission webhook (``sched.webhook.AdmissionHandler`` served by
  ``sched.webhook.WebhookServer`` in threads of this process, TLS from files the chart mounts),
  answering from the view on every replica: cache affinity for pods, ``suspend`` for queued Jobs
  (only when this controller runs queues, so a suspended Job is never left without one);
- on the leader only: the node labels (``fluidfs.control.nodelabels``), the Job queues
  (``fluidfs.control.jobqueue``, with warm-ups from ``fluidfs.control.warm``) and the Kueue
  AdmissionCheck (``fluidfs.control.kueuecheck``).

Every feature is optional (``SchedulingConfig``); nothing runs for one that is off, and its
caches are not listed.  An error in one pass is logged and the next pass tries again: the
reconcile loop never stops for it.

Caveats: the webhook starts answering once the first lists are done (or failed): a pod admitted
before that, or while the API server cannot be listed, gets no cache affinity (it is admitted
unchanged, as with ``failurePolicy: Ignore``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fluidfs.control import metrics
from fluidfs.control.adapter import KubeApi
from fluidfs.control.informer import ClusterView, Periods
from fluidfs.control.jobqueue import JobQueues, QueueSettings
from fluidfs.control.kueuecheck import KueueChecks, KueueSettings
from fluidfs.control.nodelabels import LabelConfig, NodeLabeler
from fluidfs.control.sched.resolve import DRIVER
from fluidfs.control.sched.webhook import AdmissionHandler, WebhookConfig, WebhookServer
from fluidfs.control.warm import WarmConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookSettings:
    certfile: str
    keyfile: str
    host: str = "0.0.0.0"
    port: int = 9443


@dataclass(frozen=True)
class SchedulingConfig:
    webhook: WebhookSettings | None = None
    labels: LabelConfig | None = None
    queues: QueueSettings | None = None
    warm: WarmConfig | None = None  # warm-ups of the queues' warm intents (with queues only)
    kueue: KueueSettings | None = None  # the Kueue AdmissionCheck
    periods: Periods = field(default_factory=Periods)
    driver: str = DRIVER
    scrape_threads: int = 8

    @property
    def enabled(self) -> bool:
        return any(f is not None for f in (self.webhook, self.labels, self.queues, self.kueue))


class CountingHandler:
    """An ``AdmissionHandler`` whose answers are counted in ``fluidfs_controller_webhook_reviews_total``."""

    def __init__(self, inner: AdmissionHandler) -> None:
        self.inner = inner

    def review(self, body: bytes) -> dict[str, Any]:
        out = self.inner.review(body)
        resp: Mapping[str, Any] = out.get("response") or {}
        warnings = resp.get("warnings") or []
        if any("skipped" in str(w) for w in warnings):
            result = "error"
        else:
            result = "patched" if resp.get("patch") else "unchanged"
        metrics.WEBHOOK_REVIEWS.labels(_kind_of_review(body), result).inc()
        return out


def _kind_of_review(body: bytes) -> str:
    text = body[:4096].decode("utf-8", "replace")
    if '"kind":"Pod"' in text.replace(" ", ""):
        return "pod"
    if '"kind":"Job"' in text.replace(" ", ""):
        return "job"
    return "other"


class Scheduling:
    """The scheduling features of one controller replica (see the module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        cfg: SchedulingConfig,
        *,
        identity: str,
        lookup_api: KubeApi | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.view = ClusterView(
            api,
            cfg.periods,
            lookup_api=lookup_api,
            jobs=cfg.queues is not None,
            pods=cfg.queues is not None or cfg.labels is not None or cfg.kueue is not None,
            kueue=cfg.kueue is not None,
            driver=cfg.driver,
            clock=clock,
        )
        self._pool = ThreadPoolExecutor(max_workers=cfg.scrape_threads, thread_name_prefix="fluidfs-labels")
        self.labeler = NodeLabeler(api, self.view, cfg.labels, self._pool, clock) if cfg.labels else None
        self.queues = (
            JobQueues(
                api,
                self.view,
                cfg.queues,
                warm_config=cfg.warm,
                dataset_bytes=self._dataset_bytes,
                identity=identity,
                clock=clock,
            )
            if cfg.queues
            else None
        )
        self.kueue = (
            KueueChecks(api, self.view, cfg.kueue, dataset_bytes=self._dataset_bytes, identity=identity, clock=clock)
            if cfg.kueue
            else None
        )
        self.handler: CountingHandler | None = None
        self.server: WebhookServer | None = None

    def _dataset_bytes(self) -> Mapping[str, int]:
        return self.labeler.dataset_bytes if self.labeler is not None else {}

    def start(self) -> None:
        """List every cache once, then serve the webhook (if configured)."""
        self.refresh()
        w = self.cfg.webhook
        if w is None:
            return
        inner = AdmissionHandler(
            self.view,
            self.view.locations,
            WebhookConfig(
                driver=self.cfg.driver,
                suspend_queued_jobs=self.cfg.queues is not None,
                queues=frozenset(self.cfg.queues.names) if self.cfg.queues is not None else None,
            ),
        )
        self.handler = CountingHandler(inner)
        self.server = WebhookServer(self.handler, w.certfile, w.keyfile, host=w.host, port=w.port)
        self.server.start()

    def refresh(self) -> float:
        """List what is due (every replica); seconds until the next list is."""
        try:
            return self.view.refresh()
        except Exception:
            log.exception("scheduling caches: refresh failed")
            return 5.0

    def run_leader(self) -> float:
        """The leader's writes: node labels and queues when due; seconds until the next is."""
        waits = []
        if self.labeler is not None:
            try:
                self.labeler.run_if_due()
            except Exception:
                log.exception("node labels: pass failed")
            waits.append(self.labeler.due())
        if self.queues is not None:
            try:
                self.queues.run_if_due()
            except Exception:
                log.exception("job queues: pass failed")
            waits.append(self.queues.due())
        if self.kueue is not None:
            try:
                self.kueue.run_if_due()
            except Exception:
                log.exception("kueue check: pass failed")
            waits.append(self.kueue.due())
        return min(waits, default=60.0)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self._pool.shutdown(wait=True, cancel_futures=True)
