"""The model-coverage matrix: architectures the rest of the suite does not use, converted at
every precision x86-gateway lists, run in ``edgekit.runtime`` and compared with the source.

Used by ``tests/test_conformance.py`` (one test per cell, ``pytest --runslow``) and by
``python tests/conformance.py``, which prints the table in ``docs/coverage.md``.

Each cell converts with x86-gateway's accuracy gate (top-1 agreement within 1 point, with
the int8 and fp16 fallbacks). A cell passes when every output agrees with the source model
on the same inputs: cosine at least 0.999 for fp32, 0.99 for fp16 and 0.9 for dynamic and
int8. Otherwise it must be a typed refusal with a one-line message: the gate's verdict with
its numbers, or the engine or converter naming the op it cannot handle.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnx_graphs  # noqa: E402

FLOORS = {"fp32": 0.999, "fp16": 0.99, "dynamic": 0.9, "int8": 0.9}
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
SAMPLES = 24


@dataclass(frozen=True)
class Row:
    name: str
    formats: tuple[str, ...]
    make: Callable[
        [Path], tuple[Path, dict[str, np.ndarray], Callable[[dict[str, np.ndarray]], dict[str, Any]]]
    ]
    """Writes the model; returns it, its data (one array per input) and the source's predict
    (outputs by name)."""
    per_call: bool = False
    """The data holds one call per entry (a streaming model): compare call by call."""
    eval_output: str | None = None


def _keras(model: Any, folder: Path, data: dict[str, np.ndarray]) -> tuple[Path, dict[str, np.ndarray], Any]:
    import keras

    from edgekit.converters.keras_export import input_names, output_names

    data = dict(zip(input_names(model), data.values(), strict=True))  # Keras numbers repeated names
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:  # random weights make activations vanish; recalibrate BatchNorm on data
        layer.momentum = 0.0
    if norms:
        model(list(data.values()) if len(data) > 1 else next(iter(data.values())), training=True)
    path = folder / f"{model.name}.keras"
    model.save(path)

    def predict(feed: dict[str, np.ndarray]) -> dict[str, Any]:
        out = model(list(feed.values()) if len(feed) > 1 else next(iter(feed.values())), training=False)
        return dict(zip(output_names(model), out if isinstance(out, (list, tuple)) else [out], strict=True))

    return path, data, predict


def _application(name: str, **shape: Any) -> Callable[[Path], Any]:
    """``shape``: ``input_shape`` when the model fixes one; else its default input, height and
    width left dynamic as users get it (MobileNetV3)."""

    def make(folder: Path) -> Any:
        import keras

        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None, classifier_activation=None, **shape)
        image = np.random.default_rng(0).uniform(0, 255, (SAMPLES, 32, 32, 3)).astype(np.float32)
        return _keras(model, folder, {"image": image})

    return make


def _recurrent(kind: str) -> Callable[[Path], Any]:
    def make(folder: Path) -> Any:
        import keras

        keras.utils.set_random_seed(0)
        inputs = keras.Input((20, 6), name="sensors")
        hidden = getattr(keras.layers, kind)(16)(inputs)
        model = keras.Model(inputs, keras.layers.Dense(4, name="state")(hidden), name=kind.lower())
        data = {"sensors": np.random.default_rng(1).normal(0, 1, (SAMPLES, 20, 6)).astype(np.float32)}
        return _keras(model, folder, data)

    return make


def _two_inputs(folder: Path) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 3), name="image")
    meta = keras.Input((5,), name="meta")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(image))
    x = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([x, meta]))
    model = keras.Model([image, meta], [keras.layers.Dense(3, name="scores")(x), keras.layers.Dense(4, name="box")(x)],
                        name="fusion")
    rng = np.random.default_rng(2)
    data = {"image": rng.uniform(0, 1, (SAMPLES, 16, 16, 3)).astype(np.float32),
            "meta": rng.normal(0, 1, (SAMPLES, 5)).astype(np.float32)}  # fmt: skip
    return _keras(model, folder, data)


def _onnx(graph: Any, data: dict[str, np.ndarray], folder: Path, name: str) -> Any:
    import onnxruntime as ort

    path = onnx_graphs.save(graph, folder / f"{name}.onnx")
    return path, data, _session_predict(ort.InferenceSession(str(path)))


def _session_predict(session: Any) -> Callable[[dict[str, np.ndarray]], dict[str, Any]]:
    names = [o.name for o in session.get_outputs()]
    return lambda feed: dict(zip(names, session.run(None, feed), strict=True))


def _fusion_onnx(opset: int) -> Callable[[Path], Any]:
    def make(folder: Path) -> Any:
        return _onnx(
            onnx_graphs.image_and_ids(opset), onnx_graphs.image_and_ids_data(SAMPLES), folder, f"op{opset}"
        )

    return make


def _graph(build: Callable[[], Any], name: str, shape: tuple[int, ...]) -> Callable[[Path], Any]:
    def make(folder: Path) -> Any:
        import onnxruntime as ort

        data = {name: np.random.default_rng(4).uniform(0, 1, (SAMPLES, *shape)).astype(np.float32)}
        path = onnx_graphs.save(build(), folder / "graph.onnx")
        one = _session_predict(ort.InferenceSession(str(path)))

        def predict(feed: dict[str, np.ndarray]) -> dict[str, Any]:  # one sample a call: the batch may be fixed
            calls = [one({k: v[i : i + 1] for k, v in feed.items()}) for i in range(len(feed[name]))]
            return {out: np.concatenate([c[out] for c in calls]) for out in calls[0]}

        return path, data, predict

    return make


def _silero(folder: Path) -> Any:
    from third_party import silero_vad

    rng = np.random.default_rng(3)
    data = {"input": rng.normal(0, 0.1, (SAMPLES, 1, 512)).astype(np.float32),
            "state": rng.normal(0, 0.5, (SAMPLES, 2, 1, 128)).astype(np.float32),
            "sr": np.full(SAMPLES, 16000, np.int64)}  # fmt: skip
    import onnxruntime as ort

    return silero_vad(), data, _session_predict(ort.InferenceSession(str(silero_vad())))


ROWS = (
    Row("MobileNetV3Small (keras.applications, 32 px)", ("tflite", "onnx"), _application("MobileNetV3Small")),
    Row(
        "EfficientNetB0 (keras.applications, 32 px)",
        ("tflite", "onnx"),
        _application("EfficientNetB0", input_shape=(32, 32, 3)),
    ),
    Row("GRU sensor model", ("tflite", "onnx"), _recurrent("GRU")),
    Row("LSTM sensor model", ("tflite", "onnx"), _recurrent("LSTM")),
    Row("two-input functional Keras model, two outputs", ("tflite", "onnx"), _two_inputs),
    *(
        Row(f"ONNX image + int64 ids, two outputs, opset {op}", ("onnx",), _fusion_onnx(op))
        for op in (11, 13, 17, 18)
    ),
    Row("Silero VAD 16k (silero-vad 6.2.3): audio, state, sample rate", ("onnx",), _silero, True),
    Row("ONNX CNN with its batch fixed at 1", ("onnx",), _graph(lambda: onnx_graphs.conv_classifier(13, batch=1),
                                                               "image", (3, 8, 8))),
    Row("ONNX detector head: two score maps, two box maps", ("onnx",),
        _graph(onnx_graphs.score_and_box_maps, "image", (3, 16, 16))),
)


@dataclass(frozen=True)
class Cell:
    passed: bool
    detail: str
    """Worst cosine over the outputs, or the refusal's message."""


