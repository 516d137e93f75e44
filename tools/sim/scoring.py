"""kube-scheduler's choice of a node for one pod of a queue-admitted job: cache affinity plus LeastAllocated.

Used by the simulator and by the real calibration run (``tools.bench.schedrun``), so both place
jobs by the same code. The pod's node affinity comes from the controller's own
``placement.cache_affinity`` over the nodes' ``cache.fluidfs.io`` labels (``locations``); each
feasible node scores ``2 x NodeAffinity`` (``placement.preferred_score``, normalised to 0..100
over the feasible nodes) ``+ LeastAllocated`` GPUs (0..100); ties are broken at random. A node
is taken only if the rest of the round's admitted jobs still fit beside it (the queue admitted
them together).

Caveats: one pod per job (``gpus`` on one node); no other kube-scheduler plugin is modelled.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from fluidfs.control.sched import locations, ordering, placement

__all__ = ["choose_node"]


def choose_node(
    name: str,
    gpus: int,
    dataset_key: str,
    free: Mapping[str, int],
    total: Mapping[str, int],
    labels: Mapping[str, Mapping[str, str]] | None,
    rest: Sequence[ordering.JobInfo],
    rng: random.Random,
) -> str:
    """The node for job ``name`` (``labels`` None: cache-oblivious, only LeastAllocated and chance)."""
    feasible = [n for n in free if free[n] >= gpus]
    tiebreak = {n: rng.random() for n in feasible}
    if labels is None:
        scores = {n: 0.0 for n in feasible}
    else:
        locs = locations.CacheLocations.from_node_labels({n: dict(v) for n, v in labels.items()})
        aff = placement.as_node_affinity(placement.cache_affinity([dataset_key], locs))
        raw = {n: placement.preferred_score(aff, dict(labels[n]), n) for n in feasible}
        top = max(raw.values(), default=0.0)
        scores = {}
        for n in feasible:
            affinity = raw[n] * 100 / top if top > 0 else 0.0
            least = (free[n] - gpus) * 100 / total[n]
            scores[n] = 2 * affinity + least
    for n in sorted(feasible, key=lambda n: (-scores[n], tiebreak[n])):
        left = dict(free)
        left[n] -= gpus
        cap: ordering.Capacity | None = ordering.Capacity(left)
        for other in rest:
            cap = cap.place(other) if cap else None
        if cap is not None:
            return n
    raise RuntimeError(f"job {name}: no node leaves room for the rest of the round")
