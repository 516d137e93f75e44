"""``fluidfs load SOURCE|MOUNTPOINT [PATH ...]``: preload a dataset into a cache.

The first argument chooses the way (:mod:`fluidfs.warmup`): a live fluidfs mountpoint (or a path
inside one) is loaded through the mount (:mod:`fluidfs.warmup.mount`); anything else is a SOURCE
(URL, directory or Dataset file, as for ``fluidfs mount``) whose blocks go straight into an SSD
cache directory (:mod:`fluidfs.warmup.source`).  A cache directory held by a running mount is
refused with the mountpoint to load through instead.

Both ways end with ``cached 1234/1234 files, 5.6 GiB/5.6 GiB (100.0%) in 12.3s``.  Exit codes: 0
all requested data is cached; 1 some of it is not (read errors, cache full or too small, mount
problem); 2 usage or Dataset error; 3 a source cannot be opened; 130 interrupted.

Caveats: the loader engine (trio) is imported when the command runs, so other commands start
quickly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fluidfs.cache.dirlock import lock_holder
from fluidfs.cli.options import (
    SOURCE_FLAGS,
    add_setting_options,
    add_source_options,
    given_settings,
    intermixed,
    prepare,
)
from fluidfs.daemon.record import find_mount, records, require_mount
from fluidfs.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, CacheError, ConfigError, MountError
from fluidfs.util.sizes import format_size
from fluidfs.warmup.mounted import resolve_paths
from fluidfs.warmup.progress import Progress, final_line

if TYPE_CHECKING:
    from fluidfs.warmup.pipeline import LoadResult


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    # the engine (trio) is imported here, not at start-up: only this command needs it
    from fluidfs.warmup.mount import load_mount
    from fluidfs.warmup.source import load_source

    if args.parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    progress = Progress(sys.stderr, quiet=args.quiet)
    found = find_mount(args.source)
    if found is not None:
        root, sub = found
        rec = require_mount(root)
        given = [str(row.cli) for row in given_settings(args) if "load" in row.commands]
        given += [f"--{k}" for k in SOURCE_FLAGS if getattr(args, k, None) is not None]
        if args.option:
            given.append("-o")
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only for loading a SOURCE; "
                f"{args.source} is a mount and uses its own configuration"
            )
        # inside a mount: `load /mnt/data/train [PATH]` = `load /mnt/data train[/PATH]`
        rels = resolve_paths(root, [os.path.join(sub, p) for p in args.paths] or [sub])
        res = load_mount(root, rels, dict(rec.get("config") or {}), args.parallel, progress)
    else:
        dataset, cfg = prepare(args)
        for w in dataset.warnings:
            print(f"fluidfs: warning: {w}", file=sys.stderr)
        if cfg.cache_dir and os.path.isdir(cfg.cache_dir):
            holder = lock_holder(cfg.cache_dir)
            if holder is not None:
                raise _in_use(cfg.cache_dir, holder)
        try:
            res = load_source(dataset, cfg, args.paths, args.parallel, progress)
        except CacheError:
            holder = lock_holder(cfg.cache_dir) if cfg.cache_dir else None
            if holder is None:
                raise
            raise _in_use(str(cfg.cache_dir), holder) from None
    return report(res, progress)


def _in_use(cache_dir: str, pid: int | None) -> MountError:
    """The error for a cache directory locked by process ``pid``, naming its mountpoint if it is a mount."""
    for rec in records():
        if pid is not None and rec.get("pid") == pid and rec.get("mountpoint"):
            mnt = rec["mountpoint"]
            return MountError(
                f"cache directory {cache_dir} is in use by the fluidfs mount at {mnt} (pid {pid}); "
                f"load through the mountpoint instead: fluidfs load {mnt}"
            )
    who = f"pid {pid}" if pid else "another process"
    return MountError(
        f"cache directory {cache_dir} is in use by a running fluidfs mount ({who}); "
        "load through its mountpoint instead (fluidfs load MOUNTPOINT)"
    )


def report(res: LoadResult, progress: Progress) -> int:
    """Print the final line (stdout) and what went wrong (stderr); return the exit code."""
    line = final_line(res.files_cached, res.files_total, res.bytes_cached, res.bytes_total, res.seconds)
    if res.interrupted:
        more = "" if res.listing_complete else " (listing incomplete)"
        progress.finish(f"interrupted: {line}{more} so far; run the same command again to continue", sys.stdout)
        return EXIT_INTERRUPTED
    progress.finish(line, sys.stdout)
    if not progress.quiet:
        print(
            f"fluidfs: {format_size(res.loaded_bytes)} loaded now; {res.skipped_files} files were already cached",
            file=sys.stderr,
        )
    if res.failed:
        more = ", ..." if res.failed > len(res.errors) else ""
        print(f"fluidfs: {res.failed} files could not be loaded: {'; '.join(res.errors)}{more}", file=sys.stderr)
    if res.halted:
        print(f"fluidfs: stopped: {res.halted}", file=sys.stderr)
    return EXIT_OK if res.complete else EXIT_FAILURE


def add_parser(sub: Any) -> None:
    p = intermixed(
        sub.add_parser("load", help="preload a dataset into the cache (through a mount, or into a cache dir)")
    )
    p.add_argument(
        "source",
        metavar="SOURCE|MOUNTPOINT",
        help="a fluidfs mountpoint, or a URL / directory / Dataset file to load into --cache-dir",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to load (default: everything)")
    p.add_argument("--parallel", "-p", type=int, default=16, help="parallel readers (default 16)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, only the final line")
    g = p.add_argument_group("loading a SOURCE (override the Dataset's spec.cache)")
    add_setting_options(p, "load", group=g)
    add_source_options(g)
    p.set_defaults(handler=run, log_level="warning", metrics_addr="none")
