"""The shape of the settings table: a :class:`Setting` row, declared as a dataclass field with :func:`setting`.

A configuration class (``MountConfig``) declares each of its settings once, as a field whose
default is ``setting(default, kind, help, ...)``; :func:`rows` reads the table back from the
class.  A row says where the setting can be given, and every surface is derived from it:

- ``cli``: the command-line flag, for the commands in ``commands`` (``fluidfs.cli.options``);
- ``dataset``: the Dataset field, ``spec.<section>.<key>`` (``fluidfs.spec.schema``);
- ``csi``: the CSI volume attribute, handed on as the flag (``csi.volumes``);
- the reference page ``docs/configuration.md`` (``python -m tools.gen_config_doc``).

Precedence: the default, then the Dataset document, then the command line (a CSI attribute
arrives as a flag, so it wins over the document too).

Caveats: only scalar settings (one value each); a Dataset field sits exactly one section below
``spec``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fluidfs.config.kinds import Kind

T = TypeVar("T")

_ROW = "fluidfs.setting"

#: the commands whose flags a row can be (``fluidfs <command>``)
MOUNT: tuple[str, ...] = ("mount",)
MOUNT_AND_LOAD: tuple[str, ...] = ("mount", "load")

#: group -> its title in ``--help`` and its heading in the reference, in this order
GROUPS: dict[str, str] = {
    "cache": "cache",
    "metadata": "metadata",
    "permissions": "permissions of the files and directories shown",
    "sources": "talking to sources",
    "process": "process",
}


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    kind: Kind[Any]
    help: str  # one line: what it does (the default and the range are added where shown)
    group: str  # a key of GROUPS
    unit: str = ""  # "bytes", "seconds", "files" ...: what the number counts
    cli: str | None = None  # "--block-size"
    commands: tuple[str, ...] = MOUNT  # which commands take the flag
    dataset: str | None = None  # "spec.cache.blockSize"
    csi: str | None = None  # "blockSize": a CSI volume attribute, passed on as the flag
    name: str = ""  # the field's name, filled in by rows()
    default: Any = None  # the field's default, filled in by rows()

    def parse(self, raw: object) -> Any:
        """A document value (or a typed value) -> the typed value; ``ValueError(problem)``."""
        return self.kind.parse(raw)

    def parse_arg(self, arg: str) -> Any:
        """Command-line or CSI attribute text -> the typed value; ``ValueError(problem)``."""
        return self.kind.parse(self.kind.from_arg(arg))

    @property
    def section(self) -> str:
        """The Dataset section (``cache`` of ``spec.cache.blockSize``); "" without a Dataset field."""
        return self.dataset.split(".")[1] if self.dataset else ""

    @property
    def key(self) -> str:
        """The key inside the section (``blockSize``); "" without a Dataset field."""
        return self.dataset.split(".")[2] if self.dataset else ""

    def show_default(self) -> str:
        return self.kind.show(self.default)


def setting(
    default: T,
    kind: Kind[T],
    help: str,
    *,
    group: str,
    unit: str = "",
    cli: str | None = None,
    commands: tuple[str, ...] = MOUNT,
    dataset: str | None = None,
    csi: str | None = None,
) -> T:
    """Declare one setting: use as the default of a field of a frozen dataclass."""
    row = Setting(kind, help, group, unit, cli, commands, dataset, csi)
    return dataclasses.field(default=default, metadata={_ROW: row})


def rows(cls: type[Any]) -> tuple[Setting, ...]:
    """The table of ``cls``: one row per field, in declaration order, checked for consistency."""
    out = []
    for f in dataclasses.fields(cls):
        row = f.metadata.get(_ROW)
        if not isinstance(row, Setting):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
        out.append(dataclasses.replace(row, name=f.name, default=f.default))
    check(out)
    return tuple(out)


def check(table: Iterable[Setting]) -> None:
    """Raise TypeError for a table no surface could serve (a mistake in the declaration)."""
    seen: dict[str, str] = {}
    for row in table:
        if row.group not in GROUPS:
            raise TypeError(f"{row.name}: unknown group {row.group!r} (add it to GROUPS)")
        if row.dataset is not None and (len(row.dataset.split(".")) != 3 or not row.dataset.startswith("spec.")):
            raise TypeError(f"{row.name}: the Dataset field must be spec.<section>.<key>, not {row.dataset!r}")
        if row.cli is not None and not row.cli.startswith("--"):
            raise TypeError(f"{row.name}: the flag must start with '--', not {row.cli!r}")
        if row.csi is not None and (row.cli is None or "mount" not in row.commands):
            raise TypeError(f"{row.name}: a CSI attribute is passed on as a flag of mount, so it needs one")
        for surface in (row.cli, row.dataset, f"csi:{row.csi}" if row.csi else None):
            if surface is not None:
                if surface in seen:
                    raise TypeError(f"{row.name}: {surface} is also used by {seen[surface]}")
                seen[surface] = row.name
        row.parse(row.default)  # the default must be a value of its own kind
