"""Job ordering: base policies, cache-aware ranking within the window, capacity (best fit, slots),
the pass-over bound (hand cases and a property test over random event sequences), warm intents."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidfs.control.sched.ordering import (
    BasePolicy,
    Capacity,
    DatasetState,
    JobInfo,
    OrderingConfig,
    SourceModel,
    WarmIntent,
    fits_near_cache,
    plan,
    warmth,
)

FIFO_AWARE = OrderingConfig(BasePolicy.FIFO, cache_aware=True)
FIFO = OrderingConfig(BasePolicy.FIFO, cache_aware=False)
SOURCE = SourceModel(bandwidth=1e9, gpu_rate=1e8)  # 1 GB/s in all, 100 MB/s per GPU
SIZES = {"x": 10**11, "w": 10**11, "y": 10**11}


def busy_source(cached: dict[str, float] | None = None) -> DatasetState:
    """A running 10-GPU job reads the cold dataset y at 1 GB/s: the source is saturated, one
    more cold reader gets half of it (500 MB/s)."""
    return DatasetState(cached or {"w": 1.0}, frozenset({"y"}), sizes=SIZES, readers={"y": 10})


def job(name: str, t: float, gpus: int = 1, ds: str = "", expected: float | None = None, passed: int = 0) -> JobInfo:
    return JobInfo(name, t, gpus, 1, expected, (ds,) if ds else (), passed)


def test_fifo_and_sjf_base_orders() -> None:
    jobs = [job("a", 0, expected=300), job("b", 1, expected=60), job("c", 2), job("d", 3, expected=60)]
    cap = Capacity(slots=3)
    assert plan(jobs, DatasetState(), cap, FIFO).admit == ("a", "b", "c")
    sjf = OrderingConfig(BasePolicy.SJF, cache_aware=False, default_expected_seconds=100)
    assert plan(jobs, DatasetState(), cap, sjf).admit == ("b", "d", "c")


def test_cache_aware_runs_warm_jobs_first_and_groups_a_dataset() -> None:
    jobs = [job("cold", 0, ds="x"), job("hot", 1, ds="h"), job("warm", 2, ds="w"), job("hot2", 3, ds="h")]
    state = DatasetState({"w": 0.9, "x": 0.1}, reading=frozenset({"h"}))
    got = plan(jobs, state, Capacity(slots=3), FIFO_AWARE)
    assert got.admit == ("hot", "warm", "hot2")
    assert got.passed_over == {"cold": 3}
    # a job admitted in the round makes its dataset hot for the rest of the round
    jobs = [job("c1", 0, ds="x"), job("c2", 1, ds="y"), job("c3", 2, ds="x")]
    assert plan(jobs, DatasetState(), Capacity(slots=2), FIFO_AWARE).admit == ("c1", "c3")
    assert plan(jobs, DatasetState(), Capacity(slots=2), FIFO).admit == ("c1", "c2")


def test_window_limits_the_look_ahead() -> None:
    jobs = [job(f"c{i}", i, ds="x") for i in range(4)] + [job("hot", 9, ds="h")]
    state = DatasetState(reading=frozenset({"h"}))
    assert plan(jobs, state, Capacity(slots=1), OrderingConfig(window=4)).admit == ("c0",)
    assert plan(jobs, state, Capacity(slots=1), OrderingConfig(window=5)).admit == ("hot",)


def test_best_fit_and_backfill() -> None:
    cap = Capacity({"n1": 8, "n2": 2}, total_gpus={"n1": 8, "n2": 8})
    jobs = [job("big", 0, gpus=8), job("small", 1, gpus=2), job("mid", 2, gpus=4)]
    got = plan(jobs, DatasetState(), cap, FIFO)
    assert got.admit == ("big", "small")  # small takes n2 (best fit), mid finds no room
    got = plan([job("huge", 0, gpus=16), job("one", 1)], DatasetState(), cap, FIFO)
    assert got.unschedulable == ("huge",) and got.admit == ("one",) and got.passed_over == {}
    two_pods = JobInfo("pair", 0, 4, 2)
    assert Capacity({"n1": 4, "n2": 4}).place(two_pods) == Capacity({"n1": 0, "n2": 0})
    assert Capacity({"n1": 6}).place(two_pods) is None


def test_a_job_at_the_bound_holds_back_later_jobs() -> None:
    cfg = OrderingConfig(max_pass_over=2)
    cap = Capacity({"n1": 4}, total_gpus={"n1": 8})
    jobs = [job("early", -1, gpus=1), job("big", 0, gpus=8, passed=2), job("hot", 1, gpus=1, ds="h")]
    got = plan(jobs, DatasetState(reading=frozenset({"h"})), cap, cfg)
    assert got.admit == ("early",) and got.barrier == "big"
    jobs = [job("big", 0, gpus=8, passed=1), job("s1", 1), job("s2", 2)]
    got = plan(jobs, DatasetState(), cap, cfg)
    assert got.admit == ("s1",) and got.passed_over == {"big": 2} and got.barrier == "big"


def test_warm_intents() -> None:
    cfg = OrderingConfig(warm_ahead=1)
    jobs = [job("now", 0, gpus=4, ds="a"), job("next", 1, gpus=8, ds="b"), job("later", 2, gpus=8, ds="c")]
    got = plan(jobs, DatasetState(), Capacity({"n1": 4}), cfg)
    assert got.admit == ("now",) and got.warm == (WarmIntent("b", "next"),)
    assert plan(jobs, DatasetState(warming=frozenset({"z"})), Capacity({"n1": 4}), cfg).warm == ()
    assert plan(jobs, DatasetState({"b": 0.8}), Capacity({"n1": 4}), cfg).warm == (WarmIntent("c", "later"),)


def test_warmth_and_config_checks() -> None:
    st_ = DatasetState({"a": 0.5, "b": 2.0}, reading=frozenset({"c"}))
    assert warmth(JobInfo("j", 0, datasets=("a", "b", "c", "d")), st_) == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert warmth(JobInfo("j", 0), st_) == 0.0
    for bad in ({"window": 0}, {"max_pass_over": -1}, {"warm_threshold": 1.5}, {"warm_ahead": -1}):
        with pytest.raises(ValueError):
            OrderingConfig(**bad)


# ---------------------------------------------------------------------------- starvation bound


def test_source_aware_sjf_sorts_on_the_effective_duration() -> None:
    cold = job("cold", 0, gpus=8, ds="x", expected=100)  # 80 GB at 500 MB/s: 160 s, not 100
    warm = job("warm", 1, gpus=8, ds="w", expected=150)
    sjf = OrderingConfig(BasePolicy.SJF, cache_aware=False)
    assert plan([cold, warm], busy_source(), Capacity(slots=1), sjf).admit == ("cold",)
    aware = OrderingConfig(BasePolicy.SJF, source=SOURCE)
    assert plan([cold, warm], busy_source(), Capacity(slots=1), aware).admit == ("warm",)
    slower = job("warm", 1, gpus=8, ds="w", expected=170)
    assert plan([cold, slower], busy_source(), Capacity(slots=1), aware).admit == ("cold",)
    # an idle source serves the cold job at its own pace: plain SJF order
    idle = DatasetState({"w": 1.0}, sizes=SIZES)
    assert plan([cold, warm], idle, Capacity(slots=1), aware).admit == ("cold",)
    # without sizes nothing is known to be cold: base order
    assert plan([cold, warm], DatasetState(reading=frozenset({"y"})), Capacity(slots=1), aware).admit == ("cold",)


def test_source_aware_fifo_pushes_a_cold_job_back_by_its_cost() -> None:
    cold = job("cold", 0, gpus=8, ds="x", expected=100)  # costs 60 s more than its own pace
    cfg = OrderingConfig(BasePolicy.FIFO, source=SOURCE)
    early, late = job("warm", 30, gpus=8, ds="w"), job("warm", 90, gpus=8, ds="w")
    assert plan([cold, early], busy_source(), Capacity(slots=1), cfg).admit == ("warm",)
    assert plan([cold, late], busy_source(), Capacity(slots=1), cfg).admit == ("cold",)


def test_source_aware_counts_what_a_cold_job_would_evict_for_others() -> None:
    sizes = {"x": 10**11, "w": 10**11, "v": 10**11}
    cold = job("cold", 0, gpus=1, ds="x", expected=1000)  # 100 GB: no slower than its own pace
    other = job("other", 1, gpus=1, ds="v", expected=1080)  # v is idle in the cache
    later = job("later", 2, gpus=1, ds="w", expected=5000)  # wants w, also idle in the cache
    cfg = OrderingConfig(BasePolicy.SJF, source=SOURCE)
    # room for x: nothing evicted, shortest first
    roomy = DatasetState({"w": 1.0, "v": 1.0}, sizes=sizes, cache_free=2e11)
    assert plan([cold, other, later], roomy, Capacity(slots=1), cfg).admit == ("cold",)
    # a full cache: x pushes out 100 GB of w and v, both wanted: 100 s of refetch (1100 > 1080)
    full = DatasetState({"w": 1.0, "v": 1.0}, sizes=sizes, cache_free=0.0)
    assert plan([cold, other, later], full, Capacity(slots=1), cfg).admit == ("other",)
    # only v is wanted (later is outside a window of 2): half of it counts (1050 < 1080)
    small = OrderingConfig(BasePolicy.SJF, source=SOURCE, window=2)
    assert plan([cold, other, later], full, Capacity(slots=1), small).admit == ("cold",)


def test_stagger_holds_cold_jobs_while_the_source_is_saturated() -> None:
    cold, warm = job("cold", 0, ds="x", expected=10), job("warm", 1, ds="w", expected=10)
    cfg = OrderingConfig(BasePolicy.FIFO, source=SOURCE, stagger=True)
    assert plan([cold, warm], busy_source(), Capacity(slots=2), cfg).admit == ("warm",)
    assert plan([cold], busy_source(), Capacity(slots=2), cfg).admit == ()
    assert plan([cold], busy_source(), Capacity(slots=2), OrderingConfig(source=SOURCE)).admit == ("cold",)
    # a job at the bound is never held back
    held = job("cold", 0, ds="x", expected=10, passed=8)
    assert plan([held], busy_source(), Capacity(slots=2), cfg).admit == ("cold",)
    # jobs of a dataset being read are not cold
    assert plan([job("hot", 0, ds="y")], busy_source(), Capacity(slots=2), cfg).admit == ("hot",)
    with pytest.raises(ValueError, match="positive"):
        SourceModel(0, 1e8)


def test_prefer_local_gives_freed_gpus_to_a_job_whose_cache_is_there() -> None:
    # n1 has 4 free GPUs and holds most of x; n2 is full and holds y; both jobs are cold
    state = DatasetState(on_nodes={"x": {"n1": 5e10, "n2": 1e10}, "y": {"n2": 8e10}})
    cap = Capacity({"n1": 4, "n2": 0})
    jobs = [job("y-job", 0, gpus=4, ds="y"), job("x-job", 1, gpus=4, ds="x")]
    assert fits_near_cache(jobs[1], state, cap) and not fits_near_cache(jobs[0], state, cap)
    local = OrderingConfig(BasePolicy.FIFO, local=True)
    assert plan(jobs, state, cap, FIFO_AWARE).admit == ("y-job",)
    got = plan(jobs, state, cap, local)
    assert got.admit == ("x-job",) and got.passed_over == {"y-job": 1}
    # a node holding less than half of the most any node holds does not count
    assert not fits_near_cache(jobs[1], state, Capacity({"n1": 0, "n2": 4}))
    # warmth still comes first; nearness orders within the warm and the cold jobs
    warm = DatasetState(on_nodes=state.on_nodes, reading=frozenset({"y"}))
    assert plan(jobs, warm, Capacity({"n1": 4, "n3": 4}, slots=1), local).admit == ("y-job",)
    # source-aware: nearness before the effective key
    src = OrderingConfig(BasePolicy.FIFO, local=True, source=SOURCE)
    sized = DatasetState(sizes=SIZES, on_nodes=state.on_nodes)
    assert plan(jobs, sized, cap, src).admit == ("x-job",)
    # without per-node bytes or GPU counts nothing is near: the order is unchanged
    assert plan(jobs, DatasetState(), cap, local).admit == ("y-job",)
    assert not fits_near_cache(jobs[1], state, Capacity(slots=1))


events = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from([1, 2, 4, 8]), st.integers(0, 3), st.integers(1, 1000)),
        st.tuples(st.just("finish"), st.integers(0, 50), st.integers(0, 0), st.integers(0, 0)),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    events,
    st.integers(0, 4),
    st.sampled_from(list(BasePolicy)),
    st.sampled_from(["oblivious", "aware", "source", "stagger", "local", "source-local"]),
    st.integers(1, 6),
)
def test_no_job_is_ever_passed_over_more_than_the_bound(
    evs: list[tuple[str, int, int, int]], bound: int, base: BasePolicy, mode: str, window: int
) -> None:
    source = SourceModel(1e9, 3e8) if mode in ("source", "stagger", "source-local") else None
    cfg = OrderingConfig(
        base,
        mode != "oblivious",
        window=window,
        max_pass_over=bound,
        source=source,
        stagger=mode == "stagger",
        local=mode.endswith("local"),
    )
    sizes = {f"d{i}": 10**11 for i in range(4)}
    nodes = {"n1": 8, "n2": 8}
    pending: dict[str, JobInfo] = {}
    running: dict[str, JobInfo] = {}
    placed: dict[str, list[tuple[str, int]]] = {}
    free = dict(nodes)
    t = 0
    for kind, a, b, c in evs + [("finish", i, 0, 0) for i in range(200)]:
        t += 1
        if kind == "submit":
            name = f"j{t}"
            pending[name] = JobInfo(name, t, a, 1, float(c), (f"d{b}",), 0)
        elif running:
            victim = sorted(running)[a % len(running)]
            del running[victim]
            for n, g in placed.pop(victim):
                free[n] += g
        readers: dict[str, int] = {}
        for j in running.values():
            readers[j.datasets[0]] = readers.get(j.datasets[0], 0) + j.gpus_per_pod
        on_nodes = {"d0": {"n1": 1e11}, "d1": {"n2": 5e10, "n1": 1e10}}
        state = DatasetState(
            {"d0": 1.0, "d1": 0.5}, frozenset(readers), sizes=sizes, readers=readers, cache_free=0.0, on_nodes=on_nodes
        )
        got = plan(list(pending.values()), state, Capacity(dict(free), total_gpus=nodes), cfg)
        for name in got.admit:
            j = pending.pop(name)
            running[name] = j
            best = min((n for n in free if free[n] >= j.gpus_per_pod), key=lambda n: (free[n], n))
            free[best] -= j.gpus_per_pod
            placed[name] = [(best, j.gpus_per_pod)]
        for waiting, count in got.passed_over.items():
            assert count <= bound
            j = pending[waiting]
            pending[waiting] = JobInfo(
                j.name, j.submitted, j.gpus_per_pod, j.pods, j.expected_seconds, j.datasets, count
            )
        if not pending and not running and kind == "finish":
            break
    assert not pending, "every job eventually starts"
