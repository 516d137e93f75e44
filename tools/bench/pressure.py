"""The ``pressure`` workload of the suite: a dataset twice the cache, fluidfs eviction lru vs none.

Called by :class:`tools.bench.suite.Suite` with itself as ``self`` (its store, options,
recorders and child runner).
"""

from __future__ import annotations

from typing import Any

from tools.bench import datasets as ds
from tools.bench.measure import hit_ratios, source_deltas
from tools.bench.systems import Fluidfs

MiB = 1 << 20


class Skip(Exception):
    """A workload cannot run here (its reason is recorded for every system it concerns)."""


def wl_pressure(self: Any, run: int) -> None:
    """The pressure workload: fluidfs with lru vs none eviction, its cache half the small set."""
    assert self.store is not None
    small_total = ds.total_bytes(self.plans["small"])
    cache = max(small_total // 2, 16 * MiB)
    mem = max(8 * MiB, min(32 * MiB, cache // 8))  # fluidfs needs >= 2 blocks (4 MiB default)
    note = (
        f"pressure: small set {small_total / 1e6:.1f} MB, fluidfs SSD cache {cache / 1e6:.1f} MB, "
        f"memory tier {mem / MiB:.0f} MiB"
    )
    if note not in self.notes:
        self.notes.append(note)
    for ev in ("lru", "none"):
        system = Fluidfs(
            self.store,
            self.workdir,
            self.janitor,
            self._sysopts(),
            eviction=ev,
            cache_size=cache,
            memory_size=mem,
            name=f"fluidfs-{ev}",
        )
        try:
            system.setup()
            res = self.child(
                {
                    "workload": "loader",
                    "files": self.files("small"),
                    "epochs": 3,
                    "drop_before": [0, 1, 2],
                    "budget": self.opts.budget,
                    "workers": self.opts.loader_workers,
                    "seed": run * 10,
                    "metrics_url": system.metrics_url(),
                    "backend": system.backend(),
                },
                self.opts.budget * 3 + 120,
            )
            if res.get("skipped"):
                raise Skip(res["skipped"])
            if res.get("timeout"):
                self.rec(system.name, "pressure", "epoch1", "samples/s", None, "samples/s", "higher", run, timeout=True)
            for i, ep in enumerate(res.get("epochs", [])):
                phase = f"epoch{i + 1}"
                self.rec(
                    system.name,
                    "pressure",
                    phase,
                    "samples/s",
                    ep["samples/s"],
                    "samples/s",
                    "higher",
                    run,
                    partial=ep["partial"],
                )
                hr, bhr = hit_ratios(ep.get("metrics_before"), ep.get("metrics_after"), ep["bytes"])
                self.rec(system.name, "pressure", phase, "hit ratio", hr, "", "higher", run)
                self.rec(system.name, "pressure", phase, "byte hit ratio", bhr, "", "higher", run)
                self.rec_source(
                    system, "pressure", phase, run, source_deltas(ep.get("metrics_before"), ep.get("metrics_after"))
                )
            self.note_rss(system.name, "pressure", system.peak_rss_mib())
        except Skip as exc:
            for name in ("fluidfs-lru", "fluidfs-none"):
                self.skipped.setdefault(name, str(exc))
            return
        except Exception as exc:
            self.errors.append(f"{system.name} pressure run {run}: {str(exc)[:400]}")
            self.log(f"ERROR {system.name} pressure: {exc}")
        finally:
            system.teardown()
