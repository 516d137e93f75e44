"""The cluster of a scheduling run: a capped object store with the scenario's datasets, and fluidfs members on loopback.

:class:`SchedRig` starts SeaweedFS behind the latency proxy with the source cap applied by ``tc
tbf`` in a network namespace (:func:`tools.bench.store.open_store`, as the autoscaler benchmark's
rig), uploads each dataset of a scenario as ``<dataset>/s-00000.bin ...`` (``samples`` files of
``bytes / samples``, seeded content from :mod:`tools.bench.datasets`), and starts one ``fluidfs
mount`` per member (:class:`tools.bench.clmembers.Member`) on its own loopback address
(127.0.0.11, .12, ...) with ``--cache-size`` = the scenario's ``cacheBytes``, all joined by one
peers file: one cluster cache, as the simulator models it. Every member mounts the whole bucket,
so a dataset is a directory of every mount.

:meth:`SchedRig.census` reads, per member, the bytes of each dataset its SSD directory holds (block
files mapped to datasets by their digests, from the objects' ETags); :meth:`SchedRig.trainer`
starts an emulated trainer (:mod:`tools.bench.trainer`) on a member's mount.

Caveats: needs root (FUSE, network namespaces, tc). Members talk over loopback, unshaped (the
scenario's ``nicBandwidth`` is then the daemons' CPU); blocks still only in a member's memory tier
are not counted by the census.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluidfs.cache.base import BlockKey
from fluidfs.cache.ssdlayout import scan_directory
from fluidfs.config.mount import DEFAULT_BLOCK_SIZE
from fluidfs.util.etag import normalize_etag
from tools.bench import datasets
from tools.bench.clmembers import SECRET, CacheSpec, Member, total, write_peers
from tools.bench.netlab import Slot
from tools.bench.store import BUCKET, Store, make_client, open_store
from tools.bench.systems import Janitor
from tools.bench.trainer import TrainerProcess, TrainerSpec

log = logging.getLogger(__name__)

__all__ = ["DataSet", "RigParams", "SchedRig", "LoopbackSlot"]


@dataclass(frozen=True)
class LoopbackSlot(Slot):
    """A member's place on loopback: its own 127.0.0.x address, no network namespace."""

    def prefix(self) -> list[str]:
        return []


@dataclass(frozen=True)
class DataSet:
    name: str
    samples: int
    sample_bytes: int

    def keys(self) -> list[str]:
        return [f"{self.name}/s-{i:05d}.bin" for i in range(self.samples)]


@dataclass(frozen=True)
class RigParams:
    """The real run's knobs the simulator does not see (the scenario's ``rig`` section)."""

    latency_ms: float = 2.0
    memory_bytes: int = 8 << 20
    readers: int = 4
    batch_size: int = 4
    prefetch_batches: int = 2
    nice: int = 0


