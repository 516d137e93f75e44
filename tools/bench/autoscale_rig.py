"""Runs the jobs of an autoscaling run on this machine: store, controller, local workers, client mount, trainer.

:class:`Rig` (store + dataset + controller + janitor) and :meth:`Rig.run_job` with a
:class:`~tools.bench.autoscale_scenario.JobSpec` run any policy and trainer shape; a job's
:class:`JobResult` holds its trainer reports, its per-second timeline, the scaling Events and
the scale-in check.  The workload as a whole is described in :mod:`tools.bench.autoscale`.

Caveats: the mount is a client, not a member, so the workers are the whole cluster cache (a
node mount's SSD would also hold blocks under Kubernetes).  Scale-in is measured with the
mount still mounted and idle (the job ended, the node stays).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fluidfs.cache.ssdlayout import scan_directory
from fluidfs.cluster.hashing import Ring
from fluidfs.control.controller import Controller, ControllerConfig
from fluidfs.control.local import CLIENT_NAMESPACE, LocalCluster
from fluidfs.control.objects import base_name
from tests.support.net import free_port
from tools.bench import datasets
from tools.bench.autoscale_scenario import NAMESPACE, SECRET, JobSpec, Scenario, dataset_resource, worker_command
from tools.bench.store import Store, open_store
from tools.bench.systems import Janitor, force_unmount, raise_readahead, wait_mounted
from tools.bench.trainer import Report, TrainerProcess, TrainerSpec, read_report

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER_SECRET = "fluidfs-e2e-bench-peer-secret"  # throw-away, loopback-only cluster


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
