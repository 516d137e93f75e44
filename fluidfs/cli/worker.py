"""``fluidfs worker SOURCE --cache-dir DIR --listen HOST:PORT --peers FILE|--kube-service NS/NAME``: a cache member.

The worker holds cache capacity for the dataset's cluster and serves its peers; it mounts
nothing (:mod:`fluidfs.daemon.worker`).  SOURCE is what ``fluidfs mount`` takes (a URL, a
directory or a Dataset YAML file), with the same source options and the same cache and cluster
settings; the cluster secret comes from ``--peer-secret-file`` or ``$FLUIDFS_PEER_SECRET``, never
from the command line.  It runs in the foreground (a container's main process) and stops on
SIGTERM after handing its blocks over.  Exit codes as ``mount``: 2 bad configuration (also a bad
peers file or a missing secret), 3 source failure, 1 anything else.

Caveats: the worker module (trio, the cache, the peer server) is imported only when the command
runs, so other commands start quickly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from fluidfs.cli.options import add_setting_options, add_source_options, prepare
from fluidfs.config import GROUPS


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    dataset, cfg = prepare(args)
    for w in dataset.warnings:
        print(f"fluidfs: warning: {w}", file=sys.stderr)
    from fluidfs.daemon.worker import run_worker  # start-up cost: only the worker needs it

    return run_worker(dataset, cfg)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "worker", help="hold cache for a dataset's cluster and serve it to the peers (no mount; foreground)"
    )
    p.add_argument("source", help="s3://bucket/prefix, http(s)://..., file:///dir, or a Dataset YAML file")
    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items() if name != "permissions"}
    add_setting_options(p, "worker", groups=groups)
    add_source_options(groups["sources"])
    groups["process"].add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(handler=run)
