"""Shared pytest wiring: server fixtures live in their own modules."""

from __future__ import annotations

pytest_plugins = ["tests.fixtures_s3", "tests.fixtures_http"]
