"""Command-line flags shared by several commands, and turning them into a Dataset and a MountConfig.

The flags of the settings (``--cache-size``, ``--uid`` ...) come from the settings table
(``fluidfs.config.SETTINGS``): :func:`add_setting_options` adds those of one command,
:func:`cli_overrides` reads them back (each value parsed and range-checked by its row).
``fluidfs mount`` takes every mount setting (:func:`add_mount_options`); ``fluidfs load SOURCE``
the SSD tier's and the source options.  :func:`prepare` parses the SOURCE argument and builds
the configuration (defaults <- Dataset <- flags) for both.

Caveats: flags a command does not define count as unset in :func:`prepare`.  The Dataset parser
(pydantic, a few hundred milliseconds to load) is imported by :func:`prepare`, so commands that
read no Dataset (``umount``, ``status``, ``refresh``) start without it.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from fluidfs.config import GROUPS, SETTINGS, MountConfig, Setting, build_config
from fluidfs.errors import EXIT_USAGE, ConfigError
from fluidfs.spec.model import Dataset

#: source flags of ``fluidfs load`` besides the settings: only for loading a SOURCE
SOURCE_FLAGS = ("endpoint", "region")


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


def add_source_options(g: Any) -> None:
    """Defaults for the Dataset's sources: S3 endpoint and region, ``-o KEY=VALUE``."""
    g.add_argument("--endpoint", metavar="URL", help="S3 endpoint for s3:// mounts without one (else AWS_ENDPOINT_URL)")
    g.add_argument("--region", help="S3 region for s3:// mounts without one")
    g.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="source option (repeatable)"
    )


def setting_help(row: Setting) -> str:
    """The ``--help`` line of a setting's flag: what it does, its default and range."""
    allowed = f", {row.kind.allowed}" if row.kind.allowed else ""
    default = "" if row.kind.switch else f" (default {row.show_default()}{allowed})"
    return f"{row.help}{default}".replace("%", "%%")


def add_setting_options(
    p: argparse.ArgumentParser, command: str, *, groups: dict[str, Any] | None = None, group: Any = None
) -> None:
    """Add the flags of the settings ``command`` takes: all into ``group`` if given, else each into
    its group of ``groups`` (made as needed, titled from ``GROUPS``)."""
    groups = {} if groups is None else groups
    for row in SETTINGS:
        if row.cli is None or command not in row.commands:
            continue
        g = group or groups.get(row.group) or groups.setdefault(row.group, p.add_argument_group(GROUPS[row.group]))
        if row.kind.switch:
            g.add_argument(row.cli, dest=row.name, action="store_const", const="true", help=setting_help(row))
        else:
            g.add_argument(row.cli, dest=row.name, metavar=row.kind.metavar, help=setting_help(row))


def given_settings(args: argparse.Namespace) -> list[Setting]:
    """The settings whose flags are on the command line."""
    return [row for row in SETTINGS if row.cli is not None and getattr(args, row.name, None) is not None]


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """{setting: typed value} of the setting flags given (flags ``args`` lacks are unset).

    A bad value is a ConfigError naming the flag (exit 2).
    """
    out: dict[str, Any] = {}
    for row in given_settings(args):
        try:
            out[row.name] = row.parse_arg(str(getattr(args, row.name)))
        except ValueError as exc:
            raise ConfigError(f"{row.cli}: {exc}") from None
    return out


def add_mount_options(p: argparse.ArgumentParser) -> None:
    """Every option of ``fluidfs mount``."""
    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items()}  # in this order
    add_setting_options(p, "mount", groups=groups)
    add_source_options(groups["sources"])
    g = groups["process"]
    g.add_argument("--foreground", "-f", action="store_true", help="do not daemonize (for containers)")
    g.add_argument("--log-file", metavar="FILE", help="daemon log file (default: next to the runtime record)")
    g.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    g.add_argument("--pid-file", metavar="FILE", help="write the daemon's pid here")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the mount to answer")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


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
    # start-up cost: the parser (pydantic) is loaded by the commands that read a Dataset only
    from fluidfs.spec.parse import dataset_from_source_arg

    dataset = dataset_from_source_arg(args.source, source_options(args.option))
    defaults = {k: v for k, v in (("endpoint", args.endpoint), ("region", args.region)) if v}
    if defaults:
        dataset = with_default_options(dataset, defaults)
    return dataset, build_config(dataset.settings, cli_overrides(args))


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
