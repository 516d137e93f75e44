"""The import rules of docs/ARCHITECTURE.md hold: the import-linter contracts in pyproject.toml
(layers, the control plane's and the CSI plugin's allowed dependencies, no cycles, private
modules), plus what import-linter does not check: command modules never import each other, no
private name is imported from another module, and function-local imports of our own modules are
only the listed start-up-cost ones (never a way around a cycle).

Packages that do not exist yet (fluidfs.cluster, fluidfs.control) are optional layers in the
contracts, so the rules cover them from their first module on.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fluidfs", "csi")
CHECKED = ("fluidfs", "csi", "tools")  # private names and local imports: the tools too
GENERATED = ROOT / "csi" / "_gen"

#: function-local imports of our own modules, each with its reason (start-up cost or an optional
#: backend); anything else local is a cycle being dodged and must become a module-level import.
LAZY_IMPORTS = {
    ("fluidfs.cli.mount", "fluidfs.daemon.run"): "pyfuse3/trio/cache only on the foreground (daemon) path",
    ("fluidfs.cli.load", "fluidfs.warmup.mount"): "trio only when loading",
    ("fluidfs.cli.load", "fluidfs.warmup.source"): "trio only when loading",
    ("fluidfs.cli.options", "fluidfs.spec.parse"): "the Dataset parser (pydantic) only for commands that read one",
    ("fluidfs.sources.registry", "fluidfs.sources.local"): "a backend is loaded when a dataset uses it",
    ("fluidfs.sources.registry", "fluidfs.sources.http"): "a backend is loaded when a dataset uses it",
    ("fluidfs.sources.registry", "fluidfs.sources.s3"): "a backend is loaded when a dataset uses it (boto3)",
    ("fluidfs.control.main", "fluidfs.control.kube"): "the kubernetes client (an optional extra) only for that backend",
    ("fluidfs.control.main", "fluidfs.control.local"): "the local backend only when asked for",
    ("tools.bench.workloads", "tools.bench.store"): "the workload child stays small: its peak RSS is measured",
    ("tools.bench.workloads", "tools.bench.systems"): "the workload child stays small: its peak RSS is measured",
}


def _modules(top: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / top).rglob("*.py")):
        if GENERATED in path.parents:
            continue
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def test_import_linter_contracts() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run(
        [str(exe), "pyproject.toml", "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_command_modules_never_import_each_other() -> None:
    graph = grimp.build_graph("fluidfs", cache_dir=None)
    shared = {"fluidfs.cli", "fluidfs.cli.main", "fluidfs.cli.options"}
    commands = {m for m in graph.find_children("fluidfs.cli")} - shared
    assert {"fluidfs.cli.mount", "fluidfs.cli.load", "fluidfs.cli.status"} <= commands
    bad = [
        f"{m} imports {other}"
        for m in sorted(commands)
        for other in sorted(graph.find_modules_directly_imported_by(m) & commands)
    ]
    assert not bad, bad


def test_no_private_names_across_modules() -> None:
    bad = []
    for top in CHECKED:
        for module, path in _modules(top):
            tree = ast.parse(path.read_text(), str(path))
            module_aliases: dict[str, str] = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    source = _absolute(module, path, node)
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__") and source != module:
                            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name} from {source}")
                        module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        module_aliases[alias.asname or alias.name.split(".")[0]] = alias.name
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases
                    and module_aliases[node.value.id].split(".")[0] in CHECKED
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                ):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_function_local_imports_are_only_the_listed_lazy_ones() -> None:
    found = set()
    bad = []
    for top in CHECKED:
        for module, path in _modules(top):
            tree = ast.parse(path.read_text(), str(path))
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom):
                        targets = [_absolute(module, path, node)]
                    elif isinstance(node, ast.Import):
                        targets = [a.name for a in node.names]
                    else:
                        continue
                    for target in targets:
                        if target.split(".")[0] not in CHECKED:
                            continue
                        found.add((module, target))
                        if (module, target) not in LAZY_IMPORTS:
                            bad.append(
                                f"{path.relative_to(ROOT)}:{node.lineno}: {module} imports {target} in a function"
                            )
    assert not bad, "\n".join(bad)
    assert not set(LAZY_IMPORTS) - found, f"stale entries: {set(LAZY_IMPORTS) - found}"
