"""The simulator's data path: the cluster cache's members, where each chunk is read from, transfers, warm-ups.

A dataset's *members* are the nodes running a job on it, the node warming it, and the nodes that
did either within ``grace`` seconds (the mount's ``unstageGrace``). A chunk's owner is the
weighted-rendezvous winner among them (``cluster.owner``). A reader's chunk comes from its own
node's cache if held there; else from the owner over the NICs; else from a member that holds it
(ownership moved: the owner takes a copy, a *handoff*); else from the source through the owner,
which keeps it. Each chunk leaves the source once while it stays cached: a reader asking for a
chunk in flight waits for it. Readers keep no copy of chunks they do not own.

A *warm-up* (the queue's warm intent, run as ``fluidfs load`` on one node) reads the dataset's
missing chunks from the source through that node, ``prefetch`` at a time; the node is a member
while it runs and for ``grace`` after, so the owners it filled stay visible, and the cache labels
draw the job there.

Caveats: readers are sequential (chunk ``i`` of a pass after ``i - 1``), so jobs started together
on one dataset read in step and share in-flight chunks more than shuffled readers would; see
``cluster`` for the bandwidth model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.sim.cluster import Chunk, Flow, Flows, NodeCache, owner


@dataclass
class Traffic:
    """Bytes one reader (or all warm-ups) moved: from the source, between peers, from its own node."""

    source: float = 0.0
    peer: float = 0.0
    local: float = 0.0


@dataclass
class Reader:
    """A job reading its dataset on ``node``, one chunk of ``chunk_bytes`` at a time."""

    name: str
    dataset: str
    node: str
    chunk_bytes: float
    traffic: Traffic = field(default_factory=Traffic)


@dataclass
class _Warm:
    dataset: str
    node: str
    next: int = 0
    active: int = 0


class DataPath:
    """Caches, membership, ownership and transfers of one simulated cluster.

    ``fetch`` asks for a chunk; when it has arrived, ``arrived(reader name, t)`` is called.
    ``push(t, kind, data)`` schedules the simulator's events, which it hands back: ``flows`` (the
    next transfer to finish) to ``on_flows``, ``expire`` (a membership ending) to ``on_expire``,
    ``local`` (a local read done; ``data`` is the reader's name) to ``arrived``.
    """

    def __init__(
        self,
        nodes: Sequence[str],
        cache_bytes: int,
        bandwidth: dict[str, float],
        local_bandwidth: float,
        sizes: dict[str, int],
        chunks: int,
        prefetch: int,
        grace: float,
        push: Callable[[float, str, Any], None],
        arrived: Callable[[str, float], None],
        shared: bool = True,
        peer_copy: bool = False,
    ) -> None:
        self.shared, self.peer_copy = shared, peer_copy
        self.nodes = list(nodes)
        self.caches = {n: NodeCache(cache_bytes) for n in self.nodes}
        self.weights = {n: float(cache_bytes) for n in self.nodes}
        self.flows = Flows(bandwidth)
        self.local_bandwidth = local_bandwidth
        self.sizes, self.chunks, self.prefetch, self.grace = sizes, chunks, prefetch, grace
        self.push, self.arrived = push, arrived
        self.readers: dict[str, Reader] = {}
        self.reading: dict[str, dict[str, int]] = {}  # dataset -> node -> readers
        self.leaving: dict[str, dict[str, float]] = {}  # dataset -> node -> membership ends
        self.warms: dict[str, _Warm] = {}
        self.warm_traffic = Traffic()
        self.inflight: dict[Chunk, list[str]] = {}  # chunk -> readers waiting for it
        self._members: dict[str, tuple[str, ...]] = {}  # cache, dropped on change
        self._owners: dict[tuple[str, ...], dict[Chunk, str]] = {}
        self._flow_gen = 0

    # ------------------------------------------------------------------ membership

    def members(self, ds: str) -> tuple[str, ...]:
        got = self._members.get(ds)
        if got is None:
            nodes = set(self.reading.get(ds, {})) | set(self.leaving.get(ds, {}))
            if ds in self.warms:
                nodes.add(self.warms[ds].node)
            got = self._members[ds] = tuple(sorted(nodes))
        return got

    def owner(self, chunk: Chunk, members: tuple[str, ...]) -> str:
        owners = self._owners.setdefault(members, {})
        got = owners.get(chunk)
        if got is None:
            got = owners[chunk] = owner(chunk, members, self.weights)
        return got

    def join(self, reader: Reader) -> None:
        self.readers[reader.name] = reader
        on = self.reading.setdefault(reader.dataset, {})
        on[reader.node] = on.get(reader.node, 0) + 1
        self._members.pop(reader.dataset, None)

    def leave(self, name: str, t: float) -> Reader:
        reader = self.readers.pop(name)
        on = self.reading[reader.dataset]
        on[reader.node] -= 1
        if on[reader.node] == 0:
            del on[reader.node]
            self._linger(reader.dataset, reader.node, t)
        return reader

    def _linger(self, ds: str, node: str, t: float) -> None:
        until = t + self.grace
        self.leaving.setdefault(ds, {})[node] = until
        self._members.pop(ds, None)
        self.push(until, "expire", (ds, node, until))

    def on_expire(self, data: tuple[str, str, float]) -> None:
        ds, node, until = data
        if self.leaving.get(ds, {}).get(node) == until:
            del self.leaving[ds][node]
            self._members.pop(ds, None)

    def held(self) -> dict[str, int]:
        """Bytes of each dataset in the cluster cache."""
        out: dict[str, int] = {}
        for cache in self.caches.values():
            for ds, nbytes in cache.by_dataset.items():
                out[ds] = out.get(ds, 0) + nbytes
        return out

    # ------------------------------------------------------------------ reading

    def read_local_run(self, reader: Reader, start: int, limit: int) -> int:
        """Read chunks ``start``, ``start + 1``, ... (indices into the reader's passes) while its
        node holds them, up to ``limit``; returns the first index not read."""
        cache = self.caches[reader.node]
        held = cache.datasets.get(reader.dataset)
        k, i = self.chunks, start
        while held is not None and i < limit and i % k in held:
            cache.touch((reader.dataset, i % k))
            i += 1
        reader.traffic.local += (i - start) * reader.chunk_bytes
        return i

    def fetch(self, reader: Reader, chunk: Chunk, t: float) -> None:
        """Ask for ``chunk`` on behalf of ``reader`` (see the class docstring)."""
        n, nbytes = reader.node, reader.chunk_bytes
        if self.caches[n].has(chunk):
            self.caches[n].touch(chunk)
            reader.traffic.local += nbytes
            self.push(t + nbytes / self.local_bandwidth, "local", reader.name)
            return
        members = self.members(chunk[0]) if self.shared else (n,)
        own = self.owner(chunk, members)
        if self.caches[own].has(chunk):
            self.caches[own].touch(chunk)
            self._transfer(t, [f"out:{own}", f"in:{n}"], nbytes, ("peer", reader.name, chunk, own))
            return
        holder = next((m for m in members if m != own and self.caches[m].has(chunk)), None)
        if holder is not None:
            self._transfer(t, [f"out:{holder}", f"in:{n}"], nbytes, ("handoff", reader.name, chunk, own))
            return
        key = self._key(chunk, own)
        if key in self.inflight:
            self.inflight[key].append(reader.name)
            return
        self.inflight[key] = []
        path = ["source"] + ([f"out:{own}", f"in:{n}"] if own != n else [])
        self._transfer(t, path, nbytes, ("source", reader.name, chunk, own))

    def _key(self, chunk: Chunk, own: str) -> Chunk:
        """What ``inflight`` is keyed by: the chunk, or per node when caches are not shared."""
        return chunk if self.shared else (f"{chunk[0]}@{own}", chunk[1])

    def _transfer(self, t: float, resources: list[str], nbytes: float, payload: Any) -> None:
        self.flows.start(t, resources, nbytes, payload)
        self._rearm()

    def _rearm(self) -> None:
        self._flow_gen += 1
        t = self.flows.next_finish()
        if t is not None:
            self.push(t, "flows", self._flow_gen)

    def on_flows(self, gen: int, t: float) -> None:
        if gen != self._flow_gen:
            return
        for flow in self.flows.finish_due(t):
            self._done(flow, t)
        self._rearm()

    def _done(self, flow: Flow, t: float) -> None:
        payload: tuple[str, str, Chunk, str] = flow.payload  # type: ignore[assignment]
        kind, name, chunk, own = payload
        if kind == "warm":
            self._warmed(name, chunk, own, flow.size, t)
            return
        reader = self.readers[name]
        nbytes = reader.chunk_bytes
        if kind == "peer":
            reader.traffic.peer += nbytes
        elif kind == "handoff":
            self.caches[own].insert(chunk, int(nbytes))
            reader.traffic.peer += nbytes * (1 if own == reader.node else 2)
        else:
            self.caches[own].insert(chunk, int(nbytes))
            reader.traffic.source += nbytes
            if own != reader.node:
                reader.traffic.peer += nbytes
            self._release(chunk, own, t)
        if self.peer_copy and own != reader.node:
            self.caches[reader.node].insert(chunk, int(nbytes))
        self.arrived(name, t)

    def _release(self, chunk: Chunk, own: str, t: float) -> None:
        for waiter in self.inflight.pop(self._key(chunk, own), []):
            self.fetch(self.readers[waiter], chunk, t)

    # ------------------------------------------------------------------ warm-ups

    def warm(self, ds: str, gpus: int, free: dict[str, int], t: float) -> None:
        """Warm ``ds`` for a job of ``gpus`` GPUs: through one of its members, else through the
        node with the most free GPUs (where that job is likely to start)."""
        if ds in self.warms:
            return
        pool = list(self.members(ds)) or self.nodes
        node = max(pool, key=lambda n: (free[n] >= gpus, free[n], -self.caches[n].used, n))
        self.warms[ds] = _Warm(ds, node)
        self._members.pop(ds, None)
        self._pump(self.warms[ds], t)

    def _pump(self, w: _Warm, t: float) -> None:
        nbytes = self.sizes[w.dataset] / self.chunks
        while w.active < self.prefetch and w.next < self.chunks:
            chunk = (w.dataset, w.next)
            w.next += 1
            members = self.members(w.dataset) if self.shared else (w.node,)
            own = self.owner(chunk, members)
            if self._key(chunk, own) in self.inflight or any(self.caches[m].has(chunk) for m in members):
                continue
            self.inflight[self._key(chunk, own)] = []
            path = ["source"] + ([f"out:{own}", f"in:{w.node}"] if own != w.node else [])
            self._transfer(t, path, nbytes, ("warm", w.dataset, chunk, own))
            w.active += 1
        if w.active == 0 and w.next >= self.chunks:
            del self.warms[w.dataset]
            self._linger(w.dataset, w.node, t)

    def _warmed(self, ds: str, chunk: Chunk, own: str, nbytes: float, t: float) -> None:
        w = self.warms[ds]
        w.active -= 1
        self.caches[own].insert(chunk, int(nbytes))
        self.warm_traffic.source += nbytes
        if own != w.node:
            self.warm_traffic.peer += nbytes
        self._release(chunk, own, t)
        self._pump(w, t)
