"""No module of the package, the CSI plugin or the tools is over the project's size limit (about
500 lines, docs/ARCHITECTURE.md "Import rules"): a longer one is split along a seam of its
responsibility.  The generated CSI stubs (csi/_gen) are not counted."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("fluidfs", "csi", "tools")
GENERATED = ROOT / "csi" / "_gen"
MAX_LINES = 520  # the ~500-line rule, with a little slack for a docstring or a fix


def _modules() -> list[Path]:
    return sorted(p for d in CHECKED for p in (ROOT / d).rglob("*.py") if not p.is_relative_to(GENERATED))


def test_modules_are_at_most_the_line_limit() -> None:
    modules = _modules()
    assert len(modules) > 50, "the module walk found too few files"
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in modules}
    offenders = {path: n for path, n in sizes.items() if n > MAX_LINES}
    listed = ", ".join(f"{path} ({n} lines)" for path, n in sorted(offenders.items(), key=lambda kv: -kv[1]))
    assert not offenders, f"modules over {MAX_LINES} lines (split them along a seam): {listed}"
