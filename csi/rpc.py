"""RPC plumbing shared by the plugin's servicers: time budgets, admission slots, error mapping.

The gRPC server runs handlers on a fixed thread pool.  Calls that may wait (a mount, a lock
held by a mount, a ``statvfs`` of a hung FUSE mount) each need an *admission slot*; the slots
are fewer than the pool's threads (``POOL_THREADS``), so Identity calls (Probe) and the cheap
Node calls always find a free thread.  A call that finds no free slot is answered UNAVAILABLE at
once (kubelet retries), instead of queueing behind the pool.

A :class:`Budget` is the time one call may take: the caller's deadline (less a margin, so the
answer arrives before the caller gives up) capped by the plugin's own bound; waits for locks
and mounts are cut to it, and running out is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from .volumes import RequestError

log = logging.getLogger(__name__)
Resp = TypeVar("Resp")

POOL_THREADS = 64  # gRPC handler threads
OP_SLOTS = 48  # stage/publish/unpublish/unstage (or their forwarding) at once
STATS_SLOTS = 8  # NodeGetVolumeStats at once
REPLY_MARGIN = 1.0  # seconds kept back from the caller's deadline to deliver the answer


class Budget:
    """A deadline on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + max(0.0, seconds)

    @classmethod
    def of(cls, context: grpc.ServicerContext, cap: float) -> Budget:
        """``cap`` seconds, or less when the caller's deadline is closer."""
        remaining = context.time_remaining()
        if remaining is None or math.isinf(remaining):
            return cls(cap)
        return cls(min(cap, remaining - REPLY_MARGIN))

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def require(self, seconds: float, what: str) -> float:
        """The time left, or DEADLINE_EXCEEDED if less than ``seconds`` remain for ``what``."""
        left = self.left()
        if left < seconds:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no time left to {what}")
        return left


class Admission:
    """At most ``slots`` calls of one kind at once; the next is refused (UNAVAILABLE), not queued."""

    def __init__(self, kind: str, slots: int) -> None:
        self.kind = kind
        self.slots = slots
        self._sem = threading.BoundedSemaphore(slots)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if not self._sem.acquire(blocking=False):
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, f"{self.slots} {self.kind} calls are in progress on this node; retry"
            )
        try:
            yield
        finally:
            self._sem.release()


def call(context: grpc.ServicerContext, thunk: Callable[[], Resp]) -> Resp:
    """Run ``thunk()``; a RequestError becomes its gRPC status, an OSError INTERNAL."""
    try:
        return thunk()
    except RequestError as e:
        log.info("%s: %s", grpc.StatusCode(e.code).name, e.message)
        context.abort(e.code, e.message)
    except OSError as e:
        log.exception("node operation failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{e.strerror or e}: {e.filename or ''}")
    raise AssertionError("unreachable: context.abort raises")