class SchedRig:
    """Store + datasets + members of one run; use as a context manager (``close()`` stops everything)."""

    def __init__(
        self,
        workdir: Path,
        members: list[str],
        cache_bytes: int,
        source_bandwidth: float,
        sets: list[DataSet],
        params: RigParams,
        progress: Callable[[str], None] = print,
    ) -> None:
        self.workdir, self.names, self.cache_bytes = workdir, members, cache_bytes
        self.source_bandwidth, self.sets, self.params, self.progress = source_bandwidth, sets, params, progress
        self.janitor = Janitor(workdir)
        self.store: Store | None = None
        self.members: dict[str, Member] = {}
        self.digests: dict[str, str] = {}  # block digest -> dataset
        self.env: dict[str, str] = {}

    def __enter__(self) -> SchedRig:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        mbit = self.source_bandwidth * 8 / 1e6
        self.progress(f"store: SeaweedFS + proxy ({self.params.latency_ms:g} ms), source cap {mbit:g} Mbit/s (tc)")
        self.store = open_store(self.workdir, self.params.latency_ms, mbit, self.janitor.add_pid, "tc")
        self._upload()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(self.store.env())
        slots: list[Slot] = [LoopbackSlot(i + 1, "", "", "", f"127.0.0.{11 + i}") for i in range(len(self.names))]
        peers, secret = self.workdir / "peers", self.workdir / "secret"
        write_peers(peers, slots)
        secret.write_text(SECRET)
        secret.chmod(0o600)
        cache = CacheSpec(cache_size=self.cache_bytes, memory_size=self.params.memory_bytes)
        for name, slot in zip(self.names, slots, strict=True):
            self.members[name] = Member(
                slot, "mount", self.workdir / "members", self.store, self.janitor, cache,
                clustered=True, peers_file=peers, secret_file=secret,
            )  # fmt: skip
            self.members[name].launch()
        for m in self.members.values():
            m.wait_ready(120)
        self.progress(f"members: {', '.join(f'{n} at {m.mnt}' for n, m in self.members.items())}")

    def _upload(self) -> None:
        assert self.store is not None
        client = self.store.direct_client()
        spec = datasets.DataSpec(seed=4242)

        def put(key: str, size: int) -> None:
            client.put_object(Bucket=BUCKET, Key=key, Body=datasets.content(spec, datasets.FileEntry(key, size)))

        with cf.ThreadPoolExecutor(8) as pool:
            for fut in [pool.submit(put, k, s.sample_bytes) for s in self.sets for k in s.keys()]:
                fut.result()
        by_key = {k: s.name for s in self.sets for k in s.keys()}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for obj in page.get("Contents", []):
                name = by_key.get(obj["Key"])
                if name is None:
                    continue
                blocks = max(1, math.ceil(int(obj["Size"]) / DEFAULT_BLOCK_SIZE))
                for index in range(blocks):
                    key = BlockKey(
                        f"s3://{BUCKET}/{obj['Key']}", normalize_etag(obj["ETag"]), DEFAULT_BLOCK_SIZE, index
                    )
                    self.digests[key.digest] = name
        total = sum(s.samples * s.sample_bytes for s in self.sets)
        self.progress(f"datasets: {', '.join(s.name for s in self.sets)} uploaded ({total / 2**20:.0f} MiB)")

    def census(self) -> dict[str, dict[str, int]]:
        """Per member, bytes of each dataset on its SSD (datasets it holds nothing of are left out)."""
        out: dict[str, dict[str, int]] = {}
        for name, m in self.members.items():
            held: dict[str, int] = {}
            for b in scan_directory(str(m.cache_dir)).blocks:
                ds = self.digests.get(b.digest)
                if ds is not None:
                    held[ds] = held.get(ds, 0) + b.size
            out[name] = held
        return out

    def used(self) -> dict[str, int]:
        """Per member, bytes of every block on its SSD."""
        return {n: sum(b.size for b in scan_directory(str(m.cache_dir)).blocks) for n, m in self.members.items()}

    def trainer(self, job: str, member: str, dataset: str, epochs: int, compute_per_sample: float) -> TrainerProcess:
        """Start job's emulated trainer reading ``dataset`` through ``member``'s mount."""
        p = self.params
        spec = TrainerSpec(
            root=str(self.members[member].mnt / dataset), epochs=epochs, batch_size=p.batch_size,
            compute_s=p.batch_size * compute_per_sample, readers=p.readers, prefetch=p.prefetch_batches,
            read_size=1 << 20, seed=sum(job.encode()), report_interval=1.0,
        )  # fmt: skip
        jobdir = self.workdir / "jobs" / job
        jobdir.mkdir(parents=True, exist_ok=True)
        tp = TrainerProcess(spec, jobdir / "trainer.jsonl", env=self.env, nice=p.nice).start()
        self.janitor.add_pid(tp.pid or 0)
        return tp

    def probe_source(self, seconds: float = 3.0) -> float:
        """Bytes/s of one GET of ``seconds`` worth of data at the cap, through the capped proxy (before any job)."""
        assert self.store is not None
        size = int(self.source_bandwidth * seconds)
        key = "probe/blob.bin"
        self.store.direct_client().put_object(Bucket=BUCKET, Key=key, Body=os.urandom(size))
        client = make_client(self.store.endpoint, self.store.access_key, self.store.secret_key)
        t = time.monotonic()
        got = len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        return got / (time.monotonic() - t)

    def source_bytes(self) -> float:
        """Bytes all members read from the store so far (their ``fluidfs_source_bytes_total``)."""
        return sum(total(m.metrics(), "fluidfs_source_bytes_total") for m in self.members.values())

    def close(self) -> None:
        for m in self.members.values():
            try:
                m.stop()
            except Exception:  # keep stopping the others
                log.exception("stopping member %s", m.name)
        self.janitor.sweep()
        if self.store is not None:
            self.store.close()
            self.store = None


def describe(rig: SchedRig) -> dict[str, Any]:
    """What the run's document records about the rig."""
    assert rig.store is not None
    return {"shaping": rig.store.shaping, "latencyMs": rig.params.latency_ms, "memoryBytes": rig.params.memory_bytes}
