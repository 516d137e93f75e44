"""An emulated training job: shuffled epochs of samples read by a DataLoader-like pool, fixed compute per batch.

The trainer reads *samples* (whole files under ``root``, e.g. a fluidfs mount) the way a PyTorch
``DataLoader`` with ``num_workers`` readers does: each epoch shuffles the sample list (seeded),
cuts it into batches of ``batch_size``, and ``readers`` threads each load whole batches
(``os.read`` of ``read_size`` bytes at a time until EOF) while at most ``prefetch`` batches are
in flight ahead of the consumer.  The consumer takes the batches *in order* and "computes" for
``compute_s`` seconds per batch (a sleep: the GPU step).  So the job is compute-bound when the
readers keep up (input rate = ``batch_size`` x mean sample size / ``compute_s``) and I/O-bound
when they do not (the consumer waits; ``wait_s`` grows).

It never talks to fluidfs: the autoscaler sees the job only through the mount's metrics
(``fluidfs_fuse_read_bytes_total``, ``fluidfs_fuse_read_stall_seconds_total``), exactly as it sees
a real job.  For the harness, the trainer writes its own view as JSON lines (``report``):

- ``{"kind": "start", "t": T, "samples": N, "bytes": B, "spec": {...}}`` once;
- ``{"kind": "interval", "t": T, "epoch": E, "samples": n, "bytes": b, "wait_s": w, "seconds": s,
  "samples_per_s": ..., "bytes_per_s": ...}`` every ``report_interval`` seconds (consumed batches
  in that interval; ``wait_s`` = time the consumer waited for data);
- ``{"kind": "epoch", "t": T, "epoch": E, "seconds": s, "samples": n, "bytes": b, "wait_s": w,
  "samples_per_s": ..., "bytes_per_s": ...}`` at the end of each epoch;
- ``{"kind": "end", "t": T, "epochs": E, "seconds": s, "errors": k, "stopped": bool}`` last.

``T`` is ``time.time()`` (wall clock, comparable across processes).

Use it in-process (:class:`Trainer`, :func:`run`) or as a process
(``python -m tools.bench.trainer ROOT --epochs 3 --batch-size 8 --compute 0.25 --readers 4
--report out.jsonl``; :class:`TrainerProcess` starts one and reads its report).  Run it in a
process of its own next to a FUSE daemon (never inside it), as real DataLoader workers are.

Interface for reuse (e.g. several jobs under a scheduling policy): build a :class:`TrainerSpec`,
start :class:`TrainerProcess` (``start()``, ``wait()``, ``stop()``), and read
:func:`read_report` / :func:`summarize` (epochs, rates, wait).

Page cache: by default each sample's pages are dropped once it is read
(``posix_fadvise(POSIX_FADV_DONTNEED)``), so every epoch reads through the filesystem, as it does
when the dataset is much larger than the node's memory; without it a small benchmark dataset
would be served from the kernel's page cache from the second epoch on (fluidfs mounts keep it).

Caveats: a read error of one sample is counted (``errors``) and the sample skipped, as a tolerant
loader would; "compute" is a sleep, so the trainer's CPU use is the readers' only.  Samples are
whole files (no intra-file sample index); threads, not processes, read (``os.read`` releases the
GIL, and decoding is not emulated).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
Report = dict[str, Any]


@dataclass(frozen=True)
class TrainerSpec:
    """What one emulated job reads and how fast it computes."""

    root: str  # directory the samples live under (a mount point)
    files: tuple[str, ...] = ()  # sample paths relative to root; empty: every file under root (sorted walk)
    epochs: int = 3
    batch_size: int = 8  # samples per batch
    compute_s: float = 0.25  # seconds of "compute" per batch
    readers: int = 4  # DataLoader num_workers
    prefetch: int = 8  # batches in flight ahead of the consumer (num_workers x prefetch_factor)
    read_size: int = 1 << 20  # bytes per read() call
    seed: int = 0
    report_interval: float = 1.0
    max_seconds: float | None = None  # stop (as if killed) after this long
    drop_cache: bool = True  # drop each sample from the page cache once read: a dataset larger than the node's RAM

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.readers < 1 or self.prefetch < 1:
            raise ValueError("epochs, batch_size, readers and prefetch must be >= 1")
        if self.compute_s < 0 or self.read_size < 1 or self.report_interval <= 0:
            raise ValueError("compute_s >= 0, read_size >= 1 and report_interval > 0 are required")

    def args(self) -> list[str]:
        """The command-line arguments of ``python -m tools.bench.trainer`` for this spec (without --report)."""
        out = [
            self.root,
            "--epochs", str(self.epochs),
            "--batch-size", str(self.batch_size),
            "--compute", repr(self.compute_s),
            "--readers", str(self.readers),
            "--prefetch", str(self.prefetch),
            "--read-size", str(self.read_size),
            "--seed", str(self.seed),
            "--report-interval", repr(self.report_interval),
        ]  # fmt: skip
        if self.max_seconds is not None:
            out += ["--max-seconds", repr(self.max_seconds)]
        if not self.drop_cache:
            out.append("--keep-page-cache")
        return out


def list_samples(root: str) -> list[str]:
    """Every regular file under ``root``, relative, sorted (the dataset index)."""
    out: list[str] = []
    for d, dirs, names in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(d, root)
        out += [n if rel == "." else os.path.join(rel, n) for n in sorted(names)]
    return out


def read_sample(path: str, read_size: int, drop_cache: bool = False) -> int:
    """Read one file to its end (then drop its pages from the page cache if asked); returns the byte count."""
    fd = os.open(path, os.O_RDONLY)
    try:
        n = 0
        while chunk := os.read(fd, read_size):
            n += len(chunk)
        if drop_cache:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return n
    finally:
        os.close(fd)


@dataclass
class _Counters:
    samples: int = 0
    bytes: int = 0
    wait_s: float = 0.0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Trainer:
    """One job; ``sink`` gets every report (see the module docstring) from the consumer or reporter thread."""

    def __init__(self, spec: TrainerSpec, sink: Callable[[Report], None]) -> None:
        self.spec = spec
        self.sink = sink
        self.stop = threading.Event()
        self._c = _Counters()
        self._epoch = 0

    def _load(self, paths: Sequence[str]) -> tuple[int, int]:
        """A reader's job: one batch.  Returns (bytes, errors)."""
        got = errs = 0
        for p in paths:
            if self.stop.is_set():
                break
            try:
                got += read_sample(p, self.spec.read_size, self.spec.drop_cache)
            except OSError as exc:
                errs += 1
                log.warning("trainer: reading %s failed: %s", p, exc)
        return got, errs

    def _reporter(self) -> None:
        last_t = time.monotonic()
        last = (0, 0, 0.0)
        while not self.stop.wait(self.spec.report_interval):
            now = time.monotonic()
            with self._c.lock:
                cur = (self._c.samples, self._c.bytes, self._c.wait_s)
            secs = now - last_t
            n, b, w = cur[0] - last[0], cur[1] - last[1], cur[2] - last[2]
            self.sink(
                {"kind": "interval", "t": time.time(), "epoch": self._epoch, "samples": n, "bytes": b,
                 "wait_s": round(w, 4), "seconds": round(secs, 4), "samples_per_s": n / secs,
                 "bytes_per_s": b / secs}
            )  # fmt: skip
            last_t, last = now, cur

    def run(self) -> Report:
        """Run every epoch (or until :attr:`stop` / ``max_seconds``); returns the ``end`` report."""
        spec = self.spec
        files = list(spec.files) or list_samples(spec.root)
        if not files:
            raise ValueError(f"no samples under {spec.root}")
        paths = [os.path.join(spec.root, f) for f in files]
        spec_d = {k: v for k, v in asdict(spec).items() if k != "files"}  # the sample list is long
        self.sink({"kind": "start", "t": time.time(), "samples": len(paths), "spec": spec_d})
        t0 = time.monotonic()
        reporter = threading.Thread(target=self._reporter, name="trainer-report", daemon=True)
        reporter.start()
        epochs_done = 0
        try:
            with ThreadPoolExecutor(spec.readers, thread_name_prefix="trainer-reader") as pool:
                for epoch in range(1, spec.epochs + 1):
                    self._epoch = epoch
                    if not self._one_epoch(pool, paths, epoch, t0):
                        break
                    epochs_done = epoch
        finally:
            self.stop.set()
            reporter.join()
        end = {
            "kind": "end", "t": time.time(), "epochs": epochs_done, "seconds": round(time.monotonic() - t0, 3),
            "errors": self._c.errors, "stopped": epochs_done < spec.epochs,
        }  # fmt: skip
        self.sink(end)
        return end

    def _one_epoch(self, pool: ThreadPoolExecutor, paths: list[str], epoch: int, t0: float) -> bool:
        spec = self.spec
        order = list(paths)
        random.Random(f"{spec.seed}:{epoch}").shuffle(order)
        batches = [order[i : i + spec.batch_size] for i in range(0, len(order), spec.batch_size)]
        start = time.monotonic()
        with self._c.lock:
            s0, b0, w0 = self._c.samples, self._c.bytes, self._c.wait_s
        inflight: list[Future[tuple[int, int]]] = []
        nxt = 0
        for i in range(len(batches)):
            while nxt < len(batches) and len(inflight) < spec.prefetch:
                inflight.append(pool.submit(self._load, batches[nxt]))
                nxt += 1
            fut = inflight.pop(0)
            w = time.monotonic()
            got, errs = fut.result()
            waited = time.monotonic() - w
            with self._c.lock:
                self._c.samples += len(batches[i])
                self._c.bytes += got
                self._c.wait_s += waited
                self._c.errors += errs
            if self._deadline(t0) or self.stop.wait(spec.compute_s):
                for f in inflight:
                    f.cancel()
                return False
        secs = time.monotonic() - start
        with self._c.lock:
            n, b, wt = self._c.samples - s0, self._c.bytes - b0, self._c.wait_s - w0
        self.sink(
            {"kind": "epoch", "t": time.time(), "epoch": epoch, "seconds": round(secs, 3), "samples": n, "bytes": b,
             "wait_s": round(wt, 3), "samples_per_s": n / secs, "bytes_per_s": b / secs}
        )  # fmt: skip
        return True

    def _deadline(self, t0: float) -> bool:
        return self.spec.max_seconds is not None and time.monotonic() - t0 >= self.spec.max_seconds


