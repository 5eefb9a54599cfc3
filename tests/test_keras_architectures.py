"""ConvNeXt to ONNX (issue 37): Keras 3 runs grouped convolutions, ConvNeXt's depthwise
``Conv2D(groups=C)``, inside a ``jit_compile`` function that grappler never inlines, so the
ONNX graph kept a TensorFlow ``StatefulPartitionedCall`` that ONNX Runtime refused to load.

The model is keras.applications' own ConvNeXt builder (the code behind ConvNeXtTiny) at depth
1 per stage and small widths, so it converts in seconds; ConvNeXtTiny itself converts the
same way, and the conformance matrix runs this model at every precision of both formats
(docs/coverage.md)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edgekit.convert import ConvertOptions, convert
from edgekit.core.profiles import load_profile
from edgekit.runtime import Model
from edgekit.views.progress import SilentReporter

FLOORS = {"fp32": 0.999, "fp16": 0.99, "dynamic": 0.9, "int8": 0.9}  # as in the conformance matrix


@pytest.fixture(scope="module")
def convnext(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import keras
    from keras.src.applications.convnext import ConvNeXt

    keras.utils.set_random_seed(0)
    model = ConvNeXt(
        depths=[1, 1, 1, 1], projection_dims=[16, 32, 64, 128], input_shape=(32, 32, 3), weights=None,
        classes=10, classifier_activation=None, name="convnext_small",
    )
    assert any(getattr(layer, "groups", 1) > 1 for layer in model.layers)  # the grouped convolution
    folder = tmp_path_factory.mktemp("convnext")
    model.save(folder / "convnext.keras")
    np.savez(folder / "images.npz", x=np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32))
    return {"model": folder / "convnext.keras", "data": folder / "images.npz"}


def _agreement(convnext: dict[str, Path], tmp_path: Path, fmt: str, precision: str) -> float:
    import keras

    result = convert(ConvertOptions(
        model=convnext["model"], profile=load_profile("x86-gateway"), output=tmp_path / "c.ekb", format=fmt,
        precision=precision, calibration=convnext["data"], evaluation=convnext["data"], allow_accuracy_drop=True,
    ))  # fmt: skip
    assert result.manifest.artifacts[0].precision == precision
    with np.load(convnext["data"]) as data:
        x = data["x"]
    expected = keras.models.load_model(convnext["model"]).predict(x, verbose=0)
    with Model.load(result.output, allow_unsigned=True) as model:
        got = model.predict(x)
    return float(np.sum(expected * got) / (np.linalg.norm(expected) * np.linalg.norm(got)))


def test_convnext_converts_to_onnx_and_agrees_with_keras(convnext: dict[str, Path], tmp_path: Path) -> None:
    assert _agreement(convnext, tmp_path, "onnx", "fp32") >= FLOORS["fp32"]


@pytest.mark.slow
def test_an_int8_fallback_that_never_passes_ships_its_best_round_not_the_float_model(tmp_path: Path) -> None:
    """MobileNetV3Small with random weights: over 24 random images int8 changes the top class of a
    few, and no set of float layers brings every one back. The rounds stop once int8 is larger
    than fp16 would be, and the round that lost the least ships (before, the last round: every
    layer but one in float, as large as fp32, labelled int8)."""
    from conformance import ROWS, made

    path, data, _ = made(next(row for row in ROWS if row.name.startswith("MobileNetV3Small")))
    np.savez(tmp_path / "data.npz", **data)
    notes: list[str] = []

    class Notes(SilentReporter):
        def note(self, message: str) -> None:
            notes.append(message)

    result = convert(ConvertOptions(
        model=path, profile=load_profile("x86-gateway"), output=tmp_path / "m.ekb", format="tflite",
        precision="int8", calibration=tmp_path / "data.npz", evaluation=tmp_path / "data.npz",
        allow_accuracy_drop=True,
    ), Notes())  # fmt: skip
    shipped = result.manifest.artifacts[0]
    assert shipped.size <= 0.5 * shipped.metrics.float_parameter_bytes  # smaller than fp16 would be
    missed = [float(m) for note in notes for m in re.findall(r"drop (\d+\.\d+) pp >", note)]
    assert len(missed) >= 2 and shipped.metrics.accuracy is not None  # rounds ran
    # the best round, not the last; the notes print drops to 2 decimals (20.83 for 5 of 24 images)
    assert round(shipped.metrics.accuracy.drop, 2) <= min(missed)
