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
import heapq
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(eq=False)
class Flow:
    ident: int
    resources: tuple[str, ...]
    remaining: float  # bytes left at ``since``
    size: float = 0.0
    rate: float = 0.0
    since: float = 0.0
    version: int = 0
    payload: object = None


class Flows:
    """Active transfers and the capacity (bytes/s) of each resource.

    Incremental: a flow's rate changes only when a flow starts or ends on one of its resources,
    so only those flows are re-rated; each flow's bytes are settled when its rate changes, and
    finish times wait in a heap (stale entries are skipped by version).
    """

    def __init__(self, capacity: Mapping[str, float]) -> None:
        self.capacity = dict(capacity)
        self.active: dict[int, Flow] = {}
        self.users: dict[str, set[Flow]] = {r: set() for r in self.capacity}
        self.now = 0.0
        self._heap: list[tuple[float, int, int]] = []
        self._next_id = 0

    def _rerate(self, flows: Iterable[Flow], t: float) -> None:
        cap, users, heap = self.capacity, self.users, self._heap
        for f in flows:
            rate = min(cap[r] / len(users[r]) for r in f.resources)
            if rate == f.rate:
                continue
            f.remaining = max(0.0, f.remaining - f.rate * (t - f.since))
            f.since, f.rate = t, rate
            f.version += 1
            heapq.heappush(heap, (t + f.remaining / rate, f.ident, f.version))

    def _affected(self, resources: Iterable[str]) -> set[Flow]:
        out: set[Flow] = set()
        for r in resources:
            out |= self.users[r]
        return out

    def start(self, t: float, resources: Iterable[str], nbytes: float, payload: object) -> Flow:
        self.now = max(self.now, t)
        self._next_id += 1
        flow = Flow(self._next_id, tuple(resources), float(nbytes), float(nbytes), since=t, payload=payload)
        self.active[flow.ident] = flow
        for r in flow.resources:
            self.users[r].add(flow)
        self._rerate(self._affected(flow.resources), t)
        return flow

    def finish_due(self, t: float) -> list[Flow]:
        """Advance to ``t`` and remove the flows that are done by then."""
        self.now = max(self.now, t)
        heap, done = self._heap, []
        while heap and heap[0][0] <= t + 1e-9 * max(1.0, t):
            _, ident, version = heapq.heappop(heap)
            f = self.active.get(ident)
            if f is None or f.version != version:
                continue
            del self.active[ident]
            for r in f.resources:
                self.users[r].discard(f)
            done.append(f)
        if done:
            self._rerate(self._affected(r for f in done for r in f.resources), t)
        return done

    def next_finish(self) -> float | None:
        heap = self._heap
        while heap:
            _, ident, version = heap[0]
            f = self.active.get(ident)
            if f is not None and f.version == version:
                return heap[0][0]
            heapq.heappop(heap)
        return None
