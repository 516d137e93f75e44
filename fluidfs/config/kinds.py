"""Value kinds of the settings table: how one setting's value is read, checked (ranges included) and shown.

A :class:`Kind` turns a raw value -- a YAML scalar of a Dataset document, or the text of a
command-line flag or of a CSI volume attribute -- into the typed value, or raises ``ValueError``
whose text is the problem alone (``must be between 1Mi and 64Mi, got '512Ki'``); each surface puts
its own location in front (``spec.cache.blockSize: ``, ``--block-size: ``, ``blockSize: ``).
Parsing an already typed value returns it unchanged, so the same call checks a ``MountConfig``
built in code.  Messages describe a wrong *type* without quoting the value (``must be a string,
got a number``); a value of the right type that is out of range is quoted.

Caveats: text is always read as typed by a person (``"0444"`` is octal, ``"16"`` a whole number);
a YAML integer is the number it is -- ``fileMode: 0444`` is octal by YAML 1.1's rule but
``fileMode: 444`` is decimal 444 (= 0o674), as with Kubernetes' ``defaultMode``.  Sizes and
durations follow :mod:`fluidfs.util.sizes`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fluidfs.util.sizes import parse_duration, parse_size

T = TypeVar("T")

#: largest uid/gid: 2**32 - 1 is (uid_t)-1, "no owner", which chown and the kernel reject
MAX_ID = 2**32 - 2
#: largest mode: permission bits (rwx for user, group, other) plus setuid, setgid and sticky
MAX_MODE = 0o7777
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def kind_of(value: object) -> str:
    """The type of a document value in words (``a string``), never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def text(value: object) -> str:
    """A non-empty string (a type mistake names the type only: the value might be a secret)."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {kind_of(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def short_size(n: int) -> str:
    """``4194304`` -> ``4Mi``: the largest binary unit that divides ``n`` exactly."""
    for unit, scale in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _same(arg: str) -> object:
    return arg


@dataclass(frozen=True)
class Kind(Generic[T]):
    """How the values of one kind of setting are read, checked and shown."""

    name: str  # the type as the reference names it: "size", "duration", ...
    metavar: str  # the command-line placeholder: SIZE, SECONDS, N, ...
    parse: Callable[[object], T]  # raw value (document scalar, flag text) or typed value -> typed value
    show: Callable[[T], str]  # a typed value as a person would write it (defaults in help and docs)
    allowed: str = ""  # the accepted values in words, for the reference ("1Mi to 64Mi")
    from_arg: Callable[[str], object] = _same  # command-line text before parse (relative paths made absolute)
    switch: bool = False  # on the command line a switch without a value (``--allow-other``)
    accepts: tuple[type, ...] = (str,)  # the types a document may write (for its JSON Schema)


# ----------------------------------------------------------------------------- the kinds


def size(lo: int = 0, hi: int | None = None) -> Kind[int]:
    """Bytes, written ``512Mi``, ``10G``, ``1.5Gi`` or a plain number."""
    span = f"between {short_size(lo)} and {short_size(hi)}" if hi is not None else f"at least {short_size(lo)}"

    def parse(raw: object) -> int:
        value = parse_size(raw)  # type: ignore[arg-type]  # parse_size names any other type itself
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be {span}, got {raw!r}")
        return value

    allowed = span if lo or hi is not None else ""
    return Kind("size", "SIZE", parse, short_size, allowed=allowed, accepts=(str, int))


def _show_seconds(seconds: float) -> str:
    return "indefinite" if math.isinf(seconds) else f"{seconds:g}s"


def duration(indefinite: bool = True) -> Kind[float]:
    """Seconds, written ``30``, ``30s``, ``5m``, ``1h30m``; ``indefinite`` if allowed."""

    def parse(raw: object) -> float:
        value = parse_duration(raw)  # type: ignore[arg-type]  # parse_duration names any other type itself
        if math.isinf(value) and not indefinite:
            raise ValueError(f"must be a finite duration, got {raw!r}")
        return value

    return Kind("duration", "SECONDS", parse, _show_seconds, accepts=(str, float))


def _whole(raw: object) -> int | None:
    """``raw`` as an int if it is a whole number (an int, or a string of decimal digits), else None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        s = raw.strip()
        if s.lstrip("+-").isdigit() and s.isascii():
            return int(s)
    return None


