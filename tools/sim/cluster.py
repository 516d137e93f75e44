"""The simulator's data model: node caches, chunk ownership, and bandwidth shared by flows.

- ``NodeCache``: one node's cache (bytes capacity, LRU across datasets, no eviction within one), with bytes
  held per dataset kept up to date (that is what the node's ``cache.fluidfs.io`` labels report).
- ``owner``: the member that owns a chunk, by weighted rendezvous (highest random weight) hashing
  of (dataset, chunk) over the dataset's members, weights = cache capacity — the cluster cache's
  rule, so a member joining or leaving moves only its share.
- ``Flows``: transfers sharing resources (the source, each node's NIC in and out); a flow's rate
  is the smallest equal share among the resources it uses (``capacity / flows on it``), recomputed
  whenever a flow starts or ends.

Caveats: equal shares are not max-min fairness (a flow held back by one resource does not hand
its unused share of another to the rest), and transfers have no latency or per-request cost.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Chunk = tuple[str, int]  # (dataset, chunk index)


class NodeCache:
    """One node's cache: LRU across datasets, never evicting a dataset's chunks for the same
    dataset (fluidfs's ``none`` eviction within a dataset: a dataset larger than the room it gets
    keeps the chunks it has, so a sequential epoch still hits on them instead of thrashing)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.datasets: OrderedDict[str, OrderedDict[int, int]] = OrderedDict()  # LRU dataset first
        self.by_dataset: dict[str, int] = {}

    def has(self, chunk: Chunk) -> bool:
        held = self.datasets.get(chunk[0])
        return held is not None and chunk[1] in held

    def touch(self, chunk: Chunk) -> None:
        self.datasets[chunk[0]].move_to_end(chunk[1])
        self.datasets.move_to_end(chunk[0])

    def insert(self, chunk: Chunk, nbytes: int) -> bool:
        """Store ``chunk``, evicting least recently used chunks of *other* datasets; False when
        there is no room that way."""
        ds, index = chunk
        if self.has(chunk):
            self.touch(chunk)
            return True
        while self.used + nbytes > self.capacity:
            victim = next((d for d in self.datasets if d != ds), None)
            if victim is None:
                return False
            chunks = self.datasets[victim]
            _, size = chunks.popitem(last=False)
            self.used -= size
            self.by_dataset[victim] -= size
            if not chunks:
                del self.datasets[victim]
                del self.by_dataset[victim]
        self.datasets.setdefault(ds, OrderedDict())[index] = nbytes
        self.datasets.move_to_end(ds)
        self.used += nbytes
        self.by_dataset[ds] = self.by_dataset.get(ds, 0) + nbytes
        return True


_SCORES: dict[tuple[str, int, str], float] = {}


def _unit(ds: str, index: int, node: str) -> float:
    key = (ds, index, node)
    got = _SCORES.get(key)
    if got is None:
        h = hashlib.blake2b(f"{ds}\0{index}\0{node}".encode(), digest_size=8).digest()
        got = (int.from_bytes(h, "big") + 1) / (2**64 + 2)  # in (0, 1)
        _SCORES[key] = got
    return got


def owner(chunk: Chunk, members: Sequence[str], weights: Mapping[str, float]) -> str:
    """Weighted rendezvous: the member with the highest ``-weight / ln(u)``."""
    return max(members, key=lambda n: (-weights.get(n, 1.0) / math.log(_unit(chunk[0], chunk[1], n)), n))


@dataclass
class Flow:
    ident: int
    resources: tuple[str, ...]
    remaining: float
    rate: float = 0.0
    payload: object = None


@dataclass
class Flows:
    """Active transfers and the capacity (bytes/s) of each resource."""

    capacity: dict[str, float]
    active: dict[int, Flow] = field(default_factory=dict)
    now: float = 0.0
    _next_id: int = 0

    def advance(self, t: float) -> None:
        dt = t - self.now
        if dt > 0:
            for f in self.active.values():
                f.remaining = max(0.0, f.remaining - f.rate * dt)
        self.now = max(self.now, t)

    def _rerate(self) -> None:
        count: dict[str, int] = {}
        for f in self.active.values():
            for r in f.resources:
                count[r] = count.get(r, 0) + 1
        for f in self.active.values():
            f.rate = min(self.capacity[r] / count[r] for r in f.resources)

    def start(self, t: float, resources: Iterable[str], nbytes: float, payload: object) -> Flow:
        self.advance(t)
        self._next_id += 1
        flow = Flow(self._next_id, tuple(resources), float(nbytes), payload=payload)
        self.active[flow.ident] = flow
        self._rerate()
        return flow

    def finish_due(self, t: float) -> list[Flow]:
        """Advance to ``t`` and remove the flows that are done by then."""
        self.advance(t)
        done = [f for f in self.active.values() if f.remaining <= 1e-6 * max(1.0, f.rate)]
        for f in done:
            del self.active[f.ident]
        if done:
            self._rerate()
        return done

    def next_finish(self) -> float | None:
        best: float | None = None
        for f in self.active.values():
            if f.rate > 0:
                t = self.now + f.remaining / f.rate
                best = t if best is None or t < best else best
        return best
