"""Regenerate the gRPC Python modules of ``src/clipserve/v1/clip.proto``.

Writes ``clip_pb2.py``, ``clip_pb2_grpc.py`` and their typed stubs (``.pyi``) beside the proto.
Needs the dev extra (``grpcio-tools``, ``mypy-protobuf``). Usage: ``python scripts/gen_proto.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

SOURCE_ROOT = Path(__file__).resolve().parent.parent / "src"
PROTO = "clipserve/v1/clip.proto"


def main() -> int:
    # protoc finds the mypy plugins on PATH: put this interpreter's scripts directory first.
    scripts = Path(sys.executable).parent
    os.environ["PATH"] = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"
    include = Path(protoc.__file__).parent / "_proto"
    status: int = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{SOURCE_ROOT}",
            f"-I{include}",
            f"--python_out={SOURCE_ROOT}",
            f"--grpc_python_out={SOURCE_ROOT}",
            f"--mypy_out={SOURCE_ROOT}",
            f"--mypy_grpc_out={SOURCE_ROOT}",
            str(SOURCE_ROOT / PROTO),
        ]
    )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
