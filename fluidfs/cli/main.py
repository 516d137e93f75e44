"""Command line: ``fluidfs mount|umount|load|status|demo``.

User mistakes end with one line on stderr and a non-zero exit code, never a traceback:

    0  success
    1  mount/unmount failure (mountpoint missing or busy, FUSE error, daemon died)
    2  bad command line, bad Dataset document or configuration
    3  source failure (unreachable endpoint, wrong credentials, missing bucket/path)
  130  interrupted
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Sequence

from fluidfs import __version__
from fluidfs.errors import ConfigError, FluidfsError, SourceError, SpecError

log = logging.getLogger("fluidfs")

EXIT_OK, EXIT_MOUNT, EXIT_USAGE, EXIT_SOURCE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, (SpecError, ConfigError)):
        return EXIT_USAGE
    if isinstance(exc, SourceError):
        return EXIT_SOURCE
    return EXIT_MOUNT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"fluidfs: error: {message}\n")


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cache (override the Dataset's spec.cache)")
    g.add_argument("--cache-dir", metavar="DIR", help="SSD tier directory (default: memory only)")
    g.add_argument("--cache-size", metavar="SIZE", help="SSD tier quota, e.g. 100Gi (default 10Gi)")
    g.add_argument("--memory-size", metavar="SIZE", help="memory tier quota (default 512Mi)")
    g.add_argument("--block-size", metavar="SIZE", help="cache block size, 1Mi-64Mi (default 4Mi)")
    g.add_argument("--eviction", choices=("lru", "none"), help="SSD eviction policy (default none)")
    g.add_argument("--readahead", metavar="SIZE", help="largest per-file readahead window (default 32Mi)")
    g.add_argument("--prefetch-siblings", type=int, metavar="N", help="small files of a directory prefetched per small-file open (default 16; 0 disables)")
    g.add_argument("--free-space-floor", metavar="SIZE", help="never fill the cache disk below this (default 1Gi)")
    g = p.add_argument_group("metadata")
    g.add_argument("--metadata-ttl", metavar="SECONDS", help="attribute/listing TTL or 'indefinite' (default 60)")
    g.add_argument("--negative-ttl", metavar="SECONDS", help="TTL of 'no such file' answers (default 10)")
    g = p.add_argument_group("presentation")
    g.add_argument("--uid", type=int, help="owner of every file (default: 0)")
    g.add_argument("--gid", type=int, help="group of every file (default: 0)")
    g.add_argument("--file-mode", type=lambda s: int(s, 8), help="file permission bits, octal (default 0444)")
    g.add_argument("--dir-mode", type=lambda s: int(s, 8), help="directory permission bits, octal (default 0555)")
    g.add_argument("--allow-other", action="store_true", default=None, help="let other users see the mount")
    g = p.add_argument_group("sources")
    g.add_argument("--endpoint", metavar="URL", help="S3 endpoint for s3:// mounts without one (else AWS_ENDPOINT_URL)")
    g.add_argument("--region", help="S3 region for s3:// mounts without one")
    g.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="source option (repeatable)")
    g = p.add_argument_group("process")
    g.add_argument("--metrics-addr", metavar="HOST:PORT", help="Prometheus endpoint (default 127.0.0.1:0; 'none' disables)")
    g.add_argument("--foreground", "-f", action="store_true", help="do not daemonize (for containers)")
    g.add_argument("--log-file", metavar="FILE", help="daemon log file (default: next to the runtime record)")
    g.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    g.add_argument("--pid-file", metavar="FILE", help="write the daemon's pid here")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the mount to answer")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fluidfs", description="Mount datasets (S3, HTTP, local) as read-only directories.")
    p.add_argument("--version", action="version", version=f"fluidfs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser("mount", help="mount a dataset (URL or Dataset YAML file)")
    m.add_argument("source", help="s3://bucket/prefix, http(s)://..., file:///dir, or a Dataset YAML file")
    m.add_argument("mountpoint")
    _add_mount_options(m)

    u = sub.add_parser("umount", help="unmount a fluidfs mount")
    u.add_argument("mountpoint")
    u.add_argument("--lazy", "-z", action="store_true", help="detach even if busy or its daemon is dead")
    u.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the daemon to exit")

    r = sub.add_parser("refresh", help="forget cached metadata of a mount (see source changes now)")
    r.add_argument("mountpoint")

    d = sub.add_parser("demo", help="run the self-contained demo (embedded S3 server, no internet)")
    d.add_argument("--files", type=int, default=300, help="number of image-sized files (default 300)")
    d.add_argument("--shards", type=int, default=3, help="number of larger shard files (default 3)")
    d.add_argument("--shard-size", default="32Mi", help="size of each shard (default 32Mi)")
    d.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)

    from fluidfs.warmup import pipeline as warmup

    warmup.add_parsers(sub)
    return p


def _mount_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from fluidfs.util.sizes import parse_duration, parse_size

    def parsed(parse: Callable[[str, str], Any], flag: str, v: str | None) -> Any:
        if v is None:
            return None
        try:
            return parse(v, flag)  # the message already names the flag
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def size(flag: str, v: str | None) -> int | None:
        return parsed(parse_size, flag, v)  # type: ignore[no-any-return]

    def dur(flag: str, v: str | None) -> float | None:
        return parsed(parse_duration, flag, v)  # type: ignore[no-any-return]

    return {
        "cache_dir": os.path.abspath(args.cache_dir) if args.cache_dir else None,
        "cache_size": size("--cache-size", args.cache_size),
        "memory_size": size("--memory-size", args.memory_size),
        "block_size": size("--block-size", args.block_size),
        "eviction": args.eviction,
        "readahead": size("--readahead", args.readahead),
        "free_space_floor": size("--free-space-floor", args.free_space_floor),
        "sibling_prefetch": args.prefetch_siblings,
        "metadata_ttl": dur("--metadata-ttl", args.metadata_ttl),
        "negative_ttl": dur("--negative-ttl", args.negative_ttl),
        "uid": args.uid,
        "gid": args.gid,
        "file_mode": args.file_mode,
        "dir_mode": args.dir_mode,
        "allow_other": args.allow_other,
        "metrics_addr": args.metrics_addr,  # "none" disables (build_config)
    }


def prepare(args: argparse.Namespace) -> tuple[Any, Any]:
    """Parse and validate the dataset and the configuration (no I/O beyond reading the spec)."""
    from fluidfs.config import build_config
    from fluidfs.spec.parse import dataset_from_source_arg

    options: dict[str, str] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"-o {item!r}: expected KEY=VALUE")
        options[key] = value
    dataset = dataset_from_source_arg(args.source, options)
    defaults = {k: v for k, v in (("endpoint", args.endpoint), ("region", args.region)) if v}
    if defaults:
        dataset = with_default_options(dataset, defaults)
    return dataset, build_config(dataset, _mount_overrides(args))


def with_default_options(dataset: Any, defaults: dict[str, str]) -> Any:
    """Fill S3 mounts' unset ``options`` (endpoint, region) from command-line defaults."""
    from dataclasses import replace

    mounts = []
    for m in dataset.mounts:
        if m.scheme == "s3":
            opts = dict(m.options)
            for k, v in defaults.items():
                opts.setdefault(k, v)
            m = replace(m, options=opts)
        mounts.append(m)
    return replace(dataset, mounts=tuple(mounts))


