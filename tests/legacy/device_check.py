"""A device's virtualenv (``pip install 'edgekit[tflite,onnx]'``, no TensorFlow): the runtime
loads the bundles the main test run exported and gives the modern runtime's outputs, and
nothing imported TensorFlow. Run by .ci/run as a script: this venv has no pytest."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edgekit.core.signing import Trust
from edgekit.runtime import Model

BUNDLES = Path(__file__).resolve().parents[2] / "build" / "runtime-bundles"


def main() -> None:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("device venv: TensorFlow is installed, which edgekit[tflite,onnx] must not pull in")
    expected = np.load(BUNDLES / "expected.npz")
    for name in ("tflite-fp32", "tflite-int8", "onnx-int8"):
        with Model.load(BUNDLES / f"{name}.ekb", trust=Trust(BUNDLES / "trust")) as model:
            np.testing.assert_allclose(model.predict(expected["x"]), expected[name], atol=1e-5)
    if "tensorflow" in sys.modules:
        raise SystemExit("device venv: the runtime imported TensorFlow")
    print("device venv: 3 bundles ran without TensorFlow, with the outputs the main run had")


if __name__ == "__main__":
    main()
