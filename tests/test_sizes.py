"""Unit tests for fluidfs.sizes: parse_size, format_size, parse_duration, format_duration."""

from __future__ import annotations

import math

import pytest

from fluidfs.sizes import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512Mi", 512 * 2**20),
        ("4Gi", 4 * 2**30),
        ("10G", 10 * 10**9),
        ("1.5Gi", 3 * 2**29),
        ("100k", 100_000),
        ("100K", 100_000),
        ("1024", 1024),
        (1024, 1024),
        (0, 0),
        ("64MiB", 64 * 2**20),
        ("1GB", 10**9),
        ("1gib", 2**30),
        ("2 Ti", 2 * 2**40),
        (" 7ki ", 7 * 1024),
        ("1T", 10**12),
        ("100B", 100),
        ("0.5k", 500),
        ("1.1Gi", int(1.1 * 2**30)),  # rounded down to a whole byte
    ],
)
def test_parse_size_accepts(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid size '': expected a number with an optional unit"),
        ("abc", "invalid size 'abc': expected a number with an optional unit"),
        ("10X", "invalid size '10X': expected a number"),
        ("Gi", "invalid size 'Gi': expected a number"),
        ("1.5", "invalid size '1.5': not a whole number of bytes"),
        ("-1Gi", "invalid size '-1Gi': must not be negative"),
        (-5, "invalid size -5: must not be negative"),
        (True, "invalid size True: expected a number"),
        (1.5, "invalid size 1.5: expected a number"),
        (None, "invalid size None: expected a number"),
        ("1 0", "invalid size '1 0': expected a number"),
    ],
)
def test_parse_size_rejects(text: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_parse_size_field_prefix() -> None:
    with pytest.raises(ValueError, match=r"^--cache-size: invalid size 'x'"):
        parse_size("x", field="--cache-size")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (3 * 2**29, "1.5 GiB"),
        (2**30, "1 GiB"),
        (64 * 2**20, "64 MiB"),
        (3 * 2**40, "3 TiB"),
        (2**20 - 1, "1 MiB"),  # 1023.999 KiB rounds into the next unit
        (5 * 2**50, "5 PiB"),
        (-2048, "-2 KiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("n", [1, 4096, 3 * 2**29, 64 * 2**20, 10**12])
def test_format_then_parse_is_close(n: int) -> None:
    back = parse_size(format_size(n).replace(" ", "").replace("B", "") or "0")
    assert abs(back - n) <= n * 0.05


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (30, 30.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("0.5", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        (" 10S ", 10.0),
        ("0", 0.0),
        ("indefinite", math.inf),
        ("inf", math.inf),
        ("forever", math.inf),
        ("Indefinite", math.inf),
        (math.inf, math.inf),
    ],
)
def test_parse_duration_accepts(text: str | float, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid duration '': expected seconds or a number with a unit"),
        ("soon", "invalid duration 'soon': expected seconds"),
        ("5y", "invalid duration '5y': expected seconds"),
        ("1h30", "invalid duration '1h30': expected seconds"),
        ("nan", "invalid duration 'nan': expected seconds"),
        ("-1", "invalid duration '-1': must be >= 0"),
        (-1, "invalid duration -1: must be >= 0"),
        (True, "invalid duration True: expected seconds"),
        ([], "invalid duration []: expected seconds"),
    ],
)
def test_parse_duration_rejects(text: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_parse_duration_field_prefix() -> None:
    with pytest.raises(ValueError, match=r"^--ttl: invalid duration 'x'"):
        parse_duration("x", field="--ttl")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (math.inf, "indefinite"),
        (0.25, "250ms"),
        (30, "30s"),
        (1.5, "1.5s"),
        (300, "5m"),
        (5400, "1h30m"),
        (86400 + 1, "1d1s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
