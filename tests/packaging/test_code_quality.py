"""The code is clean by the project's own tools (configuration in pyproject.toml): mypy --strict over
the package, the CSI plugin and the tools; ruff lint and ruff format over them and the tests.
The generated CSI stubs (csi/_gen) are excluded by the configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TYPED = ("fluidfs", "csi", "tools")
LINTED = ("fluidfs", "csi", "tools", "tests")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_strict(tmp_path: Path) -> None:
    res = _run("mypy", "--strict", "--cache-dir", str(tmp_path / "mypy"), *TYPED)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_lint() -> None:
    res = _run("ruff", "check", "--no-cache", *LINTED)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format() -> None:
    res = _run("ruff", "format", "--check", "--no-cache", *LINTED)
    assert res.returncode == 0, "run `ruff format`:\n" + res.stdout + res.stderr
