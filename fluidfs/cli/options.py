"""Command-line flags shared by several commands, and turning them into a Dataset and a MountConfig.

``fluidfs mount`` takes every mount option (:func:`add_mount_options`); ``fluidfs load SOURCE``
takes the SSD-tier and source options only (:func:`add_cache_dir_options`,
:func:`add_source_options`), defined once here.  :func:`prepare` parses the SOURCE argument and
builds the configuration (defaults ← Dataset ← flags) for both.

Caveats: flags a command does not define count as unset in :func:`prepare`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fluidfs.config import MountConfig, build_config
from fluidfs.errors import EXIT_USAGE, ConfigError
from fluidfs.spec.model import Dataset
from fluidfs.spec.parse import dataset_from_source_arg
from fluidfs.util.sizes import parse_duration, parse_size

#: flags of ``fluidfs load`` that only make sense when loading a SOURCE (not through a mount)
SOURCE_ONLY = ("cache_dir", "cache_size", "block_size", "eviction", "free_space_floor", "endpoint", "region")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with code 2 and a ``fluidfs: error:`` line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"fluidfs: error: {message}\n")


class _Intermixed:
    """Parser mixin: PATHs may follow options (``load SOURCE --cache-dir D PATH``)."""

    _inside = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inside:  # parse_known_intermixed_args calls back into us
            return super().parse_known_args(args, namespace)  # type: ignore[misc]
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)  # type: ignore[attr-defined]
        finally:
            self._inside = False


def intermixed(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let positional arguments of ``p`` follow its options."""
    p.__class__ = type(f"Intermixed{type(p).__name__}", (_Intermixed, type(p)), {})
    return p


def add_cache_dir_options(g: Any) -> None:
    """The SSD tier: directory, quota, block size, eviction, free-space floor."""
    g.add_argument(
        "--cache-dir", metavar="DIR", help="SSD tier directory (default: spec.cache.directory, else memory only)"
    )
    g.add_argument("--cache-size", metavar="SIZE", help="SSD tier quota, e.g. 100Gi (default 10Gi)")
    g.add_argument(
        "--block-size", metavar="SIZE", help="cache block size, 1Mi-64Mi (default 4Mi); load and mount must agree"
    )
    g.add_argument("--eviction", choices=("lru", "none"), help="SSD eviction policy (default none)")
    g.add_argument("--free-space-floor", metavar="SIZE", help="never fill the cache disk below this (default 1Gi)")


def add_source_options(g: Any) -> Any:
    """Defaults for the Dataset's sources: S3 endpoint and region, ``-o KEY=VALUE``."""
    g.add_argument("--endpoint", metavar="URL", help="S3 endpoint for s3:// mounts without one (else AWS_ENDPOINT_URL)")
    g.add_argument("--region", help="S3 region for s3:// mounts without one")
    g.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="source option (repeatable)"
    )
    return g


