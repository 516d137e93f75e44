"""The autoscaler's decisions: plain functions over a history of signal samples and a state.

``decide(params, bounds, state, history, now)`` returns a :class:`Decision` (replicas,
direction, reason) and the next :class:`State`; nothing here talks to Kubernetes or keeps
time of its own, so the same code runs in the controller, the local actuator and the tests.

Policies (``Params.policy``):

``training-speed`` (default) sizes the cache workers by how fast training consumes data:

1. *Step up* when readers stall on misses (``stall >= stall_threshold`` seconds of waiting per
   second, for ``stall_samples`` samples in a row) **and** the cluster cache misses: its hit
   ratio as training sees it (the share of the input that did not come from the source) is
   below ``cold_hit_ratio``: one worker more.  The cause is *full* when the cluster cache is
   also full (``fill >= full_threshold``: capacity is what is missing), else *cold* (it is still
   filling: a step can only help if more workers fetch or serve faster).  A job that does not
   stall is compute-bound, and one whose data comes from the cluster cache is not limited by
   its size: neither is scaled up; nor is one whose cluster cache, not full yet, can hold the
   whole dataset (when its size is known): it is filling.
2. *Judge the step*: keep it as soon as the new capacity is filling with the job's data (the
   cluster cache grew by ``min_gain`` of the capacity added, in a cache that is full — at the
   step, cause *full*, or by now, a *cold* step of a first epoch that outgrew the cache) while
   readers keep waiting on misses (median stall since the step at least ``fill_stall``, 1.0 s/s:
   on average a reader always waiting): within one epoch new capacity cannot raise the rate, it
   pays off in the next.  A compute-bound job's cache fills as well, but its readers mostly wait
   on nothing; its steps are judged by the rate.  Otherwise, ``window``
   seconds after the new worker is ready, keep it if the median delivered input rate rose by
   ``min_gain`` over the median of the ``window`` before the step, else *undo* it and remember
   the plateau: no further step up until the job phase ends.  A worker that does not become
   ready within ``ready_timeout`` is undone too.
3. *Scale in* to ``minWorkers`` once the input has been idle (below ``idle_rate``) for
   ``idle_after`` seconds: that ends the job phase.  Scale-in removes workers gracefully: each
   hands its blocks to their new owners before it exits.
4. Every change waits ``cooldown`` seconds after the previous one, and a job phase (from the
   first input after an idle period to the next scale-in) changes direction at most once: an
   undo ends the climb, and the only way down after a climb is the undo or the idle scale-in.
5. Samples marked partial (a member did not answer, a metric is missing) never cause a change;
   in particular missing metrics never look like idle input.

``capacity`` is Fluid's rule, kept as a baseline: one worker more whenever the cluster cache is
at least ``full_threshold`` full, never fewer.  ``manual`` follows ``spec.cache.replicas``
(which an HPA or KEDA may set through the Dataset's scale subresource).

All policies respect ``[min_workers, max_workers]``; the recommended replica count that the
controller exports as ``fluidfs_autoscaler_recommended_replicas`` is ``Decision.replicas``.

Caveats: the autoscaler sees a dataset's aggregate input, not individual jobs: two jobs on one
dataset form one "job phase".  The gain test compares medians over windows, so a job whose
input rate swings by more than ``min_gain`` on the scale of ``window`` can keep a useless step
(bounded by one extra worker per step and by the plateau memory).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fluidfs.control.signals import Sample
from fluidfs.util.sizes import format_size

log = logging.getLogger(__name__)

TRAINING_SPEED, CAPACITY, MANUAL = "training-speed", "capacity", "manual"
POLICIES = (TRAINING_SPEED, CAPACITY, MANUAL)
UP, DOWN, NONE = "up", "down", "none"


@dataclass(frozen=True)
class Params:
    """A Dataset's ``spec.cache.autoscaling`` (seconds, ratios, bytes per second)."""

    policy: str = TRAINING_SPEED
    interval: float = 15.0  # seconds between two samples
    window: float = 90.0  # evaluation window of a step, and the baseline before it
    cooldown: float = 60.0  # at least this long between two changes
    min_gain: float = 0.10  # a step is kept if the input rate rose by this fraction
    stall_threshold: float = 0.05  # seconds of read stall per second that count as stalling
    stall_samples: int = 2  # ... for this many samples in a row
    fill_stall: float = 1.0  # median read stall during a step's trial for filling capacity alone to keep it
    full_threshold: float = 0.90  # cluster cache at least this full counts as full
    cold_hit_ratio: float = 0.90  # hit ratio below this counts as cold
    idle_rate: float = float(1 << 20)  # input below this (bytes/s) counts as idle
    idle_after: float = 300.0  # idle this long ends the job phase: scale in
    ready_timeout: float = 300.0  # a new worker not ready by then is undone


