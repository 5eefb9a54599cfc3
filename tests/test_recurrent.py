"""Recurrent Keras models to TFLite (issue 14, item 6; issue 37): a GRU, LSTM or Bidirectional
sensor model failed at every TFLite precision with a TensorListReserve legalization error;
unrolled over its fixed sequence length it converts, runs in edgekit.runtime and agrees with
Keras. Stacked layers (``return_sequences=True`` into the next) are unrolled too; the
conformance matrix runs both formats at every precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.convert import ConvertOptions, convert
from edgekit.core.profiles import load_profile
from edgekit.runtime import Model

STEPS, FEATURES, CLASSES = 16, 3, 3


def _signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three-axis vibration windows whose dominant frequency is the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    t = np.arange(STEPS)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, FEATURES))
    x = np.sin(2 * np.pi * (1 + y)[:, None, None] * t / STEPS + phase) + rng.normal(
        0, 0.1, (n, STEPS, FEATURES)
    )
    return x.astype(np.float32), y


def _recurrent(kind: str) -> list:  # type: ignore[type-arg]
    """The recurrent part of the model: one layer, a Bidirectional one, or two stacked."""
    import keras

    if kind == "stacked":  # the first returns every step to the second
        return [keras.layers.GRU(12, return_sequences=True), keras.layers.Bidirectional(keras.layers.LSTM(8))]
    if kind.startswith("Bidirectional"):
        return [keras.layers.Bidirectional(getattr(keras.layers, kind.split("-")[1])(12))]
    return [getattr(keras.layers, kind)(12)]


@pytest.fixture(scope="module", params=[
    "GRU", "LSTM", "Bidirectional-LSTM", pytest.param("stacked", marks=pytest.mark.slow),
])  # fmt: skip  (the conformance matrix adds a Bidirectional GRU, at every precision of both formats)
def sensor_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((STEPS, FEATURES)), *_recurrent(request.param), keras.layers.Dense(CLASSES, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(*_signals(600, 1), epochs=8, verbose=0)
    folder = tmp_path_factory.mktemp(request.param.lower())
    model.save(folder / "sensor.keras")
    x, y = _signals(200, 2)
    np.savez(folder / "calib.npz", x=x[:100])
    np.savez(folder / "eval.npz", x=x[100:], y=y[100:])
    return {
        "model": folder / "sensor.keras",
        "calibration": folder / "calib.npz",
        "evaluation": folder / "eval.npz",
    }


@pytest.mark.parametrize(
    ("precision", "min_cosine"), [("fp32", 0.999), pytest.param("int8", 0.9, marks=pytest.mark.slow)]
)
def test_recurrent_models_convert_to_tflite_and_agree_with_keras(
    sensor_model: dict[str, Path], tmp_path: Path, precision: str, min_cosine: float
) -> None:
    import keras

    result = convert(ConvertOptions(
        model=sensor_model["model"], profile=load_profile("raspberry-pi-4"), output=tmp_path / "sensor.ekb",
        format="tflite", precision=precision, calibration=sensor_model["calibration"],
        evaluation=sensor_model["evaluation"],
    ))
    assert result.manifest.artifacts[0].metrics.accuracy.gate == "passed"  # type: ignore[union-attr]
    with np.load(sensor_model["evaluation"]) as data:
        x = data["x"]
    expected = keras.models.load_model(sensor_model["model"]).predict(x, verbose=0)
    with Model.load(result.output, allow_unsigned=True) as model:
        got = model.predict(x)
    cosine = np.sum(expected * got, axis=1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
    assert cosine.mean() >= min_cosine
