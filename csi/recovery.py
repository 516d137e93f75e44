"""Crash recovery: one checker thread per dataset keeps its shared mount and binds healthy.

Every ``interval`` seconds each dataset's checker calls ``MountManager.check_dataset(key)``: a
dead FUSE daemon is remounted at the same path and every bind that does not answer gets a fresh
bind stacked on top, so pods' target paths serve data again within seconds of a ``kill -9``;
a dataset whose unstage grace period has passed is unmounted.  Datasets are checked
independently: a remount that waits for an unreachable endpoint (up to ``--mount-timeout``)
delays the repairs of that dataset only.  A dataset busy with a call (stage, publish...) is
skipped until the next tick.

At start the monitor adopts what is there: a dataset whose daemon still runs and answers (the
supervisor restarted, the daemons did not) is left alone; only dead ones are remounted.  The
plugin serves calls meanwhile: a call on a dataset being repaired waits for its lock.

Caveats: plain threads (gRPC's server is thread based, not trio); a checker stops at its next
tick after ``stop()`` or once its dataset is gone from the state.
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
        self._stop = threading.Event()
        self._checkers: dict[str, threading.Thread] = {}
        self._thread = threading.Thread(target=self._run, name="csi-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for t in list(self._checkers.values()):
            t.join(timeout=1)

    def check(self, key: str) -> int:
        try:
            repairs = self.manager.check_dataset(key)
        except Exception:
            log.exception("dataset %s: recovery check failed", key)
            return 0
        if repairs:
            log.warning("dataset %s: %d mount(s)/bind(s) repaired", key, repairs)
        return repairs

    def _checker(self, key: str) -> None:
        self.check(key)
        while not self._stop.wait(self.interval):
            if key not in self.manager.keys():
                return
            self.check(key)

    def _spawn(self) -> None:
        """Start a checker for every dataset without one; forget the checkers that ended."""
        for key in [k for k, t in self._checkers.items() if not t.is_alive()]:
            del self._checkers[key]
        for key in self.manager.keys():
            if key not in self._checkers:
                t = threading.Thread(target=self._checker, args=(key,), name=f"csi-check:{key}", daemon=True)
                self._checkers[key] = t
                t.start()

    def _run(self) -> None:
        for key in self.manager.keys():
            self.manager.adopt(key)
        self._spawn()
        while not self._stop.wait(min(self.interval, 1.0)):
            self._spawn()
