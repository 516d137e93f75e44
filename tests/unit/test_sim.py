"""The simulator: tiny traces with hand-computed outcomes, determinism for a seed, and proof
that it runs the controller's own ordering and placement code (fluidfs.control.sched)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import fluidfs.control.sched.locations as sched_locations
import fluidfs.control.sched.ordering as sched_ordering
import fluidfs.control.sched.placement as sched_placement
from fluidfs.control.sched.ordering import BasePolicy
from tools.sim import engine
from tools.sim.cluster import NodeCache, owner
from tools.sim.engine import ClusterConfig, Policy, simulate
from tools.sim.report import metrics, percentile
from tools.sim.trace import Dataset, Job, Trace, TraceConfig, from_json, generate, no_sharing, to_json

ONE_NODE = ClusterConfig(
    nodes=1, gpus_per_node=1, cache_bytes=10**10, source_bandwidth=1e9, local_bandwidth=1e9, chunks=2
)
DS = (Dataset("d", 2 * 10**9),)


def test_one_job_then_a_second_from_the_cache() -> None:
    # chunk = 1 GB: 1 s from the source, 1 s from the local cache; compute 2 s per chunk
    trace = Trace(DS, (Job("a", 0.0, 1, "d", 4.0), Job("b", 0.0, 1, "d", 4.0)))
    r = {j.name: j for j in simulate(trace, ONE_NODE, Policy()).jobs}
    # a: fetch 0-1, 1-2 (prefetch); compute 1-3, 3-5
    assert r["a"].start == 0.0 and r["a"].end == pytest.approx(5.0)
    assert r["a"].bytes_source == 2e9 and r["a"].bytes_local == 0
    # b waits for the GPU, then reads both chunks locally: 5-6, 6-7; computes 6-8, 8-10
    assert r["b"].start == pytest.approx(5.0) and r["b"].end == pytest.approx(10.0)
    assert r["b"].bytes_source == 0 and r["b"].bytes_local == 2e9
    assert r["a"].passed_over == r["b"].passed_over == 0


def test_concurrent_readers_fetch_each_chunk_from_the_source_once() -> None:
    cluster = ClusterConfig(**{**ONE_NODE.__dict__, "gpus_per_node": 2})
    trace = Trace(DS, (Job("a", 0.0, 1, "d", 4.0), Job("b", 0.0, 1, "d", 4.0)))
    r = {j.name: j for j in simulate(trace, cluster, Policy()).jobs}
    assert r["a"].end == pytest.approx(5.0)
    # b waits for a's chunk 0 (in flight, 0-1), reads it locally 1-2, waits for chunk 1 (1-2),
    # reads it 2-3; computes 2-4, 4-6
    assert r["b"].end == pytest.approx(6.0)
    assert r["a"].bytes_source + r["b"].bytes_source == 2e9


def test_per_node_caches_serve_only_their_own_readers() -> None:
    # two 1-GPU nodes, two jobs at once on one dataset: one per node
    two = ClusterConfig(**{**ONE_NODE.__dict__, "nodes": 2})
    trace = Trace(DS, (Job("a", 0.0, 1, "d", 4.0), Job("b", 0.0, 1, "d", 4.0)))
    shared = simulate(trace, two, Policy()).jobs
    assert {j.node for j in shared} == {"n00", "n01"}
    assert sum(j.bytes_source for j in shared) == 2e9  # one cluster cache: each chunk once
    assert sum(j.bytes_peer for j in shared) > 0
    alone = simulate(trace, ClusterConfig(**{**two.__dict__, "shared": False}), Policy()).jobs
    assert sum(j.bytes_source for j in alone) == 4e9  # each node fetches its own copy
    assert sum(j.bytes_peer for j in alone) == 0
    assert all(j.bytes_source == 2e9 for j in alone)


def test_peer_copies_make_a_second_job_on_the_same_node_read_locally() -> None:
    # two 1-GPU nodes, 16 chunks (each node owns some); a and b run at once (one per node), then c
    # on a's or b's node reads d again
    two = ClusterConfig(**{**ONE_NODE.__dict__, "nodes": 2, "chunks": 16})
    trace = Trace(DS, (Job("a", 0.0, 1, "d", 4.0), Job("b", 0.0, 1, "d", 4.0), Job("c", 1.0, 1, "d", 4.0)))
    plain = {j.name: j for j in simulate(trace, two, Policy()).jobs}
    copies = {j.name: j for j in simulate(trace, ClusterConfig(**{**two.__dict__, "peer_copy": True}), Policy()).jobs}
    assert plain["c"].node == copies["c"].node
    # without copies c reads the chunks its node does not own from the other node; with them, all locally
    assert plain["c"].bytes_peer > 0 and plain["c"].bytes_local < 2e9
    assert copies["c"].bytes_peer == 0 and copies["c"].bytes_local == 2e9
    assert sum(j.bytes_source for j in copies.values()) == 2e9


def test_the_engine_tells_the_ordering_what_each_node_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[sched_ordering.DatasetState] = []
    real = sched_ordering.plan

    def spy(pending: Any, state: sched_ordering.DatasetState, capacity: Any, config: Any) -> Any:
        seen.append(state)
        return real(pending, state, capacity, config)

    monkeypatch.setattr(sched_ordering, "plan", spy)
    trace = Trace(DS, (Job("a", 0.0, 1, "d", 4.0), Job("b", 0.0, 1, "d", 4.0)))
    simulate(trace, ONE_NODE, Policy(cache_aware=True, local=True))
    key = engine.dataset_key("d")
    assert seen[0].on_nodes == {} and seen[-1].on_nodes == {key: {"n00": 2e9}}


def test_source_bandwidth_is_shared() -> None:
    ds = (Dataset("x", 2 * 10**9), Dataset("y", 2 * 10**9))
    cluster = ClusterConfig(**{**ONE_NODE.__dict__, "gpus_per_node": 2})
    trace = Trace(ds, (Job("a", 0.0, 1, "x", 0.0), Job("b", 0.0, 1, "y", 0.0)))
    r = {j.name: j for j in simulate(trace, cluster, Policy()).jobs}
    # two flows share 1 GB/s: each 1 GB chunk takes 2 s, two chunks each: done at 4 s
    assert r["a"].end == pytest.approx(4.0) and r["b"].end == pytest.approx(4.0)


def test_cache_aware_order_on_a_hand_made_queue() -> None:
    ds = (Dataset("hot", 2 * 10**9), Dataset("cold", 2 * 10**9))
    jobs = (
        Job("r", 0.0, 1, "hot", 10.0),
        Job("w", 0.0, 1, "hot", 10.0),
        Job("c", 1.0, 1, "cold", 4.0),
        Job("h", 2.0, 1, "hot", 4.0),
    )
    cluster = ClusterConfig(**{**ONE_NODE.__dict__, "gpus_per_node": 2})
    fifo = {j.name: j for j in simulate(Trace(ds, jobs), cluster, Policy(BasePolicy.FIFO, False)).jobs}
    aware = {j.name: j for j in simulate(Trace(ds, jobs), cluster, Policy(BasePolicy.FIFO, True)).jobs}
    assert fifo["c"].start < fifo["h"].start
    assert aware["h"].start < aware["c"].start and aware["c"].passed_over == 1


def test_deterministic_for_a_seed() -> None:
    cfg = TraceConfig(seed=3, jobs=40, datasets=6, load=1.0)
    cluster = ClusterConfig(nodes=4, cache_bytes=100 * 2**30, chunks=8)
    pol = Policy(BasePolicy.SJF, True, "affinity")
    one = metrics(simulate(generate(cfg), cluster, pol, seed=5))
    two = metrics(simulate(generate(cfg), cluster, pol, seed=5))
    assert one == two
    assert to_json(generate(cfg)) == to_json(generate(cfg))
    assert to_json(generate(cfg)) != to_json(generate(TraceConfig(seed=4, jobs=40, datasets=6, load=1.0)))
    lone = no_sharing(cfg)
    assert len({j.dataset for j in lone.jobs}) == len(lone.jobs) and lone.repeat_share() == 0.0
    back = from_json(json.loads(json.dumps(to_json(lone))))
    assert (back.datasets, back.jobs) == (lone.datasets, lone.jobs)


def test_the_simulator_runs_the_controllers_code(monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine.ordering is sched_ordering
    assert engine.placement is sched_placement
    assert engine.locations is sched_locations
    calls: dict[str, int] = {}

    def spy(module: Any, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*a: Any, **kw: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return real(*a, **kw)

        monkeypatch.setattr(module, name, wrapper)

    spy(sched_ordering, "plan")
    spy(sched_placement, "cache_affinity")
    spy(sched_placement, "preferred_score")
    spy(sched_locations, "desired_labels")
    cfg = TraceConfig(seed=1, jobs=12, datasets=3, load=1.0)
    simulate(generate(cfg), ClusterConfig(nodes=2, chunks=4), Policy(BasePolicy.FIFO, True, "affinity"))
    assert set(calls) == {"plan", "cache_affinity", "preferred_score", "desired_labels"}


def test_rendezvous_moves_only_the_leavers_share_and_caches_never_self_evict() -> None:
    members = [f"n{i}" for i in range(5)]
    weights = {n: 1.0 for n in members}
    before = {c: owner(("d", c), members, weights) for c in range(500)}
    after = {c: owner(("d", c), members[:-1], weights) for c in range(500)}
    moved = [c for c in before if before[c] != after[c]]
    assert all(before[c] == "n4" for c in moved) and 60 < len(moved) < 140
    cache = NodeCache(3)
    assert cache.insert(("a", 0), 1) and cache.insert(("a", 1), 1) and cache.insert(("b", 0), 1)
    assert cache.insert(("b", 1), 1) and not cache.has(("a", 0))  # LRU chunk of another dataset goes
    assert cache.insert(("b", 2), 1) and not cache.has(("a", 1))
    assert not cache.insert(("b", 3), 1)  # never evicts b for b
    assert cache.by_dataset == {"b": 3}


def test_percentile() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([float(x) for x in range(1, 101)], 95) == 95.0


def test_a_warm_intent_loads_the_next_jobs_dataset_while_it_waits() -> None:
    two = (Dataset("d", 2 * 10**9), Dataset("e", 2 * 10**9))
    trace = Trace(two, (Job("a", 0.0, 1, "d", 4.0), Job("b", 0.0, 1, "e", 4.0)))
    cold = {j.name: j for j in simulate(trace, ONE_NODE, Policy()).jobs}
    assert cold["b"].bytes_source == 2e9 and cold["b"].end == pytest.approx(10.0)
    run = simulate(trace, ONE_NODE, Policy(warm_ahead=1))
    warm = {j.name: j for j in run.jobs}
    # e was loaded while a ran: b reads it locally (1 s a chunk, computing 2 s on each); here
    # the warm-up shared the source with a's reads, so a ended later (the price of warming)
    assert run.warm.source == 2e9 and warm["b"].bytes_source == 0 and warm["b"].bytes_local == 2e9
    assert warm["b"].end == pytest.approx(warm["b"].start + 5.0) and warm["a"].end > cold["a"].end
    assert metrics(run).source_bytes == 4e9  # the warm-up's bytes count


def test_read_rate_and_bursts_in_generated_traces() -> None:
    cfg = TraceConfig(seed=3, jobs=60, datasets=8, gpu_rate=2e8, burst=4.0)
    trace = generate(cfg)
    sizes = {d.name: d.size for d in trace.datasets}
    for j in trace.jobs:
        assert j.epochs == pytest.approx(j.compute_seconds * j.gpus * 2e8 / sizes[j.dataset], rel=1e-3, abs=1e-4)
    groups: dict[float, set[tuple[str, int]]] = {}
    for j in trace.jobs:
        groups.setdefault(j.submit, set()).add((j.dataset, j.gpus))
    assert len(groups) < 40  # about 60 / 4 submissions
    assert all(len(g) == 1 for g in groups.values())  # a group is one dataset, one size of job
    lone = no_sharing(cfg)
    assert len({j.dataset for j in lone.jobs}) == 60


def test_source_aware_policies_in_the_simulator() -> None:
    cfg = TraceConfig(seed=5, jobs=40, datasets=6, load=1.5, gpu_rate=3e8, median_seconds=600, total_gpus=32)
    trace = generate(cfg)
    cluster = ClusterConfig(nodes=4, gpus_per_node=8, cache_bytes=200 * 2**30, source_bandwidth=1e9, chunks=8)
    source = sched_ordering.SourceModel(1e9, 3e8)
    for base in BasePolicy:
        p = Policy(base, True, "affinity", window=8, max_pass_over=3, source=source, stagger=True, label="+src")
        m = metrics(simulate(trace, cluster, p))
        assert m.jobs == 40 and m.max_passed_over <= 3 and p.name == f"{base.value}+cache+src/affinity"
