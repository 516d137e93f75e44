"""The benchmark run: store + proxy, datasets, every workload on every system, N runs, records.

Order: for each run, for each workload, for each system — a *fresh* instance (empty cache) per
(system, workload, run), so "cold" really is cold.  Phases per workload:

- ``seq``/``rand``: ``cold`` (fresh mount, page cache dropped), ``warm`` (same again),
  ``warm_dropped`` (page cache dropped, daemon caches kept);
- ``loader``: 3 shuffled epochs in one DataLoader process: ``epoch1 cold`` (fresh mount, page
  cache dropped), ``epoch2 warm``, ``epoch3 warm_dropped`` (page cache dropped before it);
- ``meta``: ``cold`` find (fresh mount), ``cold`` walk (another fresh mount), then ``warm``
  walk and find, then ``warm_dropped`` walk and find;
- ``pressure`` (fluidfs only): small-file set = 2 x SSD cache, memory tier small; eviction
  ``lru`` and ``none``; 3 epochs, page cache dropped before each; per-epoch hit ratio from the
  metrics endpoint: hits summed over tiers / (hits + misses of the tier with fewest misses,
  i.e. the lowest), and byte hit ratio = 1 - source bytes / bytes read.
- ``ssd``: the large files read from each system's own disk cache: one fill pass on a fresh
  mount (waiting for fluidfs's background SSD writes to finish), then ``ssd_reps`` times: page
  cache dropped (after ``sync``), every file read front to back (phase ``page cache dropped``).
  For fluidfs also the blocks its SSD tier served and its source requests per pass, which show
  that the pass was served from the SSD tier (its memory tier is smaller than the set and LRU),
  and for every FUSE system the CPU time of its daemon per GB read (steadier than MB/s on a
  shared machine).
  Systems without a disk cache (boto3) are skipped; ``local`` is the disk itself.

A system that fails to set up or whose measurement crashes is recorded in ``errors`` and the
run goes on; everything is torn down in ``finally`` and the :class:`Janitor` sweeps the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluidfs.util.proc import drop_page_cache
from tools.bench import datasets as ds
from tools.bench.measure import machine, source_deltas, tier_delta
from tools.bench.pressure import Skip as _Skip
from tools.bench.pressure import wl_pressure
from tools.bench.store import Store, open_store
from tools.bench.systems import SYSTEMS, Fluidfs, Janitor, System

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
ALL_WORKLOADS = ("seq", "loader", "rand", "meta", "pressure", "ssd")
BASELINE = "fluidfs-baseline"
SSD_PHASE = "page cache dropped"


@dataclass
class Options:
    systems: list[str]
    workloads: list[str]
    spec: ds.DataSpec
    runs: int = 3
    latency_ms: float = 20.0
    bandwidth_mbit: float | None = None
    budget: float = 60.0
    rand_ops: int = 400
    loader_workers: int = 2
    fluidfs_cache_size: int = 8 << 30
    fluidfs_memory_size: int = 256 << 20
    fuse_read_ahead_kb: int = 1024
    quick: bool = False
    shaper: str = "auto"
    ssd_reps: int = 3
    baseline: Path | None = None  # another fluidfs tree, measured as system "fluidfs-baseline"


@dataclass
class Suite:
    opts: Options
    workdir: Path
    log: Callable[[str], None] = lambda msg: print(
        f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True
    )
    records: list[dict[str, Any]] = field(default_factory=list)
    rss: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.janitor = Janitor(self.workdir)
        self.store: Store | None = None
        self.plans: dict[str, list[ds.FileEntry]] = {}
        self.can_drop = True
        self.shaping = "none"

    # ------------------------------------------------------------------ helpers

    def rec(
        self,
        system: str,
        workload: str,
        phase: str,
        metric: str,
        value: float | None,
        unit: str,
        better: str,
        run: int,
        **extra: Any,
    ) -> None:
        self.records.append(
            {
                "system": system,
                "workload": workload,
                "phase": phase,
                "metric": metric,
                "value": value,
                "unit": unit,
                "better": better,
                "run": run,
                **extra,
            }
        )

    def note_rss(self, system: str, workload: str, mib: float | None) -> None:
        if mib is not None:
            d = self.rss.setdefault(system, {})
            d[workload] = max(d.get(workload, 0.0), mib)

    def drop(self) -> None:
        if not drop_page_cache() and self.can_drop:
            self.can_drop = False
            self.notes.append("drop_caches not permitted (not root): cold/warm_dropped keep the page cache")

    def child(self, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one measurement in ``python -m tools.bench.workloads``; kill its group on overrun."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.bench.workloads"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(json.dumps(args).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"timeout": True}
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # DataLoader workers share the group: make sure none lingers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            raise RuntimeError(f"workload {args['workload']} failed: {err.decode(errors='replace')[-800:]}")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    def files(self, which: str) -> list[list[Any]]:
        return [[e.key, e.size] for e in self.plans[which]]

    def measure(
        self, system: System, workload: str, args: dict[str, Any], timeout: float
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """One child measurement on ``system``, with fluidfs source-counter deltas."""
        m0 = system.metrics()
        res = self.child({**args, "backend": system.backend()}, timeout)
        deltas = source_deltas(m0, system.metrics())
        if system.name == "boto3" and res.get("vm_hwm_kib") and not res.get("skipped"):
            # DataLoader workers are forks of the child: their ru_maxrss is not inherited from the harness.
            workers = res.get("ru_maxrss_children_kib", 0) if workload == "loader" else 0
            self.note_rss("boto3", workload, max(res["vm_hwm_kib"], workers) / 1024)
        return res, deltas

    def rec_source(self, system: System, workload: str, phase: str, run: int, deltas: dict[str, float]) -> None:
        if "fluidfs_source_requests_total" in deltas:
            self.rec(
                system.name,
                workload,
                phase,
                "source requests",
                deltas["fluidfs_source_requests_total"],
                "",
                "lower",
                run,
            )
        if "fluidfs_source_bytes_total" in deltas:
            self.rec(
                system.name,
                workload,
                phase,
                "source MB",
                deltas["fluidfs_source_bytes_total"] / 1e6,
                "MB",
                "lower",
                run,
            )

    # ------------------------------------------------------------------ workloads

    def wl_seq_or_rand(self, system: System, workload: str, run: int) -> None:
        if workload == "seq":
            args: dict[str, Any] = {"workload": "seq", "files": self.files("large"), "budget": self.opts.budget}
        else:
            args = {
                "workload": "rand",
                "files": self.files("large"),
                "ops": self.opts.rand_ops,
                "seed": 1000 + run,
                "threads": 4,
                "budget": self.opts.budget,
            }
        timeout = self.opts.budget * 2 + 60
        for phase in ("cold", "warm", "warm_dropped"):
            if phase != "warm":
                self.drop()
            res, deltas = self.measure(system, workload, args, timeout)
            if res.get("timeout"):
                self.rec(system.name, workload, phase, "MB/s", None, "MB/s", "higher", run, timeout=True)
                continue
            part = bool(res.get("partial"))
            self.rec(system.name, workload, phase, "MB/s", res["MB/s"], "MB/s", "higher", run, partial=part)
            if workload == "rand":
                self.rec(system.name, workload, phase, "ops/s", res["ops/s"], "ops/s", "higher", run, partial=part)
            self.rec_source(system, workload, phase, run, deltas)

    def wl_loader(self, system: System, run: int) -> None:
        """3 epochs in one DataLoader child: cold, warm, warm after dropping the page cache."""
        args = {
            "workload": "loader",
            "files": self.files("small"),
            "budget": self.opts.budget,
            "workers": self.opts.loader_workers,
            "seed": run,
            "epochs": 3,
            "drop_before": [0, 2],
            "metrics_url": system.metrics_url(),
        }
        res, _ = self.measure(system, "loader", args, self.opts.budget * 3 + 120)
        if res.get("skipped"):
            self.skipped.setdefault(f"loader:{system.name}", res["skipped"])
            raise _Skip(res["skipped"])
        if res.get("timeout"):
            self.rec(system.name, "loader", "epoch1 cold", "samples/s", None, "samples/s", "higher", run, timeout=True)
            return
        for i, ep in enumerate(res["epochs"]):
            phase = ("epoch1 cold", "epoch2 warm", "epoch3 warm_dropped")[i]
            self.rec(
                system.name,
                "loader",
                phase,
                "samples/s",
                ep["samples/s"],
                "samples/s",
                "higher",
                run,
                partial=ep["partial"],
            )
            self.rec_source(
                system, "loader", phase, run, source_deltas(ep.get("metrics_before"), ep.get("metrics_after"))
            )

    def wl_meta(self, system: System, run: int, fresh: Callable[[], None]) -> None:
        timeout = self.opts.budget * 2

        def one(kind: str, phase: str) -> None:
            res, deltas = self.measure(system, "meta", {"workload": kind, "prefix": "meta"}, timeout)
            if res.get("timeout"):
                self.rec(system.name, "meta", phase, kind, None, "s", "lower", run, timeout=True)
                return
            expected = len(self.plans["meta"])
            if res.get("files") != expected:
                self.errors.append(
                    f"{system.name} meta {kind} {phase} run {run}: saw {res.get('files')} of {expected} files"
                )
            self.rec(system.name, "meta", phase, kind, res["seconds"], "s", "lower", run)
            self.rec_source(system, "meta", f"{phase} {kind}", run, deltas)

        self.drop()
        one("find", "cold")
        fresh()
        self.drop()
        one("walk", "cold")
        one("walk", "warm")
        one("find", "warm")
        self.drop()
        one("walk", "warm_dropped")
        one("find", "warm_dropped")

    def wl_ssd(self, system: System, run: int) -> None:
        """Large files from the system's own disk cache, page cache dropped before every pass."""
        args: dict[str, Any] = {"workload": "seq", "files": self.files("large"), "budget": self.opts.budget}
        timeout = self.opts.budget * 2 + 60
        self.drop()
        fill, _ = self.measure(system, "ssd", args, timeout)  # fills the cache (not recorded)
        if fill.get("timeout") or fill.get("partial"):
            self.errors.append(f"{system.name} ssd run {run}: the fill pass did not finish within the budget")
        if isinstance(system, Fluidfs):
            system.wait_ssd_settled()
        for _rep in range(self.opts.ssd_reps):
            self.drop()
            before = system.metrics()
            cpu0 = system.cpu_seconds()
            res, deltas = self.measure(system, "ssd", args, timeout)
            cpu1 = system.cpu_seconds()
            if res.get("timeout"):
                self.rec(system.name, "ssd", SSD_PHASE, "MB/s", None, "MB/s", "higher", run, timeout=True)
                continue
            part = bool(res.get("partial"))
            self.rec(system.name, "ssd", SSD_PHASE, "MB/s", res["MB/s"], "MB/s", "higher", run, partial=part)
            if cpu0 is not None and cpu1 is not None and res.get("bytes"):
                per_gb = (cpu1 - cpu0) / (res["bytes"] / 1e9)
                self.rec(system.name, "ssd", SSD_PHASE, "daemon CPU", per_gb, "s/GB", "lower", run)
            hits = tier_delta(before, system.metrics(), "fluidfs_cache_hits_total", "ssd")
            if hits is not None:
                self.rec(system.name, "ssd", SSD_PHASE, "SSD-tier blocks", hits, "blocks", "higher", run)
            self.rec_source(system, "ssd", SSD_PHASE, run, deltas)

    def wl_pressure(self, run: int) -> None:
        wl_pressure(self, run)

    # ------------------------------------------------------------------ driver

    def _sysopts(self) -> dict[str, Any]:
        return {
            "fuse_read_ahead_kb": self.opts.fuse_read_ahead_kb,
            "fluidfs_cache_size": self.opts.fluidfs_cache_size,
            "fluidfs_memory_size": self.opts.fluidfs_memory_size,
        }

    def run(self) -> dict[str, Any]:
        t_start = time.time()
        o = self.opts
        systems: list[System] = []
        for name in o.systems:
            why = SYSTEMS[name].skip_reason()  # type: ignore[attr-defined]
            if why:
                self.skipped[name] = why
                self.log(f"skip {name}: {why}")
        if "pressure" in o.workloads and "fluidfs" not in o.systems:
            self.notes.append("pressure workload needs fluidfs in --systems")
        try:
            self.log(f"starting SeaweedFS + latency proxy ({o.latency_ms} ms) in {self.workdir}")
            self.store = open_store(
                self.workdir, o.latency_ms, o.bandwidth_mbit, register=self.janitor.add_pid, shaper=o.shaper
            )
            self.shaping = self.store.shaping
            self.log(
                f"store ready: {self.store.endpoint} (direct {self.store.direct_endpoint}; "
                f"bandwidth shaping: {self.shaping})"
            )
            if os.environ.get("FLUIDFS_BENCH_INJECT_FAILURE") == "after-store":  # cleanup test hook
                raise RuntimeError("injected failure after the store started")
            need = {
                "seq": ["large"],
                "rand": ["large"],
                "loader": ["small"],
                "pressure": ["small"],
                "meta": ["meta"],
                "ssd": ["large"],
            }
            which = sorted({d for w in o.workloads for d in need[w]}, key=ds.PREFIXES.index)
            t0 = time.monotonic()
            self.plans = ds.generate(
                o.spec, which, self.store.direct_client(), self.store.bucket, self.workdir / "local"
            )
            self.log(f"datasets {which} ready in {time.monotonic() - t0:.1f}s")
            for name in o.systems:
                if name not in self.skipped:
                    systems.append(SYSTEMS[name](self.store, self.workdir, self.janitor, self._sysopts()))
                if name == "fluidfs" and o.baseline is not None and name not in self.skipped:
                    base = Fluidfs(
                        self.store, self.workdir, self.janitor, self._sysopts(), name=BASELINE, repo=o.baseline
                    )
                    systems.append(base)
            if "ssd" in o.workloads:
                large = ds.total_bytes(self.plans["large"])
                if large <= o.fluidfs_memory_size:
                    self.notes.append(
                        f"ssd: the large set ({large / MiB:.0f} MiB) fits in fluidfs's memory tier "
                        f"({o.fluidfs_memory_size / MiB:.0f} MiB): fluidfs serves it from memory, not from its SSD tier"
                    )
                for system in systems:
                    if not system.fuse and system.name != "local":
                        self.skipped[f"ssd:{system.name}"] = "no disk cache of its own"
            for run in range(o.runs):
                for w in o.workloads:
                    if w == "pressure":
                        if "fluidfs" in o.systems and "fluidfs" not in self.skipped:
                            self.log(f"run {run + 1}/{o.runs} pressure fluidfs lru/none")
                            self.wl_pressure(run)
                        continue
                    for system in systems:
                        if f"{w}:{system.name}" in self.skipped:
                            continue
                        self.log(f"run {run + 1}/{o.runs} {w} {system.name}")
                        self._one(system, w, run)
        finally:
            for system in systems:
                with contextlib.suppress(Exception):
                    system.teardown()
            self.janitor.sweep()
            if self.store is not None:
                self.store.close()
        return self.result(time.time() - t_start)

    def _one(self, system: System, w: str, run: int) -> None:
        try:
            system.setup()
            if w in ("seq", "rand"):
                self.wl_seq_or_rand(system, w, run)
            elif w == "loader":
                self.wl_loader(system, run)
            elif w == "ssd":
                self.wl_ssd(system, run)
            elif w == "meta":

                def fresh() -> None:
                    self.note_rss(system.name, w, system.peak_rss_mib())
                    system.teardown()
                    system.setup()

                self.wl_meta(system, run, fresh)
            self.note_rss(system.name, w, system.peak_rss_mib())
        except _Skip:
            pass
        except Exception as exc:
            self.errors.append(f"{system.name} {w} run {run}: {str(exc)[:400]}")
            self.log(f"ERROR {system.name} {w}: {exc}")
            if os.environ.get("FLUIDFS_BENCH_DEBUG"):
                traceback.print_exc()
        finally:
            system.teardown()

    def result(self, seconds: float) -> dict[str, Any]:
        o = self.opts
        sp = o.spec
        skipped = {k: v for k, v in self.skipped.items() if ":" not in k}
        for k, v in self.skipped.items():
            if k.startswith("loader:"):
                skipped.setdefault(f"{k.split(':', 1)[1]} (loader)", v)
        return {
            "meta": {
                "runs": o.runs,
                "latency_ms": o.latency_ms,
                "bandwidth_mbit": o.bandwidth_mbit,
                "systems": o.systems,
                "workloads": o.workloads,
                "budget_s": o.budget,
                "loader_workers": o.loader_workers,
                "rand_ops": o.rand_ops,
                "ssd_reps": o.ssd_reps,
                "baseline": str(o.baseline) if o.baseline else None,
                "shaping": self.shaping,
                "fluidfs_memory_mib": o.fluidfs_memory_size / MiB,
                "fluidfs_cache_mib": o.fluidfs_cache_size / MiB,
                "spec": sp.__dict__,
                "seconds": round(seconds, 1),
                "quick": o.quick,
                "datasets_desc": (
                    f"large {sp.large_files} x {sp.large_size / MiB:g} MiB; small {sp.small_files} x "
                    f"~{sp.small_size / 1024:g} KiB in {sp.classes} classes; meta {sp.meta_files} files"
                ),
                "machine": machine(),
                "notes": self.notes,
            },
            "records": self.records,
            "rss": self.rss,
            "skipped": {k: v for k, v in skipped.items()},
            "workload_skipped": {
                w: {k.split(":", 1)[1]: v for k, v in self.skipped.items() if k.startswith(f"{w}:")}
                for w in ("loader", "ssd")
            },
            "errors": self.errors,
        }