def add_mount_options(p: argparse.ArgumentParser) -> None:
    """Every option of ``fluidfs mount``."""
    g = p.add_argument_group("cache (override the Dataset's spec.cache)")
    add_cache_dir_options(g)
    g.add_argument("--memory-size", metavar="SIZE", help="memory tier quota (default 512Mi)")
    g.add_argument(
        "--inflight-memory",
        metavar="SIZE",
        help="blocks being fetched, read ahead or written to the SSD tier, all files together "
        "(default: half the memory size, 4 blocks to 256Mi)",
    )
    g.add_argument("--readahead", metavar="SIZE", help="largest per-file readahead window (default 32Mi)")
    g.add_argument(
        "--prefetch-siblings",
        type=int,
        metavar="N",
        help="small files of a directory prefetched per small-file open (default 16; 0 disables)",
    )
    g = p.add_argument_group("metadata")
    g.add_argument("--metadata-ttl", metavar="SECONDS", help="attribute/listing TTL or 'indefinite' (default 60)")
    g.add_argument("--negative-ttl", metavar="SECONDS", help="TTL of 'no such file' answers (default 10)")
    g = p.add_argument_group("presentation")
    g.add_argument("--uid", type=int, help="owner of every file (default: 0)")
    g.add_argument("--gid", type=int, help="group of every file (default: 0)")
    g.add_argument("--file-mode", type=_octal, help="file permission bits, octal (default 0444)")
    g.add_argument("--dir-mode", type=_octal, help="directory permission bits, octal (default 0555)")
    g.add_argument("--allow-other", action="store_true", default=None, help="let other users see the mount")
    g = add_source_options(p.add_argument_group("sources"))
    g.add_argument(
        "--request-timeout",
        metavar="SECONDS",
        help="every source request (a stat, a listing page, a block), retries included, ends within this (default 20)",
    )
    g = p.add_argument_group("process")
    g.add_argument(
        "--metrics-addr", metavar="HOST:PORT", help="Prometheus endpoint (default 127.0.0.1:0; 'none' disables)"
    )
    g.add_argument("--foreground", "-f", action="store_true", help="do not daemonize (for containers)")
    g.add_argument("--log-file", metavar="FILE", help="daemon log file (default: next to the runtime record)")
    g.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    g.add_argument("--pid-file", metavar="FILE", help="write the daemon's pid here")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the mount to answer")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def _octal(text: str) -> int:
    return int(text, 8)


def _parsed(parse: Callable[[str, str], Any], flag: str, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse(value, flag)  # the message already names the flag
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def mount_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """MountConfig fields set on the command line (None = unset; flags ``args`` lacks are unset)."""

    def arg(name: str) -> Any:
        return getattr(args, name, None)

    def size(name: str) -> int | None:
        return _parsed(parse_size, "--" + name.replace("_", "-"), arg(name))  # type: ignore[no-any-return]

    def duration(name: str) -> float | None:
        return _parsed(parse_duration, "--" + name.replace("_", "-"), arg(name))  # type: ignore[no-any-return]

    cache_dir = arg("cache_dir")
    return {
        "cache_dir": os.path.abspath(cache_dir) if cache_dir else None,
        "cache_size": size("cache_size"),
        "memory_size": size("memory_size"),
        "inflight_memory": size("inflight_memory"),
        "block_size": size("block_size"),
        "eviction": arg("eviction"),
        "readahead": size("readahead"),
        "free_space_floor": size("free_space_floor"),
        "sibling_prefetch": arg("prefetch_siblings"),
        "metadata_ttl": duration("metadata_ttl"),
        "negative_ttl": duration("negative_ttl"),
        "request_timeout": duration("request_timeout"),
        "uid": arg("uid"),
        "gid": arg("gid"),
        "file_mode": arg("file_mode"),
        "dir_mode": arg("dir_mode"),
        "allow_other": arg("allow_other"),
        "metrics_addr": arg("metrics_addr"),  # "none" disables (build_config)
    }


def source_options(items: list[str]) -> dict[str, str]:
    """``-o KEY=VALUE`` items → ``{KEY: VALUE}``."""
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"-o {item!r}: expected KEY=VALUE")
        options[key] = value
    return options


def prepare(args: argparse.Namespace) -> tuple[Dataset, MountConfig]:
    """Parse and validate the dataset and the configuration (no I/O beyond reading the spec)."""
    dataset = dataset_from_source_arg(args.source, source_options(args.option))
    defaults = {k: v for k, v in (("endpoint", args.endpoint), ("region", args.region)) if v}
    if defaults:
        dataset = with_default_options(dataset, defaults)
    return dataset, build_config(dataset, mount_overrides(args))


def with_default_options(dataset: Dataset, defaults: dict[str, str]) -> Dataset:
    """Fill S3 mounts' unset ``options`` (endpoint, region) from command-line defaults."""
    mounts = []
    for m in dataset.mounts:
        if m.scheme == "s3":
            opts = dict(m.options)
            for k, v in defaults.items():
                opts.setdefault(k, v)
            m = replace(m, options=opts)
        mounts.append(m)
    return replace(dataset, mounts=tuple(mounts))