def run(spec: TrainerSpec, report: str | os.PathLike[str] | None = None) -> list[Report]:
    """Run a job in this process; every report is returned (and appended to ``report`` as JSON lines)."""
    out: list[Report] = []
    lock = threading.Lock()
    f = open(report, "a", encoding="utf-8") if report is not None else None

    def sink(r: Report) -> None:
        with lock:
            out.append(r)
            if f is not None:
                f.write(json.dumps(r) + "\n")
                f.flush()

    try:
        Trainer(spec, sink).run()
    finally:
        if f is not None:
            f.close()
    return out


def read_report(path: str | os.PathLike[str]) -> list[Report]:
    """The reports written so far (a partial last line is ignored)."""
    out: list[Report] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    break
    except FileNotFoundError:
        pass
    return out


@dataclass(frozen=True)
class Summary:
    """A job's outcome, from its reports."""

    epochs: tuple[Report, ...]  # the "epoch" reports
    start: float | None  # wall-clock time of the start report
    end: float | None  # of the end report (None: still running or killed)
    errors: int
    finished: bool  # every epoch ran

    def epoch_rates(self) -> list[float]:
        """Bytes per second of each finished epoch."""
        return [float(e["bytes_per_s"]) for e in self.epochs]


def summarize(reports: Sequence[Report]) -> Summary:
    epochs = tuple(r for r in reports if r.get("kind") == "epoch")
    start = next((float(r["t"]) for r in reports if r.get("kind") == "start"), None)
    end_r = next((r for r in reports if r.get("kind") == "end"), None)
    return Summary(
        epochs=epochs,
        start=start,
        end=float(end_r["t"]) if end_r else None,
        errors=int(end_r["errors"]) if end_r else 0,
        finished=end_r is not None and not end_r.get("stopped", True),
    )