@dataclass(frozen=True)
class Bounds:
    min_workers: int = 0
    max_workers: int = 4
    replicas: int | None = None  # spec.cache.replicas (manual policy)

    def clamp(self, n: int) -> int:
        return max(self.min_workers, min(self.max_workers, n))


@dataclass(frozen=True)
class Trial:
    """A step up under evaluation."""

    from_replicas: int
    to_replicas: int
    started: float
    baseline_rate: float
    baseline_used: int | None
    baseline_capacity: int | None
    cause: str  # "full" | "cold"
    ready_at: float | None = None


@dataclass(frozen=True)
class State:
    """What the autoscaler remembers between two decisions of one dataset."""

    replicas: int
    last_change: float | None = None
    trial: Trial | None = None
    plateau: int | None = None  # no step up at or beyond this count in this job phase
    phase_active: bool = False  # input seen since the last idle scale-in
    last_direction: str = NONE  # of this job phase
    direction_changes: int = 0
    idle_since: float | None = None
    stall_streak: int = 0


@dataclass(frozen=True)
class Decision:
    """The replica count the dataset should have, and why (one line, for events and status)."""

    replicas: int
    direction: str  # UP | DOWN | NONE
    reason: str
    action: str  # hold | step-up | keep | undo | scale-in | bounds | capacity-up | manual

    @property
    def changed(self) -> bool:
        return self.direction != NONE


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _rate(bps: float) -> str:
    return f"{format_size(int(bps))}/s"


def _median_rate(history: Sequence[Sample], after: float, until: float | None = None) -> float | None:
    rates = [
        s.delivered_bps
        for s in history
        if not s.partial and s.delivered_bps is not None and s.time > after and (until is None or s.time <= until)
    ]
    return statistics.median(rates) if rates else None


def _change(state: State, decision_to: int, direction: str, now: float, **fields: Any) -> State:
    changes = state.direction_changes
    if state.last_direction not in (NONE, direction):
        changes += 1
    return replace(
        state, replicas=decision_to, last_change=now, last_direction=direction, direction_changes=changes, **fields
    )


def decide(
    params: Params, bounds: Bounds, state: State, history: Sequence[Sample], now: float
) -> tuple[Decision, State]:
    """The decision for the latest sample in ``history`` (oldest first) at time ``now``."""
    current = state.replicas
    if params.policy == MANUAL:
        want = bounds.clamp(bounds.replicas if bounds.replicas is not None else bounds.min_workers)
        return _set(state, want, now, f"manual: spec.cache.replicas={want}", "manual")
    clamped = bounds.clamp(current)
    if clamped != current:
        limit = "minWorkers" if clamped > current else "maxWorkers"
        return _set(state, clamped, now, f"{limit} is {clamped}", "bounds", trial=None)
    latest = history[-1] if history else None
    if latest is None or latest.partial:
        why = "; ".join(latest.problems[:3]) if latest is not None else "no sample yet"
        return Decision(current, NONE, f"holding at {current}: signals incomplete ({why})", "hold"), state
    if params.policy == CAPACITY:
        return _capacity(params, bounds, state, latest, now)
    return _training_speed(params, bounds, state, history, latest, now)


def _set(state: State, want: int, now: float, reason: str, action: str, **fields: Any) -> tuple[Decision, State]:
    if want == state.replicas:
        return Decision(want, NONE, reason, "hold"), replace(state, **fields)
    direction = UP if want > state.replicas else DOWN
    return Decision(want, direction, reason, action), _change(state, want, direction, now, **fields)


def _cooling(params: Params, state: State, now: float) -> float:
    """Seconds of cooldown left (0 when a change may happen now)."""
    if state.last_change is None:
        return 0.0
    return max(0.0, state.last_change + params.cooldown - now)


