"""Calibration: the simulator's predicted completion time of each job of a real run vs the measured one.

Input: a scenario file (``scenario``: JSON or YAML) describing the run — the same file the real
run took its jobs from — whose jobs also carry what was measured: ``ended`` (and ``arrival``),
optionally ``started`` and ``node`` (where the job ran). One policy (``policy`` or the first of
``policies``) is the one the real run used. With ``replay`` (the default) the simulator places
each job on the member it ran on, so that the data model is what is compared, not the
scheduler's choices (a job the queue admits while the simulated member is still busy waits
for it).

Output: per job the measured and predicted JCT (``ended - arrival``) and the error
``(predicted - measured) / measured``, plus the mean and largest absolute error.

Caveats: the model has no per-request latency and no page cache; a run whose jobs are limited
by something else (CPU of the emulated trainers, FUSE overhead) will show it as error. Jobs
without ``ended`` are simulated (they compete for the cluster) but not compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tools.sim import scenario as sc
from tools.sim.engine import simulate

#: the older name of the error, for callers of this module
CalibrationError = sc.ScenarioError


@dataclass(frozen=True)
class Measured:
    name: str
    measured: float
    predicted: float

    @property
    def error(self) -> float:
        return (self.predicted - self.measured) / self.measured if self.measured > 0 else 0.0


def compare(scenario: sc.Scenario, replay: bool = True) -> list[Measured]:
    """Simulate ``scenario`` under its first policy; measured vs predicted JCT per measured job."""
    if not scenario.measured:
        raise sc.ScenarioError("jobs: no job gives 'ended' (nothing measured to compare with)")
    placements = scenario.placements if replay else None
    result = simulate(scenario.trace, scenario.cluster, scenario.policies[0], placements=placements)
    return [Measured(r.name, scenario.measured[r.name], r.jct) for r in result.jobs if r.name in scenario.measured]


def calibrate(path: Path, replay: bool = True) -> list[Measured]:
    return compare(sc.load(path), replay)


def table(rows: list[Measured]) -> str:
    lines = ["| job | measured JCT (s) | predicted JCT (s) | error |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {m.name} | {m.measured:.1f} | {m.predicted:.1f} | {m.error * 100:+.1f} % |" for m in rows]
    if rows:
        errs = [abs(m.error) for m in rows]
        lines.append("")
        lines.append(f"mean |error| {sum(errs) / len(errs) * 100:.1f} %, largest {max(errs) * 100:.1f} %")
    return "\n".join(lines)
