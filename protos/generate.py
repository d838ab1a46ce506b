"""Generate the Python stubs of the semserve.v1 contract with grpcio-tools.

The protos live under ``protos/semserve/v1`` so their wire names are ``semserve.v1.*``;
the stubs live in the ``semserve_client.v1`` package so the client can be used without
the server. protoc writes absolute imports (``from semserve.v1 import common_pb2``),
which this script rewrites to the stub package. ``tests/test_stubs.py`` runs the same
function into a temporary folder and fails when the committed stubs differ.

Usage: python protos/generate.py [OUT_DIR]   (default: client/semserve_client/v1)
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_PACKAGE_DIR = PROTO_ROOT / "semserve" / "v1"
DEFAULT_OUT = PROTO_ROOT.parent / "client" / "semserve_client" / "v1"
STUB_PACKAGE = "semserve_client.v1"
INIT_TEXT = '"""Generated stubs of the semserve.v1 gRPC contract (see protos/generate.py)."""\n'


def proto_files() -> list[Path]:
    return sorted(PROTO_PACKAGE_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into out_dir."""
    from grpc_tools import protoc  # imported here so importing this module stays cheap

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        written = []
        for src in sorted((Path(tmp) / "semserve" / "v1").iterdir()):
            text = re.sub(r"^from semserve\.v1 import", f"from {STUB_PACKAGE} import", src.read_text(), flags=re.M)
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    init = out_dir / "__init__.py"
    init.write_text(INIT_TEXT)
    written.append(init)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(target):
        print(path)
