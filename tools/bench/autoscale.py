"""End-to-end autoscaling workload: emulated training jobs against the controller, its local actuator and real workers.

One run (``python -m tools.bench.autoscale``) starts, on this machine:

- the emulated remote store: SeaweedFS behind the latency proxy with a bandwidth cap
  (``tools.bench.store``), holding a dataset of small files (``tools.bench.datasets``, the
  ``small`` set);
- ``fluidfs-controller``'s loop (:class:`fluidfs.control.controller.Controller`) in a thread,
  against :class:`fluidfs.control.local.LocalCluster`: each Dataset resource's StatefulSet runs
  ``fluidfs worker`` processes (peers file, metrics endpoint, SIGTERM handoff);

and then, one after another, *jobs*.  A job applies a Dataset resource (its own name, so its
cache starts cold), mounts the controller's Dataset document with ``fluidfs mount`` as a
*client* of the workers' cluster (memory tier only; it reads through the workers), registers
the mount's metrics endpoint as a client pod (what the controller scrapes on Kubernetes: the
node plugin's), runs an emulated trainer (``tools.bench.trainer``) on the mount, and records
every second: desired and ready workers, the trainer's input rate, the controller's decision.
After the trainer ends, an autoscaled job waits for the scale-in to ``minWorkers`` and compares
the blocks cached before with what the remaining members hold after (``blocks_kept``).

Jobs of a run: the compute-bound reference (the trainer on the local mirror of the dataset: the
input rate when data costs nothing), a sweep of fixed worker counts (policy ``manual``), the
I/O-bound job under ``training-speed``, the same job under ``capacity`` (Fluid's rule), and a
compute-bound job under ``training-speed``.  :mod:`tools.bench.autoscale_report` evaluates the
targets and writes the table, the JSON and the plot.

The pieces are reusable: :class:`Rig` (store + dataset + controller + janitor) and
:meth:`Rig.run_job` with a :class:`JobSpec` run any policy and trainer shape.

Caveats: the mount is a client, not a member, so the workers are the whole cluster cache (a
node mount's SSD would also hold blocks under Kubernetes).  Everything shares this machine's
CPUs (2 here, shared): rates are noisy; compare rows of one run.  Scale-in is measured with the
mount still mounted and idle (the job ended, the node stays).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fluidfs.cache.ssdlayout import scan_directory
from fluidfs.cluster.hashing import Ring
from fluidfs.control.controller import Controller, ControllerConfig
from fluidfs.control.local import CLIENT_NAMESPACE, LocalCluster
from fluidfs.control.objects import base_name
from tests.support.net import free_port
from tools.bench import autoscale_report as report
from tools.bench import datasets
from tools.bench.store import Store, open_store
from tools.bench.systems import Janitor, force_unmount, raise_readahead, wait_mounted
from tools.bench.trainer import Report, TrainerProcess, TrainerSpec, read_report, summarize

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "bench"
SECRET = "bench-s3"
PEER_SECRET = "fluidfs-e2e-bench-peer-secret"  # throw-away, loopback-only cluster


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


@dataclass
class JobResult:
    spec: JobSpec
    reports: list[Report] = field(default_factory=list)  # the trainer's
    timeline: list[dict[str, Any]] = field(default_factory=list)  # per second: t, desired, ready, processes
    events: list[dict[str, Any]] = field(default_factory=list)  # scaling Events (t, reason, note)
    start: float = 0.0  # trainer started (wall clock)
    end: float = 0.0  # trainer ended
    scale_in_done: float | None = None  # wall clock when back at minWorkers with every leaver gone
    blocks: dict[str, Any] = field(default_factory=dict)  # the scale-in check
    error: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # seconds since the job began: when each step ended

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": asdict(self.spec), "start": self.start, "end": self.end, "scale_in_done": self.scale_in_done,
            "blocks": self.blocks, "error": self.error, "phases": self.phases, "events": self.events,
            "timeline": self.timeline, "reports": self.reports,
        }  # fmt: skip


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


class Rig:
    """The store, the dataset, the local cluster and the controller thread of one run; ``close()`` stops all."""

    def __init__(self, sc: Scenario, workdir: Path, progress: Callable[[str], None] = print) -> None:
        self.sc = sc
        self.workdir = workdir
        self.progress = progress
        self.janitor = Janitor(workdir)
        self.store: Store | None = None
        self.cluster: LocalCluster | None = None
        self.controller: Controller | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.files: list[str] = []
        self.local_root = workdir / "local"

    def open(self) -> Rig:
        sc = self.sc
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(self.workdir, sc.latency_ms, sc.bandwidth_mbit, self.janitor.add_pid, sc.shaper)
        spec = datasets.DataSpec(small_files=sc.samples, small_size=sc.sample_size, classes=sc.classes)
        plans = datasets.generate(spec, ["small"], self.store.direct_client(), self.store.bucket, self.local_root)
        self.files = [e.key.removeprefix("small/") for e in plans["small"]]
        self.dataset_bytes = datasets.total_bytes(plans["small"])
        secrets = {(SECRET, "accessKeyId"): self.store.access_key, (SECRET, "secretAccessKey"): self.store.secret_key}
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.store.env())
        env["FLUIDFS_PEER_SECRET"] = PEER_SECRET
        env["PYTHONPATH"] = str(REPO_ROOT)
        self.env = env
        self.cluster = LocalCluster(self.workdir / "cluster", worker_command(sc.nice), secrets=secrets, env=env)
        cfg = ControllerConfig(client_namespace=CLIENT_NAMESPACE, scrape_timeout=2.0, resync=1.0)
        self.controller = Controller(self.cluster, cfg)
        self._thread = threading.Thread(target=self.controller.run, args=(self._stop,), name="controller", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.controller is not None:
            self.controller.close()
        if self.cluster is not None:
            self.cluster.close()
        self.janitor.sweep()
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Rig:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ pieces

    def sts_dir(self, job: str) -> Path:
        assert self.cluster is not None
        return self.cluster.workdir / NAMESPACE / base_name(job)

    def replicas(self, job: str) -> tuple[int, int, int]:
        """(desired, ready, worker processes alive incl. draining) of a job's StatefulSet."""
        assert self.cluster is not None
        sts = self.cluster.get("StatefulSet", NAMESPACE, base_name(job))
        if sts is None:
            return 0, 0, 0
        alive = sum(p.poll() is None for p in self.cluster.processes(NAMESPACE, base_name(job)))
        return int(sts["spec"].get("replicas") or 0), int(sts["status"].get("readyReplicas") or 0), alive

    def _wait(self, what: str, cond: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not after {timeout:.0f}s")
            time.sleep(0.2)

    def _mount_env(self, job: str) -> dict[str, str]:
        """The worker pods' environment (credentials by the document's variable names) for the mount."""
        assert self.cluster is not None
        sts = self.cluster.get("StatefulSet", NAMESPACE, base_name(job))
        env = dict(self.env)
        for e in (
            (sts or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0].get("env", [])
        ):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and (ref["name"], ref["key"]) in self.cluster.secrets:
                env[e["name"]] = self.cluster.secrets[(ref["name"], ref["key"])]
        return env

    def mount(self, job: str, jobdir: Path) -> tuple[Path, int]:
        """Mount the job's Dataset document as a client of its workers; returns (mountpoint, metrics port)."""
        assert self.cluster is not None
        cm = self.cluster.get("ConfigMap", NAMESPACE, base_name(job))
        assert cm is not None
        doc = jobdir / "dataset.yaml"
        doc.write_text(cm["data"]["dataset.yaml"])
        mnt = jobdir / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log_file = jobdir / "mount.log"
        cmd = [
            sys.executable, "-m", "fluidfs", "mount", str(doc), str(mnt), "--memory-size", str(self.sc.mount_memory),
            "--listen", f"127.0.0.1:{free_port()}", "--peers", str(self.sts_dir(job) / "peers"),
            "--metrics-addr", f"127.0.0.1:{port}", "--log-file", str(log_file), "--pid-file", str(jobdir / "mount.pid"),
        ]  # fmt: skip
        if self.sc.nice:
            cmd = ["nice", "-n", str(self.sc.nice), *cmd]
        self.janitor.add_mount(str(mnt))
        with open(jobdir / "mount.out", "ab") as out:
            proc = subprocess.run(
                cmd, cwd=REPO_ROOT, env=self._mount_env(job), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, timeout=90,
            )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"fluidfs mount failed ({proc.returncode}): {(jobdir / 'mount.out').read_text()[-800:]}")
        wait_mounted(str(mnt), 30, log=log_file)
        with contextlib.suppress(OSError, ValueError):
            self.janitor.add_pid(int((jobdir / "mount.pid").read_text().strip()))
        raise_readahead(str(mnt), 1024)
        return mnt, port

    def unmount_start(self, mnt: Path) -> subprocess.Popen[bytes] | None:
        """``fluidfs umount`` in the background (its start-up is slow on a busy machine)."""
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "fluidfs", "umount", str(mnt)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            return None

    def unmount_finish(self, mnt: Path, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        force_unmount(str(mnt))

    def held_blocks(self, job: str) -> dict[str, set[str]]:
        """Block digests on the SSD directory of each running worker (pod name -> digests).

        A stopped worker's directory stays on disk here (a pod's emptyDir would be gone): not counted.
        """
        assert self.cluster is not None
        prefix = base_name(job) + "-"
        live = {p.name for p in self.cluster.list_pods(NAMESPACE, {}) if p.name.startswith(prefix) and not p.deleting}
        out: dict[str, set[str]] = {}
        for name in sorted(live):
            cache = self.sts_dir(job) / name / "cache"
            out[name] = {b.digest for b in scan_directory(str(cache)).blocks} if cache.is_dir() else set()
        return out

    # ------------------------------------------------------------------------------ a job

    def compute_bound_reference(self, compute_s: float, epochs: int = 2) -> list[Report]:
        """The trainer on the local mirror: the input rate when reading costs (almost) nothing."""
        d = self.workdir / "jobs" / "reference"
        d.mkdir(parents=True, exist_ok=True)
        spec = self._trainer(str(self.local_root / "small"), compute_s, epochs)
        tp = TrainerProcess(spec, d / "trainer.jsonl", env=self.env, nice=self.sc.nice).start()
        self.janitor.add_pid(tp.pid or 0)
        try:
            tp.wait(self.sc.job_timeout)
        finally:
            tp.stop()
        return tp.reports()

    def _trainer(self, root: str, compute_s: float, epochs: int) -> TrainerSpec:
        sc = self.sc
        return TrainerSpec(
            root=root, files=tuple(self.files), epochs=epochs, batch_size=sc.batch_size, compute_s=compute_s,
            readers=sc.readers, prefetch=sc.prefetch, read_size=1 << 20, seed=7, report_interval=1.0,
        )  # fmt: skip

    def run_job(self, job: JobSpec) -> JobResult:
        """Apply the job's Dataset, mount, train, (scale in), tear down; never raises for a failed job."""
        assert self.cluster is not None and self.store is not None
        sc = self.sc
        res = JobResult(job)
        jobdir = self.workdir / "jobs" / job.name
        if jobdir.exists():
            shutil.rmtree(jobdir, ignore_errors=True)
        jobdir.mkdir(parents=True)
        client = f"mount-{job.name}"
        mnt: Path | None = None
        stop = threading.Event()
        sampler: threading.Thread | None = None
        n_events = len(self.cluster.events)
        began = time.monotonic()

        def phase(name: str) -> None:
            res.phases[name] = round(time.monotonic() - began, 2)

        try:
            self.cluster.apply_dataset(dataset_resource(sc, job, self.store))
            cluster = self.cluster
            self._wait("ConfigMap", lambda: cluster.get("ConfigMap", NAMESPACE, base_name(job.name)) is not None, 60)
            mnt, port = self.mount(job.name, jobdir)  # while the workers start
            phase("mounted")
            first = job.replicas if job.replicas is not None else sc.min_workers
            self._wait("workers ready", lambda: self.replicas(job.name)[1] >= first, 120)
            phase("workers_ready")
            self.cluster.add_client(client, f"http://127.0.0.1:{port}/metrics")
            sampler = threading.Thread(target=self._sample, args=(job.name, res, stop), daemon=True)
            sampler.start()
            time.sleep(2 * sc.interval)  # the controller's first scrape of the mount (a rate needs two)
            tp = TrainerProcess(self._trainer(str(mnt), job.compute_s, job.epochs), jobdir / "trainer.jsonl",
                                env=self.env, nice=sc.nice).start()  # fmt: skip
            self.janitor.add_pid(tp.pid or 0)
            res.start = time.time()
            phase("trainer_started")
            try:
                tp.wait(sc.job_timeout)
            except subprocess.TimeoutExpired:
                res.error = f"trainer did not finish within {sc.job_timeout:.0f}s"
            finally:
                tp.stop()
            res.end = time.time()
            res.reports = tp.reports()
            phase("trainer_ended")
            if job.scale_in and not res.error:
                self._scale_in(job, res)
                phase("scaled_in")
        except Exception as exc:  # a failed job is reported, the run goes on
            log.exception("job %s failed", job.name)
            res.error = res.error or f"{type(exc).__name__}: {exc}"
        finally:
            stop.set()
            if sampler is not None:
                sampler.join(5)
            res.events = [
                {"t": e.get("eventTime", ""), "reason": e.get("reason", ""), "note": e.get("note", "")}
                for e in self.cluster.events[n_events:]
                if (e.get("regarding") or {}).get("name") == job.name
            ]
            self.cluster.remove_client(client)
            umount = self.unmount_start(mnt) if mnt is not None else None
            self._delete(job.name)
            phase("deleted")
            if mnt is not None:
                self.unmount_finish(mnt, umount)
            phase("unmounted")
        return res

    def _sample(self, job: str, res: JobResult, stop: threading.Event) -> None:
        report = self.workdir / "jobs" / job / "trainer.jsonl"
        while not stop.wait(1.0):
            desired, ready, alive = self.replicas(job)
            assert self.controller is not None
            mem = self.controller._mem.get(f"{NAMESPACE}/{job}")  # read-only peek for the timeline
            decision = mem.decision.reason if mem is not None and mem.decision is not None else ""
            sample = mem.history[-1] if mem is not None and mem.history else None
            signals = {}
            if sample is not None:  # what the autoscaler saw last (None: unknown)
                signals = {"input_bps": sample.delivered_bps, "stall": sample.stall, "hit_ratio": sample.hit_ratio,
                           "fill": sample.fill, "source_bps": sample.source_bps, "partial": sample.partial}  # fmt: skip
            last = [r for r in read_report(report) if r.get("kind") == "interval"][-1:]
            res.timeline.append(
                {"t": time.time(), "desired": desired, "ready": ready, "processes": alive,
                 "trainer_bps": last[0]["bytes_per_s"] if last else None, "decision": decision, **signals}
            )  # fmt: skip

    def _scale_in(self, job: JobSpec, res: JobResult) -> None:
        """Wait for minWorkers with every leaver gone; check the remaining members kept what they own."""
        sc = self.sc
        before = self.held_blocks(job.name)
        union = set().union(*before.values()) if before else set()
        deadline = time.monotonic() + sc.idle_after + 90
        while time.monotonic() < deadline:
            desired, _ready, alive = self.replicas(job.name)
            if desired == sc.min_workers and alive == sc.min_workers:
                res.scale_in_done = time.time()
                break
            time.sleep(0.5)
        after = self.held_blocks(job.name)
        remaining = [f"{base_name(job.name)}-{i}" for i in range(sc.min_workers)]
        ring = Ring([_Member(m) for m in remaining]) if remaining else None
        owned = {d for d in union if ring is not None and ring.owner(bytes.fromhex(d)) in remaining}
        kept = set().union(*(after.get(m, set()) for m in remaining)) if remaining else set()
        res.blocks = {
            "held_before": {k: len(v) for k, v in before.items()},
            "cached_before": len(union),
            "owned_by_remaining": len(owned),
            "kept_by_remaining": len(kept & owned),
            "lost": len(owned - kept),
            "remaining_used_bytes": sum(_dir_bytes(self.sts_dir(job.name) / m / "cache") for m in remaining),
            "remaining_quota_bytes": len(remaining) * sc.worker_quota,
            "handoff": _handoff_lines(self.sts_dir(job.name)),
        }

    def _delete(self, job: str) -> None:
        assert self.cluster is not None
        self.cluster.delete_dataset(NAMESPACE, job)
        with contextlib.suppress(TimeoutError):
            self._wait("workers gone", lambda: self.replicas(job)[2] == 0, 60)


@dataclass(frozen=True)
class _Member:
    id: str
    weight: float = 1.0  # workers of one StatefulSet have one quota, hence one weight


def _dir_bytes(d: Path) -> int:
    return sum(b.size for b in scan_directory(str(d)).blocks) if d.is_dir() else 0


def _handoff_lines(sts_dir: Path) -> list[str]:
    out: list[str] = []
    for log_file in sorted(sts_dir.glob("*/log")):
        with contextlib.suppress(OSError):
            out += [f"{log_file.parent.name}: {ln.strip()[-200:]}" for ln in log_file.read_text().splitlines()
                    if "handoff" in ln.lower() or "handed" in ln.lower()]  # fmt: skip
    return out


def jobs_of(sc: Scenario) -> list[JobSpec]:
    """The jobs of a run, in order."""
    out = [JobSpec(f"fixed-{n}", "manual", sc.compute_s, sc.sweep_epochs, replicas=n) for n in sc.sweep]
    out.append(JobSpec("training-speed", "training-speed", sc.compute_s, sc.epochs, scale_in=True))
    out.append(JobSpec("capacity", "capacity", sc.compute_s, sc.epochs))
    out.append(JobSpec("compute-bound", "training-speed", sc.cb_compute_s, sc.cb_epochs, scale_in=True))
    return out


def run(sc: Scenario, workdir: Path, only: set[str] | None = None,
        progress: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """One whole run; returns everything :mod:`tools.bench.autoscale_report` needs."""
    t0 = time.time()
    out: dict[str, Any] = {"scenario": asdict(sc), "jobs": {}, "started": t0}
    with Rig(sc, workdir, progress) as rig:
        assert rig.store is not None
        out["shaping"] = rig.store.shaping
        out["dataset_bytes"] = rig.dataset_bytes
        progress(f"store up ({rig.store.shaping}); dataset {len(rig.files)} files, {rig.dataset_bytes >> 20} MiB")
        out["reference"] = {"io": rig.compute_bound_reference(sc.compute_s)}
        for job in jobs_of(sc):
            if only and job.name not in only and job.policy not in only:
                continue
            t = time.time()
            res = rig.run_job(job)
            s = summarize(res.reports)
            rates = ", ".join(f"{r / (1 << 20):.1f}" for r in s.epoch_rates())
            err = f" ERROR {res.error}" if res.error else ""
            progress(f"{job.name}: {time.time() - t:.0f}s, epochs MiB/s [{rates}]{err}")
            out["jobs"][job.name] = res.to_json()
    out["seconds"] = time.time() - t0
    return out


@contextlib.contextmanager
def workdir_of(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fluidfs-autoscale-") as d:
        yield Path(d)


def scenario_with(sc: Scenario, overrides: dict[str, Any]) -> Scenario:
    return replace(sc, **overrides) if overrides else copy.copy(sc)


def dump(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=1, default=str))


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    fields = Scenario.__dataclass_fields__
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with FIELD one of {', '.join(fields)}; got {text!r}")
    default = getattr(Scenario(), key)
    try:
        if isinstance(default, tuple):
            return key, tuple(int(v) for v in value.split(",") if v)
        return key, type(default)(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: bad value {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.autoscale", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    p.add_argument("--json", default="docs/autoscaling/autoscale.json", help="write the results here ('' : don't)")
    p.add_argument("--plot", default="docs/autoscaling/autoscale.png", help="write the plot here ('' : don't)")
    p.add_argument("--tiny", action="store_true", help="a smoke-test scenario (seconds, not minutes)")
    p.add_argument("--only", action="append", default=[], help="run only these jobs or policies (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="FIELD=VALUE",
                   help="change a Scenario field (repeatable)")  # fmt: skip
    p.add_argument("--from-json", metavar="FILE", help="do not run: evaluate and plot a saved run (its --json)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s: %(message)s")

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through Rig.close(): workers, mounts, store stopped

    signal.signal(signal.SIGTERM, on_term)
    sc = scenario_with(tiny() if args.tiny else Scenario(), dict(args.overrides))
    if args.from_json:  # evaluate and draw a saved run again
        result = json.loads(Path(args.from_json).read_text())
    else:
        with workdir_of(args.workdir) as wd:
            result = run(sc, wd, set(args.only) or None, progress=lambda m: print(m, file=sys.stderr, flush=True))
    ev = report.evaluate(result)
    result["evaluation"] = ev
    print(report.table(result, ev))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        dump(result, Path(args.json))
    if args.plot:
        report.plot(result, ev, Path(args.plot))
    failed = [j for j in ev["jobs"].values() if j["error"]]
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