_MADE: dict[str, tuple[Path, dict[str, np.ndarray], Any]] = {}
_ROOT = Path(tempfile.mkdtemp(prefix="edgekit-conformance-"))


def made(row: Row) -> tuple[Path, dict[str, np.ndarray], Any]:
    """``row.make``'s model, data and predict, made once per process."""
    if row.name not in _MADE:
        folder = _ROOT / str(len(_MADE))
        folder.mkdir()
        _MADE[row.name] = row.make(folder)
    return _MADE[row.name]


def run_cell(row: Row, fmt: str, precision: str, folder: Path) -> Cell:
    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.errors import AccuracyBudgetError, ConversionError, EdgekitError, RuntimeBackendError
    from edgekit.core.profiles import load_profile
    from edgekit.runtime import Model

    path, data, predict = made(row)
    np.savez(folder / "data.npz", **data)
    try:
        result = convert(ConvertOptions(
            model=path, profile=load_profile("x86-gateway"), output=folder / "m.ekb", format=fmt,
            precision=precision, calibration=folder / "data.npz", evaluation=folder / "data.npz",
            force=True, eval_output=row.eval_output,
        ))
    except EdgekitError as exc:  # a refusal of the model, not of the test's own inputs
        message = str(exc)
        typed = isinstance(exc, (AccuracyBudgetError, ConversionError, RuntimeBackendError))
        return Cell(typed and "\n" not in message and bool(message), f"refused: {message}")
    model = Model.load(result.output, allow_unsigned=True)
    names = [o.name for o in model.info.outputs]
    cosines: dict[str, list[float]] = {name: [] for name in names}
    for i in range(SAMPLES if row.per_call else 1):
        feed = {n: np.asarray(a[i]) for n, a in data.items()} if row.per_call else data
        want = predict(feed)
        for name, out in zip(names, model.run(feed), strict=True):
            cosines[name].append(_cosine(out, np.asarray(want[name])))
    worst = min(float(np.mean(values)) for values in cosines.values())  # per output, mean over calls
    return Cell(worst >= FLOORS[precision], f"{worst:.4f}")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norms = np.linalg.norm(a64) * np.linalg.norm(b64)
    return 1.0 if norms == 0 and not a64.any() and not b64.any() else float(a64 @ b64 / max(norms, 1e-30))


def _short(detail: str) -> str:
    """A table cell: the cosine, or the refusal's gist."""
    if "loses too much accuracy" in detail:
        verdict = detail.split(": ", 3)[-1].split(";")[0]
        return "gate: " + verdict.replace("top-1 agreement with float", "agreement").split(": drop")[0]
    return detail if len(detail) < 90 else detail[:87] + "…"


def main() -> None:
    print("| model | format | " + " | ".join(PRECISIONS) + " |")
    print("|---|---|" + "---|" * len(PRECISIONS))
    for row in ROWS:
        for fmt in row.formats:
            cells = []
            for precision in PRECISIONS:
                with tempfile.TemporaryDirectory() as tmp:
                    cell = run_cell(row, fmt, precision, Path(tmp))
                cells.append(("✓ " if cell.passed else "✗ ") + _short(cell.detail))
            print(f"| {row.name} | {fmt} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
