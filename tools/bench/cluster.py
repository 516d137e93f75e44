"""The cluster-cache benchmark: members in shaped network namespaces sharing one capped object store.

``python -m tools.bench cluster`` (see :mod:`tools.bench.clcli`) runs, per repetition, these
phases against one SeaweedFS behind the latency proxy, the proxy's responses capped by ``tc tbf``
on the bridge all members share (:mod:`tools.bench.netlab`):

- ``independent``: three fluidfs mounts that are *not* clustered read the large set
  concurrently (cold) — source bytes (3x the set) and aggregate throughput;
- ``shared``: the same with the three mounts clustered — source bytes / set bytes, aggregate
  throughput / the independent one's (a source-bandwidth-bound epoch);
- ``single``: one independent mount, SSD quota Q, ``none`` eviction, reads the whole small set
  (2.5 Q) in two shuffled epochs — epoch-2 byte hit ratio;
- ``epochs``: three clustered mounts with quota Q each read the small set in shuffled epochs,
  each member its third of a fresh permutation per epoch (``DistributedSampler``-style) —
  epoch-2 byte hit ratio, cluster-wide;
- ``join`` (continues ``epochs``): a ``fluidfs worker`` joins as a 4th member (peers file
  rewritten) — its ownership share, the bytes it took over and how many of them came from the
  source during the next epoch;
- ``kill`` (continues ``join``): the three readers read for ``kill_duration`` seconds, the worker
  is SIGKILLed at ``kill_at`` — read errors, and the aggregate throughput time series: how long
  until a 1-s window is back to >= 80 % of the mean before the kill.

Hit ratios are byte hit ratios: 1 - (bytes all members read from the source) / (bytes the
readers read); source bytes come from the members' ``fluidfs_source_bytes_total`` (cross-checked
with the bridge qdisc's byte counter, frames included).  Every reader compares every byte with
the local mirror (:mod:`tools.bench.clreader`).  Everything — namespaces, veths, mounts,
processes — is removed in ``finally``/``ExitStack`` and by the :class:`Janitor`.

Caveats: all members share the machine's cores with the store, the proxy and the readers, so
warm throughput is CPU-bound; the default caps are low enough that the source link, not the
CPU, bounds the cold phases (compare the independent phase's MB/s with ``--source-mbit``).  The
kill phase's baseline is the mean before the kill without the first second, so a later stall
in that window lowers it; the per-tick series is in the result to judge by eye.  The killed
worker joined one epoch before, so its blocks are still held by their previous owners: the
phase measures failover, not the refetch of blocks held only by the dead member.
"""

from __future__ import annotations

import json
import math
import queue
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fluidfs.cache.base import BlockKey
from fluidfs.cluster.hashing import Ring
from fluidfs.config.mount import DEFAULT_BLOCK_SIZE as BLOCK_SIZE
from fluidfs.util.etag import normalize_etag
from fluidfs.util.proc import drop_page_cache
from tests.support.s3server import S3Server
from tools.bench import datasets as ds
from tools.bench.clmembers import SECRET, CacheSpec, Member, total, write_peers
from tools.bench.measure import machine
from tools.bench.netlab import ClusterNet
from tools.bench.store import ACCESS_KEY, BUCKET, SECRET_KEY, Store, kill_group, start_proxy
from tools.bench.systems import Janitor

REPO_ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
PHASES = ("independent", "shared", "single", "epochs", "join", "kill")
SRC = "fluidfs_source_bytes_total"


@dataclass
class ClusterOptions:
    runs: int = 3
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    latency_ms: float = 20.0
    source_mbit: float = 48.0  # the object store's link, shared by every member
    member_mbit: float = 192.0  # each member's link (both directions)
    large_files: int = 4
    large_size: int = 16 * MiB
    small_size: int = 110 * 1024
    quota: int = 48 * MiB  # one member's SSD quota in the epoch phases
    dataset_ratio: float = 2.5  # small set = ratio x quota
    memory_size: int = 8 * MiB  # memory tier in the epoch phases (the minimum: two blocks)
    large_memory_size: int = 64 * MiB  # memory tier in the large-set phases
    large_cache_size: int = 1 << 30
    threads: int = 8  # reader threads per member, small set
    kill_duration: float = 15.0
    kill_at: float = 5.0
    seed: int = 1234
    fluidfs_args: list[str] = field(default_factory=list)  # extra flags for every member (experiments)
    quick: bool = False

    def spec(self) -> ds.DataSpec:
        small_files = math.ceil(self.dataset_ratio * self.quota / self.small_size)
        return ds.DataSpec(large_files=self.large_files, large_size=self.large_size, small_files=small_files,
                           small_size=self.small_size, classes=10, meta_files=0, seed=self.seed)  # fmt: skip