def _capacity(params: Params, bounds: Bounds, state: State, s: Sample, now: float) -> tuple[Decision, State]:
    n = state.replicas
    fill = s.fill
    if fill is None:
        return Decision(n, NONE, f"holding at {n}: cache usage unknown", "hold"), state
    if fill < params.full_threshold:
        return Decision(n, NONE, f"cache {_pct(fill)} full (< {_pct(params.full_threshold)})", "hold"), state
    if n >= bounds.max_workers:
        return Decision(n, NONE, f"cache {_pct(fill)} full but at maxWorkers ({n})", "hold"), state
    left = _cooling(params, state, now)
    if left > 0:
        return Decision(n, NONE, f"cache {_pct(fill)} full; cooldown {left:.0f}s", "hold"), state
    reason = f"cache {_pct(fill)} full (>= {_pct(params.full_threshold)}): +1 worker (capacity policy)"
    return Decision(n + 1, UP, reason, "capacity-up"), _change(state, n + 1, UP, now)


def _training_speed(
    params: Params, bounds: Bounds, state: State, history: Sequence[Sample], s: Sample, now: float
) -> tuple[Decision, State]:
    n = state.replicas
    rate = s.delivered_bps or 0.0
    # --- idle input: the end of a job phase --------------------------------------------------
    if rate < params.idle_rate:
        idle_since = state.idle_since if state.idle_since is not None else s.time - s.interval
        state = replace(state, idle_since=idle_since, stall_streak=0)
        idle = now - idle_since
        if idle >= params.idle_after:
            reason = f"input idle for {idle:.0f}s: back to minWorkers ({bounds.min_workers}); leaving workers hand off"
            ended = replace(state, phase_active=False, trial=None, plateau=None)
            if n == bounds.min_workers:
                return Decision(n, NONE, f"input idle for {idle:.0f}s; at minWorkers", "hold"), replace(
                    ended, last_direction=NONE, direction_changes=0
                )
            decision, nxt = _set(ended, bounds.min_workers, now, reason, "scale-in")
            return decision, replace(nxt, last_direction=NONE, direction_changes=0)
        return Decision(n, NONE, f"input idle for {idle:.0f}s (scale-in after {params.idle_after:.0f}s)", "hold"), state
    if not state.phase_active:  # the first input after an idle period starts a job phase
        state = replace(state, phase_active=True, plateau=None, last_direction=NONE, direction_changes=0)
    state = replace(state, idle_since=None)
    stalled = s.stall is not None and s.stall >= params.stall_threshold
    state = replace(state, stall_streak=state.stall_streak + 1 if stalled else 0)
    # --- a step under evaluation -------------------------------------------------------------
    if state.trial is not None:
        return _judge(params, state, history, s, now)
    # --- should we step up? ------------------------------------------------------------------
    if not stalled:
        why = "no read stall" if s.stall is None or s.stall == 0 else f"read stall {s.stall:.2f}s/s"
        return Decision(n, NONE, f"{why}: input {_rate(rate)} is not limited by the cache", "hold"), state
    fill, hits = s.fill, s.hit_ratio
    full = fill is not None and fill >= params.full_threshold
    cold = hits is not None and hits < params.cold_hit_ratio
    if not cold:
        detail = f"hit ratio {_pct(hits)}" if hits is not None else "hit ratio unknown"
        return Decision(n, NONE, f"readers stall but the input comes from the cache ({detail})", "hold"), state
    size, capacity = s.dataset_bytes, s.capacity_bytes
    if not full and size and capacity and capacity >= size:
        why = f"the cluster cache ({format_size(capacity)}) holds the whole dataset ({format_size(size)})"
        return Decision(n, NONE, f"readers stall on misses but {why}: filling ({_pct(fill or 0)} full)", "hold"), state
    if state.stall_streak < params.stall_samples:
        return Decision(n, NONE, f"readers stall ({s.stall:.2f}s/s); confirming", "hold"), state
    if state.plateau is not None and n >= state.plateau:
        return Decision(n, NONE, f"plateau: more workers did not raise the input rate beyond {n}", "hold"), state
    if n >= bounds.max_workers:
        return Decision(n, NONE, f"readers stall but at maxWorkers ({n})", "hold"), state
    left = _cooling(params, state, now)
    if left > 0:
        return Decision(n, NONE, f"readers stall; cooldown {left:.0f}s", "hold"), state
    if state.last_direction == DOWN and state.direction_changes >= 1:
        return Decision(n, NONE, "readers stall but this job phase already changed direction", "hold"), state
    baseline = _median_rate(history, now - params.window)
    cause = "full" if full else "cold"
    what = f"the cluster cache is full ({_pct(fill or 0)}, hit ratio {_pct(hits or 0)})"
    if not full:
        what = f"cold (hit ratio {_pct(hits or 0)})"
    trial = Trial(n, n + 1, now, baseline if baseline is not None else rate, s.used_bytes, s.capacity_bytes, cause)
    reason = (
        f"readers stall {s.stall:.2f}s/s on misses and {what}: +1 worker, "
        f"kept if input ({_rate(rate)}) rises {_pct(params.min_gain)} within {params.window:.0f}s"
    )
    return Decision(n + 1, UP, reason, "step-up"), _change(state, n + 1, UP, now, trial=trial)


