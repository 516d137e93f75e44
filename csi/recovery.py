"""Crash recovery: a monitor thread that keeps every shared mount and bind of the node healthy.

Every ``interval`` seconds (default 1 s) it calls ``MountManager.check_all()``: dead FUSE
daemons are remounted at the same path and every stale staging/publish bind is re-bound, so
pods' target paths serve data again within seconds of a ``kill -9``; shared mounts whose
unstage grace period has passed are unmounted.  At plugin start the first pass runs before the
plugin reports ready, which is how a restarted plugin recovers every staged volume and
publication recorded in its state file.

Caveats: this is a plain thread (gRPC's server is thread based, not trio); it stops at the next
tick after ``stop()``.  A failing repair is logged and retried at the next tick.
"""

from __future__ import annotations

import logging
import threading

from .mounts import MountManager

log = logging.getLogger(__name__)


class Monitor:
    def __init__(self, manager: MountManager, interval: float = 1.0) -> None:
        self.manager = manager
        self.interval = interval
        self.recovered = threading.Event()  # set after the first full pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="csi-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self) -> int:
        try:
            repairs = self.manager.check_all()
        except Exception:
            log.exception("recovery pass failed")
            return 0
        if repairs:
            log.warning("recovery pass repaired %d mount(s)/bind(s)", repairs)
        return repairs

    def _run(self) -> None:
        self.run_once()
        self.recovered.set()
        while not self._stop.wait(self.interval):
            self.run_once()