def start_store(workdir: Path, net: ClusterNet, latency_ms: float, stack: ExitStack, janitor: Janitor) -> Store:
    """SeaweedFS on loopback + the latency proxy on the bridge address (capped by the bridge's tbf)."""
    data = workdir / "seaweed"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    srv = S3Server(kind="seaweed", data_dir=data, access_key=ACCESS_KEY, secret_key=SECRET_KEY, startup_timeout=60.0)
    stack.callback(srv.stop)
    srv.start()
    if srv.pid:
        janitor.add_pid(srv.pid)
    direct = str(srv.endpoint)
    proc, port = start_proxy(workdir, "proxy", direct.split("//", 1)[1], latency_ms, f"{net.host_ip}:0", [], [])
    stack.callback(kill_group, proc)
    janitor.add_pid(proc.pid)
    store = Store(direct, f"http://{net.host_ip}:{port}", srv.access_key, srv.secret_key,
                  shaping=f"tc tbf {net.source_mbit:g} Mbit/s on bridge {net.bridge}")  # fmt: skip
    store.direct_client().create_bucket(Bucket=BUCKET)
    return store


@dataclass(frozen=True)
class _Weighted:
    id: str
    weight: float


class ClusterBench:
    """One benchmark run (all repetitions); :meth:`run` returns the result document."""

    def __init__(self, opts: ClusterOptions, workdir: Path, log: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.workdir = workdir
        self.log = log or (
            lambda msg: print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
        )
        self.janitor = Janitor(workdir)
        self.records: list[dict[str, Any]] = []
        self.series: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.net: ClusterNet | None = None
        self.store: Store | None = None
        self.plans: dict[str, list[ds.FileEntry]] = {}
        self.seq = 0
        self.started: queue.Queue[float] = queue.Queue()  # start time of each read (the kill phase's clock)

    # ------------------------------------------------------------------ plumbing

    def rec(self, run: int, phase: str, metric: str, value: float | None, unit: str = "", **extra: Any) -> None:
        self.records.append({"run": run, "phase": phase, "metric": metric, "value": value, "unit": unit, **extra})
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        self.log(f"run {run} {phase}: {metric} = {shown} {unit}")

    def files(self, which: str) -> list[list[Any]]:
        return [[e.key, e.size] for e in self.plans[which]]

    def member(self, index: int, kind: str, cache: CacheSpec, clustered: bool) -> Member:
        assert self.net is not None and self.store is not None
        self.seq += 1
        base = self.workdir / "members" / f"{self.seq:03d}"
        base.mkdir(parents=True, exist_ok=True)
        return Member(self.net.slots[index - 1], kind, base, self.store, self.janitor, cache, clustered=clustered,
                      peers_file=self.workdir / "peers", secret_file=self.workdir / "secret")  # fmt: skip

    def start(self, members: list[Member], stack: ExitStack) -> None:
        """Launch all, then wait for all (they start in parallel); all are stopped together when ``stack`` closes."""
        stack.callback(self._stop, members)
        for m in members:
            m.launch()
        for m in members:
            m.wait_ready()

    def _stop(self, members: list[Member]) -> None:
        """Stop members in parallel (a clustered member hands its blocks over on the way out: no serial waits)."""
        threads = [threading.Thread(target=m.stop, name=f"stop-{m.name}") for m in members]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for m in members:
            shutil.rmtree(m.base, ignore_errors=True)

    def read(self, jobs: list[tuple[Member, list[list[Any]]]], threads: int, **extra: Any) -> list[dict[str, Any]]:
        """Run one reader child per (member, files) job, all starting together; their results in order."""
        start_at = time.time() + 1.0
        self.started.put(start_at)
        procs = []
        for m, files in jobs:
            args = {"root": str(m.mnt), "mirror": str(self.workdir / "local"), "files": files, "threads": threads,
                    "start_at": start_at, **extra}  # fmt: skip
            p = subprocess.Popen([sys.executable, "-m", "tools.bench.clreader"], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
            self.janitor.add_pid(p.pid)
            assert p.stdin is not None
            p.stdin.write(json.dumps(args).encode())
            p.stdin.close()
            p.stdin = None  # communicate() must not flush it again
            procs.append(p)
        out = []
        for p in procs:
            try:
                stdout, stderr = p.communicate(timeout=900)
            except subprocess.TimeoutExpired:
                kill_group(p)
                raise RuntimeError("a reader did not finish in 900 s") from None
            if p.returncode != 0:
                raise RuntimeError(f"reader failed: {stderr.decode(errors='replace')[-800:]}")
            out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        return out

    def snap(self, members: list[Member]) -> list[Any]:
        return [m.metrics() for m in members]

    def drop(self) -> None:
        if not drop_page_cache():
            self.notes.append("drop_caches not permitted: page cache kept between epochs")

    def epoch_split(self, epoch: int, parts: int) -> list[list[list[Any]]]:
        """A fresh permutation of the small set per epoch, dealt round-robin to ``parts`` readers."""
        files = self.files("small")
        random.Random(f"{self.opts.seed}:{epoch}").shuffle(files)
        return [files[i::parts] for i in range(parts)]

    def measured_read(self, members: list[Member], jobs: list[tuple[Member, list[list[Any]]]], threads: int,
                      **extra: Any) -> dict[str, Any]:  # fmt: skip
        """Readers + the source traffic they caused (metrics of ``members``, bridge wire bytes)."""
        assert self.net is not None
        self.drop()
        m0, w0 = self.snap(members), self.net.source_wire_bytes()
        res = self.read(jobs, threads, **extra)
        m1, w1 = self.snap(members), self.net.source_wire_bytes()
        src = sum(total(b, SRC) - total(a, SRC) for a, b in zip(m0, m1, strict=True))
        nbytes = sum(r["bytes"] for r in res)
        return {
            "results": res, "before": m0, "after": m1, "source_bytes": src, "wire_bytes": w1 - w0, "bytes": nbytes,
            "errors": sum(r["errors"] for r in res), "samples": [s for r in res for s in r["error_samples"]],
            "seconds": max((r["seconds"] for r in res), default=0.0),
        }  # fmt: skip

    # ------------------------------------------------------------------ phases

    def phase_large(self, run: int, clustered: bool) -> None:
        phase = "shared" if clustered else "independent"
        o = self.opts
        cache = CacheSpec(o.large_cache_size, o.large_memory_size, extra=o.fluidfs_args)
        with ExitStack() as stack:
            members = [self.member(i, "mount", cache, clustered) for i in (1, 2, 3)]
            if clustered:
                write_peers(self.workdir / "peers", [m.slot for m in members])
            self.start(members, stack)
            files = self.files("large")
            r = self.measured_read(members, [(m, files) for m in members], threads=1)
        size = ds.total_bytes(self.plans["large"])
        self.rec(run, phase, "source bytes / set bytes", r["source_bytes"] / size, "x")
        self.rec(run, phase, "wire bytes / set bytes", r["wire_bytes"] / size, "x")
        self.rec(run, phase, "aggregate throughput", r["bytes"] / r["seconds"] / 1e6, "MB/s")
        self.rec(run, phase, "read errors", float(r["errors"]), "", samples=r["samples"])

    def phase_single(self, run: int) -> None:
        o = self.opts
        with ExitStack() as stack:
            m = self.member(
                1, "mount", CacheSpec(o.quota, o.memory_size, eviction="none", extra=o.fluidfs_args), clustered=False
            )
            self.start([m], stack)
            for epoch in (1, 2):
                r = self.measured_read([m], [(m, self.epoch_split(epoch, 1)[0])], threads=o.threads)
                self.rec(run, "single", f"epoch-{epoch} hit ratio", 1.0 - r["source_bytes"] / max(1, r["bytes"]))
                self.rec(run, "single", f"epoch-{epoch} read errors", float(r["errors"]), samples=r["samples"])

    def phase_cluster(self, run: int) -> None:
        """``epochs``, then ``join`` and ``kill`` on the same members (each only if selected)."""
        o = self.opts
        cache = CacheSpec(o.quota, o.memory_size, extra=o.fluidfs_args)
        with ExitStack() as stack:
            mounts = [self.member(i, "mount", cache, clustered=True) for i in (1, 2, 3)]
            write_peers(self.workdir / "peers", [m.slot for m in mounts])
            self.start(mounts, stack)
            for epoch in (1, 2):
                split = self.epoch_split(epoch, 3)
                r = self.measured_read(mounts, list(zip(mounts, split, strict=True)), threads=o.threads)
                self.rec(run, "epochs", f"epoch-{epoch} hit ratio", 1.0 - r["source_bytes"] / max(1, r["bytes"]))
                self.rec(run, "epochs", f"epoch-{epoch} read errors", float(r["errors"]), samples=r["samples"])
                self.rec(run, "epochs", f"epoch-{epoch} aggregate throughput", r["bytes"] / r["seconds"] / 1e6, "MB/s")
            if "join" not in o.phases and "kill" not in o.phases:
                return
            worker = self.member(4, "worker", cache, clustered=True)
            self.start([worker], stack)
            everyone = [*mounts, worker]
            write_peers(self.workdir / "peers", [m.slot for m in everyone])
            self.wait_members(everyone, 4)
            split = self.epoch_split(3, 3)
            r = self.measured_read(everyone, list(zip(mounts, split, strict=True)), threads=o.threads)
            self.report_join(run, r, everyone)
            if "kill" in o.phases:
                self.phase_kill(run, mounts, worker)

    def wait_members(self, members: list[Member], n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            counts = [total(m.metrics(), "fluidfs_peer_members") for m in members]
            if all(c == n for c in counts):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"membership did not converge to {n} members in {timeout:.0f}s: {counts}")
            time.sleep(0.2)

    def report_join(self, run: int, r: dict[str, Any], everyone: list[Member]) -> None:
        w0, w1 = r["before"][-1], r["after"][-1]
        share = total(w1, "fluidfs_peer_ownership_share_ratio")
        from_peers = total(w1, "fluidfs_peer_bytes_total", side="client", op="get") - total(
            w0, "fluidfs_peer_bytes_total", side="client", op="get"
        )
        w_src = total(w1, SRC) - total(w0, SRC)
        moved = from_peers + w_src
        held = total(w1, "fluidfs_cache_used_bytes", tier="ssd")
        size = ds.total_bytes(self.plans["small"])
        moved_own, to_new = self.ownership_moved([m.name for m in everyone[:-1]], [m.name for m in everyone])
        self.rec(run, "join", "new member's ownership share", share)
        self.rec(run, "join", "set bytes whose owner changed / set bytes", moved_own / size)
        self.rec(run, "join", "... of which to the new member", to_new / max(1, moved_own))
        self.rec(run, "join", "bytes the new member took over / set bytes", moved / size)
        self.rec(run, "join", "new member's SSD bytes / set bytes", held / size)
        self.rec(run, "join", "source bytes / moved bytes", r["source_bytes"] / max(1.0, moved))
        self.rec(run, "join", "epoch-3 hit ratio", 1.0 - r["source_bytes"] / max(1, r["bytes"]))
        self.rec(run, "join", "epoch-3 read errors", float(r["errors"]), samples=r["samples"])
        for m, s in zip(everyone, r["after"], strict=True):
            self.rec(run, "join", f"{m.name} ownership share", total(s, "fluidfs_peer_ownership_share_ratio"))

    def ownership_moved(self, before: list[str], after: list[str]) -> tuple[int, int]:
        """(bytes of the small set whose owner differs between the two member sets, of those: now the last member's).

        Computed with fluidfs's own rendezvous hashing over the set's real block keys (URL, ETag,
        block size, index), all members weighing 1 as in the peers file.
        """
        assert self.store is not None
        etags: dict[str, str] = {}
        pages = self.store.direct_client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="small/")
        for page in pages:
            for obj in page.get("Contents", []):
                etags[obj["Key"]] = normalize_etag(obj["ETag"])
        old = Ring([_Weighted(i, 1.0) for i in before])
        new = Ring([_Weighted(i, 1.0) for i in after])
        moved = to_last = 0
        for e in self.plans["small"]:
            for index in range(max(1, math.ceil(e.size / BLOCK_SIZE))):
                key = BlockKey(f"s3://{BUCKET}/{e.key}", etags[e.key], BLOCK_SIZE, index)
                nbytes = min(BLOCK_SIZE, e.size - index * BLOCK_SIZE)
                if old.owner(key) != (now := new.owner(key)):
                    moved += nbytes
                    to_last += nbytes if now == after[-1] else 0
        return moved, to_last

    def phase_kill(self, run: int, mounts: list[Member], victim: Member) -> None:
        o = self.opts
        split = self.epoch_split(4, 3)
        killed: dict[str, float] = {}
        while not self.started.empty():
            self.started.get_nowait()

        def killer() -> None:
            start_at = self.started.get(timeout=300)  # when the readers start
            time.sleep(max(0.0, start_at + o.kill_at - time.time()))
            killed["t"] = time.time()
            victim.kill9()

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        r = self.measured_read(mounts, list(zip(mounts, split, strict=True)), threads=o.threads,
                               duration=o.kill_duration, shuffle_seed=run)  # fmt: skip
        t.join()
        stats = kill_stats(r["results"], killed.get("t", 0.0))
        self.series.append({"run": run, **stats})
        self.rec(run, "kill", "read errors", float(r["errors"]), samples=r["samples"])
        self.rec(run, "kill", "throughput before kill", stats["before_mbps"], "MB/s")
        self.rec(run, "kill", "lowest 1-s throughput after kill", stats["min_after_mbps"], "MB/s")
        self.rec(run, "kill", "throughput from kill+5 s to end", stats["late_mbps"], "MB/s")
        self.rec(run, "kill", "seconds to >= 80% after kill", stats["recovery_s"], "s")
        self.rec(run, "kill", "source bytes / bytes read", r["source_bytes"] / max(1, r["bytes"]), "x")

    # ------------------------------------------------------------------ driver

    def run(self) -> dict[str, Any]:
        o = self.opts
        t_start = time.time()
        with ExitStack() as stack:
            stack.callback(self.janitor.sweep)
            self.net = ClusterNet(4, o.member_mbit, o.source_mbit)
            stack.callback(self.net.close)
            self.net.open()
            (self.workdir / "secret").write_text(SECRET)
            (self.workdir / "secret").chmod(0o600)
            self.log(f"network {self.net.bridge}: source {o.source_mbit:g} Mbit/s, members {o.member_mbit:g} Mbit/s")
            self.store = start_store(self.workdir, self.net, o.latency_ms, stack, self.janitor)
            spec = o.spec()
            self.log(f"generating datasets: {spec}")
            self.plans = ds.generate(
                spec, ["large", "small"], self.store.direct_client(), BUCKET, self.workdir / "local"
            )
            for run in range(1, o.runs + 1):
                for phase, fn in (
                    ("independent", lambda r: self.phase_large(r, False)),
                    ("shared", lambda r: self.phase_large(r, True)),
                    ("single", self.phase_single),
                    ("epochs", self.phase_cluster),
                ):
                    wanted = phase in o.phases or (phase == "epochs" and ({"join", "kill"} & set(o.phases)))
                    if not wanted:
                        continue
                    self.log(f"run {run}: phase {phase}")
                    try:
                        fn(run)
                    except Exception as exc:
                        self.errors.append(f"run {run} {phase}: {type(exc).__name__}: {exc}")
                        self.log(f"run {run} {phase} FAILED: {exc}")
        return {
            "meta": {
                "options": asdict(o), "spec": asdict(o.spec()), "seconds": time.time() - t_start,
                "machine": machine(), "shaping": self.store.shaping if self.store else "",
                "net_tag": self.net.tag if self.net else None,
                "large_set_bytes": ds.total_bytes(self.plans.get("large", [])),
                "small_set_bytes": ds.total_bytes(self.plans.get("small", [])),
            },
            "records": self.records, "series": self.series, "errors": self.errors, "notes": sorted(set(self.notes)),
        }  # fmt: skip


def kill_stats(results: list[dict[str, Any]], t_kill: float, window: float = 1.0) -> dict[str, Any]:
    """Aggregate the readers' series (bytes per tick, aligned by wall-clock start) around the kill."""
    tick = float(results[0]["tick"]) if results else 0.25
    t0 = min((r["t0"] for r in results), default=0.0)
    n = max((int(round((r["t0"] - t0) / tick)) + len(r["series"]) for r in results), default=0)
    agg = [0.0] * n
    for r in results:
        off = int(round((r["t0"] - t0) / tick))
        for i, b in enumerate(r["series"]):
            agg[off + i] += b
    k = int((t_kill - t0) / tick) if t_kill else n
    w = max(1, int(round(window / tick)))
    mbps = [b / tick / 1e6 for b in agg]
    rolling = [sum(mbps[i : i + w]) / w for i in range(max(0, n - w + 1))]
    warm = int(1.0 / tick)  # skip the first second (ramp-up)
    before = statistics.fmean(mbps[warm:k]) if k > warm else float("nan")
    after = rolling[k:] if k < len(rolling) else []
    recovery: float | None = None
    for i, v in enumerate(after):
        if v >= 0.8 * before:
            recovery = i * tick
            break
    late_from = k + int(5.0 / tick)
    late = statistics.fmean(mbps[late_from:]) if late_from < n else float("nan")
    return {
        "tick": tick, "kill_index": k, "mbps": [round(x, 3) for x in mbps], "before_mbps": before,
        "min_after_mbps": min(after) if after else float("nan"), "late_mbps": late, "recovery_s": recovery,
    }  # fmt: skip


def medians(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (phase, metric): median over runs and every run's value, in first-seen order."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        row = rows.setdefault((r["phase"], r["metric"]), {"phase": r["phase"], "metric": r["metric"],
                                                          "unit": r["unit"], "values": []})  # fmt: skip
        row["values"].append(r["value"])
    for row in rows.values():
        vals = [v for v in row["values"] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        row["median"] = statistics.median(vals) if vals else None
    return list(rows.values())
