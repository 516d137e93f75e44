"""Fixtures of the CSI tests: the S3 server holding ``TREE``, a work directory that is cleaned of
every mount and daemon, and a plugin starter."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.csi import BUCKET, TREE, Plugin, cleanup


@pytest.fixture(scope="module")
def s3() -> Iterator[object]:
    from tests.support.s3server import S3Server

    with S3Server(kind="moto", auth=True) as srv:
        client = srv.client()
        client.create_bucket(Bucket=BUCKET)
        for k, v in TREE.items():
            client.put_object(Bucket=BUCKET, Key=k, Body=v)
        yield srv


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    cleanup(str(tmp_path))


def plugin_env() -> dict[str, str]:
    """The environment without AWS credentials, so only the CSI secrets can make mounts work."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}


@pytest.fixture
def start_plugin(workdir: Path) -> Iterator[Callable[..., Plugin]]:
    """Start (or restart) the plugin (``--mode all``) on ``workdir``."""
    started: list[Plugin] = []

    def start(*extra: str) -> Plugin:
        p = Plugin(workdir, extra=list(extra), env=plugin_env()).start()
        p.wait_ready()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop(signal.SIGKILL)
