"""Shared pytest wiring: server fixtures live in their own modules."""
from __future__ import annotations

pytest_plugins = ["tests.support.fixtures_s3", "tests.support.fixtures_http"]