def cmd_mount(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from fluidfs.daemon import spawn as daemon

    dataset, cfg = prepare(args)
    for w in dataset.warnings:
        print(f"fluidfs: warning: {w}", file=sys.stderr)
    if not args.foreground:
        from fluidfs.daemon.run import check_mountpoint

        check_mountpoint(args.mountpoint)
        return daemon.spawn_and_wait(list(argv), args.mountpoint, args.log_file, args.timeout)
    return daemon.run_foreground(dataset, cfg, args.mountpoint, args.ready_fd, args.pid_file)


def cmd_umount(args: argparse.Namespace) -> int:
    from fluidfs.daemon import spawn as daemon

    daemon.unmount(args.mountpoint, lazy=args.lazy, timeout=args.timeout)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", "warning")
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # library debug logs can carry signed headers and request details: keep them out
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if args.command == "mount":
            return cmd_mount(args, argv)
        if args.command == "umount":
            return cmd_umount(args)
        if args.command == "refresh":
            from fluidfs.daemon import spawn as daemon

            daemon.request_refresh(args.mountpoint)
            return EXIT_OK
        if args.command == "demo":
            from fluidfs.cli.demo import run_demo

            return run_demo(args)
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args))
        raise ConfigError(f"unknown command {args.command}")
    except KeyboardInterrupt:
        print("fluidfs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FluidfsError as exc:
        print(f"fluidfs: error: {exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
