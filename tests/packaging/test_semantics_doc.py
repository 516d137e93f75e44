"""docs/SEMANTICS.md cannot rot: each of its sections names the tests that check it, every named
test exists, and every test written for the document is named by it."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "SEMANTICS.md"
#: the test modules written for the document: each of their tests must be named by it
OWN = sorted((ROOT / "tests" / "fuse").glob("test_semantics*.py"))
REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def sections() -> dict[str, str]:
    """The ``###`` sections of "Detailed semantics": title -> text."""
    text = DOC.read_text()
    detailed = text.split("\n## Detailed semantics\n", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### (.+)$", detailed, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


@functools.cache
def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {
        n.name
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")
    }


def test_every_section_ends_with_the_tests_that_check_it() -> None:
    found = sections()
    assert len(found) >= 10, sorted(found)
    for title, body in found.items():
        paragraphs = [p for p in body.strip().split("\n\n") if p.strip()]
        last = paragraphs[-1] if paragraphs else ""
        assert last.startswith("Checked by: "), f"section {title!r} does not end with 'Checked by: ...'"
        refs = REF.findall(last)
        rest = REF.sub("", last.removeprefix("Checked by: ")).replace(",", "").split()
        assert refs and not rest, f"section {title!r}: 'Checked by' names only `tests/...py::test_name`: {rest}"


def test_every_named_test_exists() -> None:
    refs = REF.findall(DOC.read_text())
    assert refs
    missing = []
    for rel, name in refs:
        path = ROOT / rel
        if not path.is_file() or name not in defined_tests(path):
            missing.append(f"{rel}::{name}")
    assert not missing, f"docs/SEMANTICS.md names tests that do not exist: {missing}"


def test_every_semantics_test_is_named_by_the_document() -> None:
    named = set(REF.findall(DOC.read_text()))
    assert OWN
    unnamed = [
        f"{path.relative_to(ROOT)}::{name}"
        for path in OWN
        for name in sorted(defined_tests(path))
        if (str(path.relative_to(ROOT)), name) not in named
    ]
    assert not unnamed, f"tests that no section of docs/SEMANTICS.md names: {unnamed}"
