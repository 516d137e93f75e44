"""Regenerate the committed CSI gRPC stubs in csi/_gen (csi_pb2.py + .pyi, csi_pb2_grpc.py) from csi/proto/csi.proto.

Usage: ``python tools/gen_csi_stubs.py [--check] [--out DIR]``.  ``--check`` regenerates into a
temporary directory and exits 1 if the committed stubs differ (used by tests/csi/test_stubs.py).

Caveats: the output depends on the grpcio-tools version (its header names the protobuf version);
regenerate with the version pinned in pyproject's dev extras.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "csi" / "proto"
STUB_DIR = ROOT / "csi" / "_gen"
STUBS = ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> None:
    """Run protoc (from grpcio-tools) on csi.proto, writing both stubs into ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_DIR / "csi.proto"),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    grpc_file = out_dir / "csi_pb2_grpc.py"
    text = grpc_file.read_text()
    # protoc emits an absolute import; the stubs live inside the ``csi._gen`` package.
    text = re.sub(r"^import csi_pb2 as csi__pb2$", "from . import csi_pb2 as csi__pb2", text, flags=re.M)
    grpc_file.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if committed stubs are stale")
    parser.add_argument("--out", type=pathlib.Path, default=STUB_DIR)
    ns = parser.parse_args(argv)
    if not ns.check:
        generate(ns.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        stale = [n for n in STUBS if (pathlib.Path(tmp) / n).read_text() != (STUB_DIR / n).read_text()]
    if stale:
        print(f"stale CSI stubs: {', '.join(stale)}; run python tools/gen_csi_stubs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