def _judge(params: Params, state: State, history: Sequence[Sample], s: Sample, now: float) -> tuple[Decision, State]:
    trial = state.trial
    assert trial is not None
    n = state.replicas
    if trial.ready_at is None:
        if s.workers >= trial.to_replicas:
            trial = replace(trial, ready_at=s.time)
            state = replace(state, trial=trial)
        elif now - trial.started >= params.ready_timeout:
            reason = f"worker {trial.to_replicas} not ready after {params.ready_timeout:.0f}s: undo"
            return _undo(state, trial, now, reason)
        else:
            return Decision(n, NONE, f"waiting for worker {trial.to_replicas} to be ready", "hold"), state
    assert trial.ready_at is not None
    grew = _filling(params, trial, history, s)
    left = trial.ready_at + params.window - now
    if grew and s.time > trial.ready_at:  # capacity is what was missing: no need to wait for the rate
        reason = f"kept {trial.from_replicas}->{trial.to_replicas}: the new capacity is filling"
        return Decision(n, NONE, reason, "keep"), replace(state, trial=None)
    if left > 0:
        what = f"evaluating {trial.from_replicas}->{trial.to_replicas} ({left:.0f}s left)"
        return Decision(n, NONE, what, "hold"), state
    after = _median_rate(history, trial.ready_at)
    if after is None:
        return Decision(n, NONE, "evaluating: no complete sample since the step", "hold"), state
    base = trial.baseline_rate
    gain = (after - base) / base if base > 0 else (1.0 if after > 0 else 0.0)
    if gain >= params.min_gain or grew:
        why = f"input {gain:+.0%}" + (", the new capacity is filling" if grew and gain < params.min_gain else "")
        reason = f"kept {trial.from_replicas}->{trial.to_replicas}: {why}"
        return Decision(n, NONE, reason, "keep"), replace(state, trial=None)
    reason = (
        f"undo {trial.to_replicas}->{trial.from_replicas}: input {gain:+.0%} < {_pct(params.min_gain)}; "
        f"plateau at {trial.from_replicas}"
    )
    return _undo(state, trial, now, reason)


def _filling(params: Params, trial: Trial, history: Sequence[Sample], s: Sample) -> bool:
    """The step's new capacity holds the job's data: the cluster cache grew by ``min_gain`` of the
    capacity added, and it is full — at the step (cause *full*) or by now (a *cold* step of a
    first epoch that outgrew the cache) — while readers kept waiting on misses (median stall since
    the step at least ``fill_stall``: a compute-bound job's cache fills too, but it is not waiting)."""
    full_now = s.fill is not None and s.fill >= params.full_threshold
    if not (trial.cause == "full" or full_now) or None in (trial.baseline_used, s.used_bytes, s.capacity_bytes):
        return False
    stalls = [h.stall for h in history if h.time > trial.started and not h.partial and h.stall is not None]
    if not stalls or statistics.median(stalls) < params.fill_stall:
        return False
    added = (s.capacity_bytes or 0) - (trial.baseline_capacity or 0)
    return added > 0 and (s.used_bytes or 0) - (trial.baseline_used or 0) >= params.min_gain * added


def _undo(state: State, trial: Trial, now: float, reason: str) -> tuple[Decision, State]:
    nxt = _change(state, trial.from_replicas, DOWN, now, trial=None, plateau=trial.from_replicas)
    return Decision(trial.from_replicas, DOWN, reason, "undo"), nxt
