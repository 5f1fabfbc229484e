"""Regenerate the Python stubs in ``hefl/v1`` from ``proto/hefl/v1/*.proto``.

Run from anywhere: ``python proto/generate.py``. ``--check`` regenerates into a temporary
directory and exits non-zero when the committed stubs differ (CI and the test suite use it).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
GENERATED = ("hefl_pb2.py", "hefl_pb2.pyi", "hefl_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    grpc_include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{grpc_include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    check = parser.parse_args().check
    if not check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [
            name
            for name in GENERATED
            if not filecmp.cmp(Path(tmp) / "hefl/v1" / name, ROOT / "hefl/v1" / name, shallow=False)
        ]
    if stale:
        print(f"stale generated stubs: {', '.join(stale)}; run python proto/generate.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
