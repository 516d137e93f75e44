"""Parse and format human-readable sizes (``512Mi``, ``10G``) and durations (``30s``, ``2h``).

Sizes: a non-negative number followed by an optional unit, case-insensitive, with an optional
trailing ``B``: ``Ki Mi Gi Ti Pi`` are binary (1024-based), ``K M G T P`` decimal (1000-based);
no unit means bytes.  ``1.5Gi`` is allowed and rounded down to a whole byte; a fractional
count of plain bytes (``1.5``) is an error.

Durations: a non-negative number of seconds (int, float or numeric string), or a number with a
unit ``ms s m h d`` (several may be combined, ``1h30m``), or ``indefinite`` / ``inf`` /
``infinity`` / ``forever`` / ``never`` meaning ``math.inf``.

Every function raises ``ValueError`` with a one-line message that quotes the bad value; with
``field`` given, the message starts with ``"<field>: "``.  The Dataset parser turns these into
``SpecError`` (adding the document and field path), the CLI into ``ConfigError``.

Caveats: ``m`` is minutes in a duration but mega in a size (``100m`` = 100 MB), because sizes
are case-insensitive.  There is no milli-byte.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["parse_size", "format_size", "parse_duration", "format_duration"]

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "p": 1000**5,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
    "pi": 1024**5,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]i?)?b?\s*", re.IGNORECASE)
_SIZE_HINT = "expected a number with an optional unit Ki, Mi, Gi, Ti, K, M, G, T (e.g. 512Mi, 10G)"

_DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)")
_INFINITE_WORDS = frozenset({"indefinite", "inf", "infinity", "forever", "never"})
_DURATION_HINT = "expected seconds or a number with a unit s, m, h, d (e.g. 30s, 5m), or 'indefinite'"


def _prefix(field: str) -> str:
    return f"{field}: " if field else ""


def parse_size(text: str | int, field: str = "") -> int:
    """Return the number of bytes ``text`` denotes (``"4Gi"`` -> 4294967296).

    Raises ValueError for anything that is not a non-negative size.
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(f"{_prefix(field)}invalid size {text!r}: {_SIZE_HINT}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{_prefix(field)}invalid size {text}: must not be negative")
        return text
    if text.strip().startswith("-"):
        raise ValueError(f"{_prefix(field)}invalid size {text!r}: must not be negative")
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{_prefix(field)}invalid size {text!r}: {_SIZE_HINT}")
    number, unit = match.group(1), (match.group(2) or "").lower()
    value = Fraction(number) * _SIZE_UNITS[unit]
    if not unit and value.denominator != 1:
        raise ValueError(f"{_prefix(field)}invalid size {text!r}: not a whole number of bytes")
    return math.floor(value)


def format_size(n: int) -> str:
    """Human-readable binary size: ``512 B``, ``4 KiB``, ``1.5 GiB`` (one decimal at most)."""
    if n < 0:
        return "-" + format_size(-n)
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "PiB":
            text = f"{value:.1f}"
            if text.endswith(".0"):
                text = text[:-2]
            if text == "1024":  # rounding carried into the next unit
                continue
            return f"{text} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def parse_duration(text: str | int | float, field: str = "") -> float:
    """Return the number of seconds ``text`` denotes; ``math.inf`` for ``indefinite``.

    Raises ValueError for anything that is not a non-negative duration.
    """
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise ValueError(f"{_prefix(field)}invalid duration {text!r}: {_DURATION_HINT}")
    if isinstance(text, (int, float)):
        if math.isnan(text) or text < 0:
            raise ValueError(f"{_prefix(field)}invalid duration {text!r}: must be >= 0")
        return float(text)
    s = text.strip().lower()
    if s in _INFINITE_WORDS:
        return math.inf
    try:
        seconds = float(s)
    except ValueError:
        pass
    else:
        if s.startswith("-"):
            raise ValueError(f"{_prefix(field)}invalid duration {text!r}: must be >= 0")
        if math.isnan(seconds) or not s[:1].isdigit() and not s.startswith("."):
            raise ValueError(f"{_prefix(field)}invalid duration {text!r}: {_DURATION_HINT}")
        return seconds
    s = s.replace(" ", "")
    parts = _DURATION_PART_RE.findall(s)
    if not s or "".join(num + unit for num, unit in parts) != s:
        raise ValueError(f"{_prefix(field)}invalid duration {text!r}: {_DURATION_HINT}")
    return sum(float(num) * _DURATION_UNITS[unit] for num, unit in parts)


def format_duration(seconds: float) -> str:
    """Short human form of a duration: ``indefinite``, ``250ms``, ``30s``, ``5m``, ``1h30m``."""
    if math.isinf(seconds):
        return "indefinite"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)
