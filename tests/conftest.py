"""Shared pytest wiring: the server fixtures (tests/support) and one marker per test layer.

Every test lives in a layer folder and gets that folder's marker automatically, so
``pytest -m "unit or component"`` or ``pytest -m "not slow"`` select layers; a test module outside
the layer folders is a collection error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.support.fixtures_s3", "tests.support.fixtures_http"]

TESTS = Path(__file__).resolve().parent
#: layer folder = marker name (registered in pyproject.toml)
LAYERS = ("unit", "component", "sources", "fuse", "csi", "packaging", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        layer = parts[0] if len(parts) > 1 else ""
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in a layer folder ({', '.join(LAYERS)})")
        item.add_marker(getattr(pytest.mark, layer))