def count(lo: int = 0, hi: int | None = None) -> Kind[int]:
    """A whole number in ``lo..hi``."""
    span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"

    def parse(raw: object) -> int:
        value = _whole(raw)
        if value is None or value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be a whole number {span}, got {raw!r}")
        return value

    return Kind("whole number", "N", parse, str, allowed=span, accepts=(int, str))


def ident() -> Kind[int]:
    """A user or group id: 0 to 2**32 - 2."""
    kind = count(0, MAX_ID)
    return Kind("id", "ID", kind.parse, str, allowed=kind.allowed, accepts=(int, str))


def _show_mode(mode: int) -> str:
    return f"0{mode:o}" if mode >= 0 else repr(mode)


def mode() -> Kind[int]:
    """Permission bits, octal: ``0444``; no file-type bits (``040444`` is a directory's st_mode)."""

    def parse(raw: object) -> int:
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str):
            s = raw.strip().lower()
            digits = s[2:] if s.startswith("0o") else s
            if digits and all(c in "01234567" for c in digits):
                value = int(digits, 8)
        if value is None or not 0 <= value <= MAX_MODE:
            shown = _show_mode(raw) if isinstance(raw, int) and not isinstance(raw, bool) else repr(raw)
            raise ValueError(f"must be octal permission bits from 0 to 7777, got {shown}")
        return value

    return Kind("octal mode", "OCTAL", parse, _show_mode, allowed="0 to 7777", accepts=(str, int))


def choice(*values: str) -> Kind[str]:
    """One of ``values`` (case-insensitive)."""
    words = " or ".join(repr(v) for v in values) if len(values) <= 2 else ", ".join(values[:-1]) + f" or {values[-1]}"

    def parse(raw: object) -> str:
        value = text(raw).strip().lower()
        if value not in values:
            raise ValueError(f"must be {words}, got {raw!r}")
        return value

    return Kind("choice", "|".join(values), parse, str, allowed=" | ".join(values))


def _absolute_arg(arg: str) -> object:
    return os.path.abspath(arg) if arg.strip() else arg


def path(optional: bool = False) -> Kind[str | None]:
    """An absolute path; on the command line a relative one is taken from the working directory."""

    def parse(raw: object) -> str | None:
        if raw is None and optional:
            return None
        value = text(raw)
        if not os.path.isabs(value):
            raise ValueError(f"must be an absolute path, got {raw!r}")
        return value

    def show(value: str | None) -> str:
        return "unset" if value is None else value

    return Kind("path", "PATH", parse, show, from_arg=_absolute_arg)


def address(off: tuple[str, ...] = ("none", "off")) -> Kind[str | None]:
    """``HOST:PORT`` (port 0 = any free port); one of ``off`` (or None) disables."""

    def parse(raw: object) -> str | None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in (*off, "")):
            return None
        value = text(raw).strip()
        host, sep, port = value.rpartition(":")
        if not (sep and host and port.isdigit() and port.isascii() and int(port) <= 65535):
            raise ValueError(f"must be HOST:PORT or {off[0]!r}, got {raw!r}")
        return value

    def show(value: str | None) -> str:
        return off[0] if value is None else value

    return Kind("address", "HOST:PORT", parse, show, allowed=f"HOST:PORT or '{off[0]}'")


def switch() -> Kind[bool]:
    """On or off; on the command line a switch that turns it on."""

    def parse(raw: object) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"must be true or false, got {kind_of(raw) if not isinstance(raw, str) else repr(raw)}")

    def show(value: bool) -> str:
        return "on" if value else "off"

    return Kind("boolean", "", parse, show, switch=True, accepts=(bool, str))


def string() -> Kind[str]:
    """Any non-empty text (names, ids)."""
    return Kind("text", "TEXT", text, str)
