"""Regenerate the gRPC stubs from grpc_predict_v2.proto (needs grpcio-tools; not at run time).

    python runtime/serve/proto/generate.py [OUT_FOLDER]

The stubs import each other as ``edgekit.runtime.serve.proto``, so protoc runs on a copy of
the .proto laid out under that package path.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PACKAGE = Path("edgekit/runtime/serve/proto")


def main(out: Path = HERE) -> int:
    """Write the stubs into ``out`` (default: beside the .proto); protoc's exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / PACKAGE).mkdir(parents=True)
        shutil.copy(HERE / "grpc_predict_v2.proto", root / PACKAGE)
        status = protoc.main([
            "protoc", f"-I{root}", f"--python_out={root}", f"--pyi_out={root}", f"--grpc_python_out={root}",
            str(root / PACKAGE / "grpc_predict_v2.proto"),
        ])
        if status:
            return status
        for made in (root / PACKAGE).glob("grpc_predict_v2_pb2*"):
            shutil.copy(made, out / made.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
