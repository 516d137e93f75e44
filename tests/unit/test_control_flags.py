"""fluidfs-controller's scheduling flags: what they turn into, and the combinations it refuses."""

from __future__ import annotations

import pytest

from fluidfs.control.main import build_parser, scheduling_config
from fluidfs.control.objects import WorkerConfig
from fluidfs.control.sched.ordering import BasePolicy, SourceModel
from fluidfs.control.scheduling import SchedulingConfig
from fluidfs.errors import ControlError


def config(*argv: str) -> SchedulingConfig:
    return scheduling_config(build_parser().parse_args(list(argv)), WorkerConfig())


def test_queue_flags_become_the_ordering() -> None:
    cfg = config("--queue", "train", "--queue-policy", "sjf", "--queue-window", "32", "--queue-prefer-local",
                 "--queue-source-bandwidth", "4G", "--queue-gpu-rate", "250M/s", "--queue-stagger")  # fmt: skip
    assert cfg.queues is not None
    o = cfg.queues.ordering
    assert o.base is BasePolicy.SJF and o.window == 32 and o.local and o.stagger
    assert o.source == SourceModel(4e9, 250e6)


def test_source_aware_ordering_is_off_by_default() -> None:
    cfg = config("--queue", "train")
    assert cfg.queues is not None
    assert cfg.queues.ordering.source is None and not cfg.queues.ordering.stagger


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--queue-source-bandwidth", "4G"], "go together"),
        (["--queue-gpu-rate", "250M"], "go together"),
        (["--queue-stagger"], "--queue-stagger needs"),
        (["--queue-window", "0"], r"--queue-\*: window must be >= 1"),
    ],
)
def test_bad_combinations_are_refused_with_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ControlError, match=message) as err:
        config("--queue", "q", *argv)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("rate", ["0", "-1G", "fast"])
def test_a_rate_must_be_a_positive_size(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--queue", "q", "--queue-source-bandwidth", rate, "--queue-gpu-rate", "1M"])
    assert exit_.value.code == 2
    assert "--queue-source-bandwidth" in capsys.readouterr().err