class TrainerProcess:
    """``python -m tools.bench.trainer`` as a child process of its own (session), reporting to ``report``."""

    def __init__(
        self,
        spec: TrainerSpec,
        report: str | os.PathLike[str],
        log_file: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        nice: int = 0,
    ) -> None:
        self.spec = spec
        self.report = Path(report)
        self.log_file = Path(log_file) if log_file else self.report.with_suffix(".log")
        self.env = env
        self.nice = nice
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TrainerProcess:
        if self.report.exists():
            self.report.unlink()
        cmd = [sys.executable, "-m", "tools.bench.trainer", *self.spec.args(), "--report", str(self.report)]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        with open(self.log_file, "ab") as lf:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """The exit code; raises ``subprocess.TimeoutExpired`` after ``timeout``."""
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (the trainer stops after the current batch), SIGKILL after ``grace``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def reports(self) -> list[Report]:
        return read_report(self.report)

    def summary(self) -> Summary:
        return summarize(self.reports())


def build_parser() -> argparse.ArgumentParser:
    d = TrainerSpec(root="")
    p = argparse.ArgumentParser(prog="python -m tools.bench.trainer", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="directory the samples are under (a fluidfs mount)")
    p.add_argument("--manifest", help="file of sample paths relative to ROOT, one a line (default: walk ROOT)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--compute", type=float, default=d.compute_s, help="seconds of compute per batch")
    p.add_argument("--readers", type=int, default=d.readers, help="reader threads (DataLoader num_workers)")
    p.add_argument("--prefetch", type=int, default=d.prefetch, help="batches in flight ahead of the consumer")
    p.add_argument("--read-size", type=int, default=d.read_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--report-interval", type=float, default=d.report_interval)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--keep-page-cache", action="store_true",
                   help="leave samples in the page cache (default: drop each once read, as a dataset larger than "
                   "the node's memory would be)")  # fmt: skip
    p.add_argument("--report", help="append JSON-line reports here (default: stdout)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    files: tuple[str, ...] = ()
    try:
        if args.manifest:
            with open(args.manifest, encoding="utf-8") as f:
                files = tuple(line.strip() for line in f if line.strip())
        spec = TrainerSpec(
            root=args.root, files=files, epochs=args.epochs, batch_size=args.batch_size, compute_s=args.compute,
            readers=args.readers, prefetch=args.prefetch, read_size=args.read_size, seed=args.seed,
            report_interval=args.report_interval, max_seconds=args.max_seconds, drop_cache=not args.keep_page_cache,
        )  # fmt: skip
        if not os.path.isdir(spec.root):
            raise ValueError(f"{spec.root}: not a directory")
    except (OSError, ValueError) as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return 2
    out = open(args.report, "a", encoding="utf-8") if args.report else sys.stdout
    lock = threading.Lock()

    def sink(r: Report) -> None:
        with lock:
            out.write(json.dumps(r) + "\n")
            out.flush()

    trainer = Trainer(spec, sink)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        trainer.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        end = trainer.run()
    except ValueError as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
    return 1 if end["errors"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
