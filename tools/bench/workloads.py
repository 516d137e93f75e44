"""The benchmark workloads, each run in a child process: ``python -m tools.bench.workloads ARGS``.

``ARGS`` is one JSON object: ``{"workload": ..., "backend": ..., ...}``; the child prints one
JSON result line on stdout.  Running every measurement in its own process keeps the readers
apart from the harness and from every FUSE server, lets the harness kill a measurement that
overruns, and gives boto3-direct a clean ``ru_maxrss``.

Backends: ``{"kind": "path", "root": DIR}`` (a mount point or the local mirror) or
``{"kind": "s3", "endpoint", "bucket", "access_key", "secret_key"}`` (direct boto3: the
network limit, parallel range GETs, no FUSE).

Workloads:

- ``seq``: read each large file front to back with 1 MiB reads (boto3: 8 parallel 8 MiB range
  GETs per file) → MB/s;
- ``rand``: ``ops`` reads of 4 KiB-1 MiB (log-uniform) at seeded random offsets over the large
  files, ``threads`` at a time → ops/s and MB/s;
- ``find`` / ``walk``: ``find DIR -type f`` / ``os.walk`` + ``stat`` of every file
  (boto3: a paginated ListObjectsV2 of the prefix) → seconds;
- ``loader``: a plain ``torch.utils.data.Dataset`` that opens each file by path
  (boto3: GetObject by key), ``DataLoader(shuffle=True, num_workers=W)`` for E epochs →
  samples/s per epoch.

Throughput workloads stop at ``budget`` seconds and report what they did (``partial: true``).
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fluidfs.util.proc import drop_page_cache

MiB = 1 << 20


def _client(b: dict[str, Any], pool: int = 32) -> Any:
    from tools.bench.store import make_client

    return make_client(b["endpoint"], b["access_key"], b["secret_key"], pool=pool)


# ---------------------------------------------------------------------------- sequential


def seq(args: dict[str, Any]) -> dict[str, Any]:
    b, files, budget = args["backend"], args["files"], float(args.get("budget", 1e9))
    block = int(args.get("block", MiB))
    total = 0
    partial = False
    t0 = time.perf_counter()
    if b["kind"] == "path":
        buf = bytearray(block)
        for key, _size in files:
            with open(os.path.join(b["root"], key), "rb", buffering=0) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    total += n
                    if time.perf_counter() - t0 > budget:
                        partial = True
                        break
            if partial:
                break
    else:
        s3 = _client(b)
        biggest = max((size for _k, size in files), default=MiB)
        part = max(MiB, min(8 * MiB, biggest // 8))
        with ThreadPoolExecutor(8) as pool:
            for key, size in files:

                def get(off: int, key: str = key, size: int = size) -> int:
                    end = min(size, off + part) - 1
                    r = s3.get_object(Bucket=b["bucket"], Key=key, Range=f"bytes={off}-{end}")
                    return len(r["Body"].read())

                total += sum(pool.map(get, range(0, size, part)))
                if time.perf_counter() - t0 > budget:
                    partial = True
                    break
    dt = time.perf_counter() - t0
    return {"MB/s": total / dt / 1e6, "bytes": total, "seconds": dt, "partial": partial}


# ---------------------------------------------------------------------------- random


def rand_ops(files: list[list[Any]], ops: int, seed: int) -> list[tuple[str, int, int]]:
    """The seeded op list: (key, offset, length), lengths log-uniform in 4 KiB..1 MiB."""
    rng = random.Random(seed)
    out = []
    for _ in range(ops):
        key, size = files[rng.randrange(len(files))]
        length = min(size, int(math.exp(rng.uniform(math.log(4096), math.log(MiB)))))
        out.append((key, rng.randrange(0, max(1, size - length + 1)), length))
    return out


def rand(args: dict[str, Any]) -> dict[str, Any]:
    b, budget = args["backend"], float(args.get("budget", 1e9))
    plan = rand_ops(args["files"], int(args.get("ops", 500)), int(args.get("seed", 7)))
    threads = int(args.get("threads", 4))
    done = {"ops": 0, "bytes": 0}
    lock = threading.Lock()
    t0 = time.perf_counter()
    s3 = _client(b, pool=threads) if b["kind"] == "s3" else None

    def one(op: tuple[str, int, int]) -> None:
        if time.perf_counter() - t0 > budget:
            return
        key, off, length = op
        if s3 is not None:
            r = s3.get_object(Bucket=b["bucket"], Key=key, Range=f"bytes={off}-{off + length - 1}")
            n = len(r["Body"].read())
        else:
            fd = os.open(os.path.join(b["root"], key), os.O_RDONLY)
            try:
                n = len(os.pread(fd, length, off))
            finally:
                os.close(fd)
        with lock:
            done["ops"] += 1
            done["bytes"] += n

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, plan))
    dt = time.perf_counter() - t0
    return {
        "ops/s": done["ops"] / dt,
        "MB/s": done["bytes"] / dt / 1e6,
        "ops": done["ops"],
        "seconds": dt,
        "partial": done["ops"] < len(plan),
    }


# ---------------------------------------------------------------------------- metadata


def find(args: dict[str, Any]) -> dict[str, Any]:
    b = args["backend"]
    if b["kind"] == "s3":
        return list_objects(args)
    t0 = time.perf_counter()
    out = subprocess.run(
        ["find", os.path.join(b["root"], args["prefix"]), "-type", "f"],
        check=True,
        stdout=subprocess.PIPE,
    )
    dt = time.perf_counter() - t0
    return {"seconds": dt, "files": out.stdout.count(b"\n")}


def walk(args: dict[str, Any]) -> dict[str, Any]:
    b = args["backend"]
    if b["kind"] == "s3":
        return list_objects(args)
    t0 = time.perf_counter()
    n = size = 0
    for dirpath, _dirs, names in os.walk(os.path.join(b["root"], args["prefix"])):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            n += 1
            size += st.st_size
    dt = time.perf_counter() - t0
    return {"seconds": dt, "files": n, "bytes": size}


def list_objects(args: dict[str, Any]) -> dict[str, Any]:
    b = args["backend"]
    s3 = _client(b, pool=2)
    t0 = time.perf_counter()
    n = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["bucket"], Prefix=args["prefix"] + "/"):
        for obj in page.get("Contents", []):
            n += 1
            size += obj["Size"]
    dt = time.perf_counter() - t0
    return {"seconds": dt, "files": n, "bytes": size}


# ---------------------------------------------------------------------------- PyTorch loader


def loader(args: dict[str, Any]) -> dict[str, Any]:
    try:
        import torch
        from torch.utils.data import DataLoader, Dataset
    except ImportError as exc:
        return {"skipped": f"torch not installed ({exc.name})"}

    b = args["backend"]
    keys = [k for k, _ in args["files"]]
    budget = float(args.get("budget", 1e9))

    class FilesDataset(Dataset):  # type: ignore[misc,type-arg,unused-ignore]  # torch is optional (bench extra)
        """What unmodified training code does: open(path).read() per sample."""

        def __init__(self) -> None:
            self.s3: Any = None

        def __len__(self) -> int:
            return len(keys)

        def __getitem__(self, i: int) -> Any:
            if b["kind"] == "path":
                with open(os.path.join(b["root"], keys[i]), "rb") as f:
                    data = f.read()
            else:
                if self.s3 is None:
                    self.s3 = _client(b, pool=4)
                data = self.s3.get_object(Bucket=b["bucket"], Key=keys[i])["Body"].read()
            label = int(keys[i].split("/")[-2].split("-")[-1]) if "/" in keys[i] else 0
            return torch.tensor(len(data)), label

    torch.manual_seed(int(args.get("seed", 0)))
    dl = DataLoader(
        FilesDataset(),
        batch_size=int(args.get("batch_size", 32)),
        shuffle=True,
        num_workers=int(args.get("workers", 2)),
        persistent_workers=False,
    )
    drop_before = set(args.get("drop_before", []))
    metrics_url = args.get("metrics_url")
    epochs = []
    for e in range(int(args.get("epochs", 3))):
        if e in drop_before:
            _drop_caches()
        m0 = _metrics(metrics_url)
        n = nbytes = 0
        t0 = time.perf_counter()
        partial = False
        for sizes, _labels in dl:
            n += len(sizes)
            nbytes += int(sizes.sum())
            if time.perf_counter() - t0 > budget:
                partial = True
                break
        dt = time.perf_counter() - t0
        epochs.append(
            {
                "samples/s": n / dt,
                "samples": n,
                "bytes": nbytes,
                "seconds": dt,
                "partial": partial,
                "dropped": e in drop_before,
                "metrics_before": m0,
                "metrics_after": _metrics(metrics_url),
            }
        )
    return {"epochs": epochs}


def _drop_caches() -> None:
    drop_page_cache()


def _metrics(url: str | None) -> dict[str, dict[str, float]] | None:
    if not url:
        return None
    import urllib.request

    from tools.bench.systems import parse_prometheus

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return parse_prometheus(r.read().decode())
    except OSError:
        return None


WORKLOADS = {"seq": seq, "rand": rand, "find": find, "walk": walk, "loader": loader}


def _vm_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main() -> None:
    args = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    result = WORKLOADS[args["workload"]](args)
    # ru_maxrss survives execve on Linux (it would report the harness's peak we were forked
    # from), so the peak of this process is VmHWM; ru_maxrss of the children covers workers.
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["ru_maxrss_children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["vm_hwm_kib"] = _vm_hwm_kib()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
