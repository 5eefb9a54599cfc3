"""The runtime on an old device image: tflite-runtime 2.14 and numpy<2, no TensorFlow.

Run by .ci/run in its own virtualenv, against bundles the main test run exported to
build/runtime-bundles (tests/test_runtime.py::test_export_bundles_for_the_legacy_runtime_leg).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.core.errors import RuntimeBackendError
from edgekit.core.signing import Trust
from edgekit.runtime import Model

BUNDLES = Path(__file__).resolve().parents[2] / "build" / "runtime-bundles"
pytestmark = pytest.mark.skipif(
    not (BUNDLES / "expected.npz").exists(), reason="run the main test suite first: it exports the bundles"
)


def test_this_is_the_legacy_image() -> None:
    assert int(np.__version__.split(".")[0]) < 2
    with pytest.raises(ImportError):
        import ai_edge_litert  # noqa: F401
    import tflite_runtime

    assert tflite_runtime.__version__.startswith("2.14")


@pytest.mark.parametrize("name", ["tflite-fp32", "tflite-fp16", "tflite-int8", "onnx-int8"])
def test_bundles_run_and_match_the_modern_runtime(name: str) -> None:
    expected = np.load(BUNDLES / "expected.npz")
    model = Model.load(BUNDLES / f"{name}.ekb", trust=Trust(BUNDLES / "trust"))
    if name.startswith("tflite"):
        assert model.info.engine.startswith("tflite-runtime 2.14")
    out = model.predict(expected["x"])
    scale = model.info.outputs[0].scale or 1e-5
    np.testing.assert_allclose(out, expected[name], atol=2 * scale)
    assert np.mean(out.argmax(1) == expected[name].argmax(1)) >= 0.97
    assert "tensorflow" not in sys.modules


def test_newer_ops_get_a_clear_error() -> None:
    with pytest.raises(RuntimeBackendError) as err:
        Model.load(BUNDLES / "tflite-dynamic.ekb", trust=Trust(BUNDLES / "trust"))
    message = str(err.value)
    assert "the model uses FULLY_CONNECTED version" in message and "newer than tflite-runtime 2.14" in message
    assert "pip install 'edgekit[tflite]'" in message
