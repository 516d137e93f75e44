"""One cluster-benchmark reader, run as a child process: ``python -m tools.bench.clreader`` (JSON on stdin).

A reader stands for the training process on one member: it reads files through that member's
mount with ``threads`` threads and compares every byte with the local mirror of the dataset.
Arguments (one JSON object)::

    {"root": MNT, "mirror": DIR, "files": [[key, size], ...], "threads": 8, "block": 1048576,
     "duration": null | seconds, "shuffle_seed": null | int, "start_at": null | unix time}

Without ``duration`` the files are read once, in the given order; with it the list is read over
and over (reshuffled with ``shuffle_seed + pass``) until ``duration`` seconds have passed.
``start_at`` lets several readers on several members start together.  After each file the
reader drops that file's pages from the kernel page cache (``posix_fadvise DONTNEED``), so
every read reaches the member, never the reader's own page cache.

Result (one JSON line on stdout): ``bytes``, ``files``, ``seconds``, ``t0`` (unix time of the
start), ``errors`` (count) and ``error_samples`` (first five), ``series`` (bytes completed per
``tick`` seconds, for the throughput time series).

Caveats: a file counts in the time series when a 1 MiB read of it completes, so the series
resolution is one read, not one byte.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from typing import Any

MiB = 1 << 20


def run(args: dict[str, Any]) -> dict[str, Any]:
    root, mirror = str(args["root"]), str(args["mirror"])
    files: list[tuple[str, int]] = [(str(k), int(s)) for k, s in args["files"]]
    threads = max(1, int(args.get("threads", 8)))
    block = int(args.get("block", MiB))
    duration = args.get("duration")
    tick = float(args.get("tick", 0.25))
    seed = args.get("shuffle_seed")
    start_at = args.get("start_at")
    if start_at is not None:
        time.sleep(max(0.0, float(start_at) - time.time()))
    lock = threading.Lock()
    state = {"next": 0, "pass": 0, "bytes": 0, "files": 0, "errors": 0}
    samples: list[str] = []
    series: list[int] = []
    order = list(files)
    t0 = time.monotonic()
    wall0 = time.time()

    def account(n: int) -> None:
        slot = int((time.monotonic() - t0) / tick)
        with lock:
            state["bytes"] += n
            while len(series) <= slot:
                series.append(0)
            series[slot] += n

    def take() -> tuple[str, int] | None:
        nonlocal order
        with lock:
            if duration is not None and time.monotonic() - t0 >= float(duration):
                return None
            if state["next"] >= len(order):
                if duration is None or not files:
                    return None
                state["pass"] += 1
                order = list(files)
                random.Random(int(seed or 0) + state["pass"]).shuffle(order)
                state["next"] = 0
            item = order[state["next"]]
            state["next"] += 1
            return item

    def fail(key: str, what: str) -> None:
        with lock:
            state["errors"] += 1
            if len(samples) < 5:
                samples.append(f"{key}: {what}")

    def worker() -> None:
        buf = bytearray(block)
        view = memoryview(buf)
        while (item := take()) is not None:
            key, size = item
            try:
                with (
                    open(os.path.join(mirror, key), "rb") as ref,
                    open(os.path.join(root, key), "rb", buffering=0) as f,
                ):
                    got = 0
                    while True:
                        n = f.readinto(buf)
                        if not n:
                            break
                        if ref.read(n) != view[:n]:
                            fail(key, f"bytes differ in [{got}, {got + n})")
                            break
                        got += n
                        account(n)
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                if got != size:
                    fail(key, f"read {got} bytes, expected {size}")
                else:
                    with lock:
                        state["files"] += 1
            except OSError as exc:
                fail(key, f"{type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {
        "bytes": state["bytes"],
        "files": state["files"],
        "passes": state["pass"] + 1,
        "seconds": time.monotonic() - t0,
        "t0": wall0,
        "tick": tick,
        "errors": state["errors"],
        "error_samples": samples,
        "series": series,
    }


def main() -> None:
    result = run(json.loads(sys.stdin.read()))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
