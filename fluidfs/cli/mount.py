"""``fluidfs mount SOURCE MOUNTPOINT [options]``: mount a dataset (URL or Dataset YAML file).

Without ``--foreground`` the command re-executes itself as a detached daemon and exits once the
mount answers (:mod:`fluidfs.daemon.spawn`); with it, this process is the daemon
(:func:`fluidfs.daemon.run.run_foreground`).  The mountpoint is checked first (resolved without
touching a mount; refused when anything is mounted there, and when it is not empty unless
``--nonempty``, as s3fs and rclone do).

Caveats: the daemon module (pyfuse3, trio, the cache) is imported only on the foreground path,
so the parent and every other command start quickly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from fluidfs.cache.ssd import admission_problem
from fluidfs.cli.options import add_mount_options, prepare
from fluidfs.daemon.spawn import check_mountpoint, daemon_command, spawn_and_wait
from fluidfs.errors import ConfigError


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    dataset, cfg = prepare(args)
    if args.timeout < cfg.request_timeout + 10:  # a source that does not answer must be reported (exit 3)
        raise ConfigError(
            f"--timeout {args.timeout:g}s must exceed the source request timeout "
            f"({cfg.request_timeout:g}s, --request-timeout) by at least 10s"
        )
    for w in dataset.warnings:
        print(f"fluidfs: warning: {w}", file=sys.stderr)
    problem = (
        admission_problem(cfg.cache_dir, cfg.cache_size, cfg.free_space_floor, cfg.block_size)
        if cfg.cache_dir
        else None
    )
    if problem:
        print(f"fluidfs: warning: {problem}: nothing will be cached on disk", file=sys.stderr)
    if not args.foreground:
        mnt = check_mountpoint(args.mountpoint, nonempty=args.nonempty)
        return spawn_and_wait(daemon_command(argv), mnt, args.log_file, args.timeout)
    from fluidfs.daemon.run import run_foreground  # start-up cost: only the daemon needs it

    return run_foreground(dataset, cfg, args.mountpoint, args.ready_fd, args.pid_file, nonempty=args.nonempty)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("mount", help="mount a dataset (URL or Dataset YAML file)")
    p.add_argument("source", help="s3://bucket/prefix, http(s)://..., file:///dir, or a Dataset YAML file")
    p.add_argument("mountpoint")
    add_mount_options(p)
    p.add_argument(
        "--nonempty", action="store_true", help="mount over a non-empty directory (hides its files while mounted)"
    )
    p.set_defaults(handler=run)
