"""What an autoscaling run is made of: its sizes (:class:`Scenario`), its jobs and each job's Dataset resource.

:mod:`tools.bench.autoscale_rig` runs the jobs; :mod:`tools.bench.autoscale` is the command line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from tools.bench.store import Store

NAMESPACE = "bench"
SECRET = "bench-s3"


@dataclass(frozen=True)
class Scenario:
    """Sizes of one run (defaults: a full run in ~15 minutes on 2 shared cores)."""

    samples: int = 168  # files of the dataset
    sample_size: int = 384 << 10  # mean size (+-25 %)
    classes: int = 8  # folders
    bandwidth_mbit: float = 24.0  # the source link (3 MB/s)
    latency_ms: float = 20.0
    shaper: str = "auto"  # tc in a netns when root, else the proxy's token bucket
    block_size: int = 1 << 20
    worker_quota: int = 20 << 20  # SSD tier of each worker
    worker_memory: int = 4 << 20
    mount_memory: int = 8 << 20  # the trainer's mount: memory tier only
    min_workers: int = 1
    max_workers: int = 6
    drain_timeout: float = 20.0
    # the Dataset's autoscaling parameters (docs/autoscaling.md), scaled down from the defaults
    interval: float = 2.0
    window: float = 12.0
    cooldown: float = 8.0
    min_gain: float = 0.1
    idle_after: float = 20.0
    idle_rate: int = 256 << 10
    # the trainer
    batch_size: int = 8
    compute_s: float = 0.4  # I/O-bound job: ~7.5 MiB/s wanted
    cb_compute_s: float = 2.4  # compute-bound job: ~1.25 MiB/s, below the source link
    readers: int = 4
    prefetch: int = 8
    epochs: int = 5  # autoscaled jobs
    sweep_epochs: int = 2  # fixed-count jobs: a cold epoch and a steady one
    cb_epochs: int = 2
    sweep: tuple[int, ...] = (1, 2, 3, 4, 5)
    job_timeout: float = 420.0
    nice: int = 0  # of the workers, mounts and trainers

    @property
    def dataset_bytes(self) -> int:
        return self.samples * self.sample_size


def tiny() -> Scenario:
    """A smoke-test run: a few files, one fixed count, short everything."""
    return Scenario(
        samples=24, sample_size=128 << 10, classes=2, bandwidth_mbit=64.0, latency_ms=5.0, shaper="proxy",
        worker_quota=2 << 20, worker_memory=2 << 20, mount_memory=2 << 20, max_workers=2, drain_timeout=5.0,
        interval=1.0, window=3.0, cooldown=2.0, idle_after=3.0, compute_s=0.05, cb_compute_s=0.3, epochs=2,
        sweep_epochs=1, cb_epochs=1, sweep=(1,), job_timeout=120.0,
    )  # fmt: skip


@dataclass(frozen=True)
class JobSpec:
    """One job: a Dataset resource under ``policy`` and a trainer."""

    name: str  # also the Dataset's name (a fresh, cold cache per job)
    policy: str  # training-speed | capacity | manual
    compute_s: float
    epochs: int
    replicas: int | None = None  # manual: fixed worker count
    scale_in: bool = False  # wait for the scale-in to minWorkers after the trainer ends


def dataset_resource(sc: Scenario, job: JobSpec, store: Store) -> dict[str, Any]:
    """The Dataset custom resource of a job (as ``kubectl apply`` would get it)."""
    autoscaling: dict[str, Any] = {
        "policy": job.policy, "interval": f"{sc.interval:g}s", "window": f"{sc.window:g}s",
        "cooldown": f"{sc.cooldown:g}s", "minGain": sc.min_gain, "idleAfter": f"{sc.idle_after:g}s",
        "idleRate": str(sc.idle_rate),
    }  # fmt: skip
    cache: dict[str, Any] = {
        "blockSize": str(sc.block_size), "eviction": "none", "prefetchSiblings": 0,
        "minWorkers": sc.min_workers, "maxWorkers": sc.max_workers,
        "worker": {"quota": str(sc.worker_quota), "memorySize": str(sc.worker_memory),
                   "drainTimeout": f"{sc.drain_timeout:g}s"},
        "autoscaling": autoscaling,
    }  # fmt: skip
    if job.replicas is not None:
        cache["replicas"] = job.replicas
    ref = {"accessKeyId": {"secretKeyRef": {"name": SECRET, "key": "accessKeyId"}},
           "secretAccessKey": {"secretKeyRef": {"name": SECRET, "key": "secretAccessKey"}}}  # fmt: skip
    mount = {
        "mountPoint": f"s3://{store.bucket}/small", "name": "data",
        "options": {"endpoint": store.endpoint, "region": "us-east-1", "addressing_style": "path"},
        "credentials": ref,
    }  # fmt: skip
    return {
        "apiVersion": "fluidfs.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": job.name, "namespace": NAMESPACE},
        "spec": {"mounts": [mount], "metadata": {"ttl": "indefinite"}, "cache": cache},
    }


def worker_command(nice: int) -> list[str]:
    cmd = [
        sys.executable, "-m", "fluidfs", "worker", "{dataset}", "--cache-dir", "{cache_dir}", "--listen", "{listen}",
        "--peers", "{peers}", "--metrics-addr", "{metrics_addr}", "--log-level", "info",
    ]  # fmt: skip
    return ["nice", "-n", str(nice), *cmd] if nice else cmd


def jobs_of(sc: Scenario) -> list[JobSpec]:
    """The jobs of a run, in order."""
    out = [JobSpec(f"fixed-{n}", "manual", sc.compute_s, sc.sweep_epochs, replicas=n) for n in sc.sweep]
    out.append(JobSpec("training-speed", "training-speed", sc.compute_s, sc.epochs, scale_in=True))
    out.append(JobSpec("capacity", "capacity", sc.compute_s, sc.epochs))
    out.append(JobSpec("compute-bound", "training-speed", sc.cb_compute_s, sc.cb_epochs, scale_in=True))
    return out
