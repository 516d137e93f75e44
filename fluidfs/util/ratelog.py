"""Rate-limited logging: at most one message per key per interval, then a count of the rest.

A source that is down makes every read fail; logging each failure floods the log (55 KB/s from
one retrying reader).  :class:`RateLimitedLog` logs the first message of a key (e.g. ``(op,
errno)``), suppresses the same key for ``interval`` seconds, and adds ``(N similar suppressed
in the last Ts)`` to the next message of that key that gets through.

Caveats: suppressed messages are reported only when the key's next message is logged, so a burst
that stops for good leaves its count unsaid (the metrics count every failure).  The key table is
bounded (``max_keys``; the oldest keys are forgotten).  Thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class RateLimitedLog:
    """Wraps a logger; one message per key per ``interval`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()  # key -> (last logged, suppressed)

    def log(self, level: int, key: Hashable, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``key`` was logged less than ``interval`` ago; True if logged."""
        now = self._clock()
        with self._lock:
            last, suppressed = self._keys.get(key, (-float("inf"), 0))
            if now - last < self.interval:
                self._keys[key] = (last, suppressed + 1)
                return False
            self._keys[key] = (now, 0)
            self._keys.move_to_end(key)
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
        if suppressed:
            msg += " (%d similar suppressed in the last %.0fs)"
            args = (*args, suppressed, now - last)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)
