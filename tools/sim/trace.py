"""Synthetic job traces for the simulator, seeded and reproducible, and their JSON form.

A trace is a list of datasets (name, bytes) and jobs (name, submit time, GPUs, dataset, compute
seconds, epochs). ``generate`` draws Poisson arrivals at a rate that gives the requested GPU
load, log-normal compute durations, GPUs per job from {1, 2, 4, 8}, and each job's dataset from
a Zipf popularity over the datasets (``zipf_s`` high: a few datasets get most jobs, as in public
GPU-cluster traces where many jobs are repeats over the same data). ``no_sharing`` gives every
job a dataset of its own (same sizes, durations and arrivals otherwise).

A job reads its dataset ``epochs`` times; when its data is local it runs for ``compute_seconds``
(the compute-bound duration, which is also its expected duration for SJF). With ``gpu_rate``
(bytes/s per GPU when the data is local) a job's passes follow from its compute instead:
``compute_seconds x gpus x gpu_rate / dataset size`` (often less than one pass for a short job
over a large dataset). With ``burst`` > 1, submissions come in groups (geometric sizes of mean
``burst``) of jobs over one dataset with the same GPUs, as hyperparameter sweeps do; the offered
load is unchanged.

Caveats: sizes and durations are independent draws (no correlation between a job's length and
its dataset's size), and every job is one pod (GPUs per job at most a node's).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GIB = 1024**3


@dataclass(frozen=True)
class Dataset:
    name: str
    size: int


@dataclass(frozen=True)
class Job:
    name: str
    submit: float
    gpus: int
    dataset: str
    compute_seconds: float
    epochs: float = 1.0


@dataclass(frozen=True)
class Trace:
    datasets: tuple[Dataset, ...]
    jobs: tuple[Job, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def dataset(self, name: str) -> Dataset:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(name)

    def repeat_share(self) -> float:
        """Share of jobs whose dataset an earlier job already read."""
        seen: set[str] = set()
        repeats = 0
        for j in sorted(self.jobs, key=lambda j: j.submit):
            repeats += j.dataset in seen
            seen.add(j.dataset)
        return repeats / len(self.jobs) if self.jobs else 0.0


@dataclass(frozen=True)
class TraceConfig:
    seed: int = 1
    jobs: int = 200
    datasets: int = 20
    zipf_s: float = 1.2
    load: float = 0.9
    total_gpus: int = 128
    median_seconds: float = 1800.0
    sigma: float = 1.0
    gpu_choices: tuple[int, ...] = (1, 2, 4, 8)
    gpu_weights: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    median_size: float = 100 * GIB
    size_sigma: float = 0.6
    min_size: float = 5 * GIB
    max_size: float = 1024 * GIB
    epochs: tuple[int, int] = (1, 4)
    gpu_rate: float | None = None
    burst: float = 1.0


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


def generate(cfg: TraceConfig, *, sharing: bool = True) -> Trace:
    """A seeded synthetic trace (see the module docstring)."""
    rng = random.Random(cfg.seed)
    n_ds = cfg.datasets if sharing else cfg.jobs
    sizes = [
        int(min(cfg.max_size, max(cfg.min_size, cfg.median_size * math.exp(rng.gauss(0.0, cfg.size_sigma)))))
        for _ in range(n_ds)
    ]
    datasets = tuple(Dataset(f"d{i:03d}", s) for i, s in enumerate(sizes))
    mean_gpus = sum(g * w for g, w in zip(cfg.gpu_choices, cfg.gpu_weights, strict=True)) / sum(cfg.gpu_weights)
    mean_seconds = cfg.median_seconds * math.exp(cfg.sigma**2 / 2)
    rate = cfg.load * cfg.total_gpus / (mean_gpus * mean_seconds)
    weights = _zipf_weights(n_ds, cfg.zipf_s)
    jobs: list[Job] = []
    t = 0.0
    group: tuple[int, Dataset] | None = None
    left = 0
    for i in range(cfg.jobs):
        if left == 0:
            # a new submission: a group of jobs over one dataset (a sweep), geometric size
            t += rng.expovariate(rate / cfg.burst)
            left = 1
            while cfg.burst > 1 and rng.random() > 1.0 / cfg.burst:
                left += 1
            gpus = rng.choices(cfg.gpu_choices, cfg.gpu_weights)[0]
            group = (gpus, datasets[rng.choices(range(n_ds), weights)[0]] if sharing else datasets[i])
        assert group is not None
        left -= 1
        gpus, d = group
        if not sharing:
            d = datasets[i]
        seconds = cfg.median_seconds * math.exp(rng.gauss(0.0, cfg.sigma))
        epochs: float = rng.randint(cfg.epochs[0], cfg.epochs[1])
        if cfg.gpu_rate is not None:
            epochs = round(seconds * gpus * cfg.gpu_rate / d.size, 4)
        jobs.append(Job(f"j{i:04d}", round(t, 3), gpus, d.name, round(seconds, 3), epochs))
    meta = {"generator": asdict(cfg), "sharing": sharing}
    return Trace(datasets, tuple(jobs), meta)


def no_sharing(cfg: TraceConfig) -> Trace:
    return generate(cfg, sharing=False)


def to_json(trace: Trace) -> dict[str, Any]:
    return {
        "datasets": [asdict(d) for d in trace.datasets],
        "jobs": [asdict(j) for j in trace.jobs],
        "meta": dict(trace.meta),
    }


def from_json(data: Mapping[str, Any]) -> Trace:
    datasets = tuple(Dataset(str(d["name"]), int(d["size"])) for d in data["datasets"])
    jobs = tuple(
        Job(
            str(j["name"]),
            float(j["submit"]),
            int(j["gpus"]),
            str(j["dataset"]),
            float(j["compute_seconds"]),
            float(j.get("epochs", 1)),
        )
        for j in data["jobs"]
    )
    names = {d.name for d in datasets}
    for j in jobs:
        if j.dataset not in names:
            raise ValueError(f"job {j.name}: unknown dataset {j.dataset!r}")
    return Trace(datasets, jobs, dict(data.get("meta") or {}))


def save(trace: Trace, path: Path) -> None:
    path.write_text(json.dumps(to_json(trace), indent=1) + "\n")


def load(path: Path) -> Trace:
    return from_json(json.loads(path.read_text()))


def subset(trace: Trace, names: Sequence[str]) -> Trace:
    keep = set(names)
    return Trace(trace.datasets, tuple(j for j in trace.jobs if j.name in keep), trace.meta)
