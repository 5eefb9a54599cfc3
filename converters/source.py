"""Load the model a user trained: Keras 3 ``.keras``, legacy ``.h5``, a SavedModel dir, or ONNX.

Keras sources are exported to a SavedModel, the one input the TFLite converter and tf2onnx
both handle for Keras 3 (``from_keras_model`` breaks on Keras 3 models). ONNX sources are
checked, loaded with their external data, and run in ONNX Runtime; they never import
TensorFlow.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.converters.onnx_source import load_onnx_source
from edgekit.converters.source_model import (
    ACCEPTED,
    SourceModel,
    TensorSpec,
    detect_kind,
    first_line,
    hash_path,
)
from edgekit.errors import EdgekitError, MissingDependencyError, ModelFormatError

__all__ = ["ACCEPTED", "SourceModel", "TensorSpec", "detect_kind", "first_line", "hash_path", "load_source"]


def import_tensorflow() -> Any:
    """Import TensorFlow with its C++ and Python log noise turned down."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import absl.logging
        import tensorflow as tf
    except ImportError as exc:
        raise MissingDependencyError("tensorflow", "convert", "converting models") from exc
    tf.get_logger().setLevel("ERROR")
    absl.logging.set_verbosity(absl.logging.ERROR)
    return tf


@contextmanager
def load_source(
    path: Path, input_shape: tuple[int | None, ...] | None = None, kind: str | None = None
) -> Iterator[SourceModel]:
    """Load ``path`` (of ``kind``, detected when not given); Keras models are exported to a
    temporary SavedModel, removed on exit.

    ``input_shape`` fixes an ONNX model's dynamic input dims (``None`` keeps one dynamic).
    """
    kind = kind or detect_kind(path)
    if kind == "onnx":
        yield load_onnx_source(path, input_shape)
        return
    if input_shape is not None:
        raise ModelFormatError("--input-shape applies to ONNX models; other inputs have fixed shapes")
    if kind == "tflite":
        yield _from_tflite(path)
        return
    tf = import_tensorflow()
    with tempfile.TemporaryDirectory(prefix="edgekit-savedmodel-") as tmp:
        if kind == "saved_model":
            yield _from_saved_model(tf, path)
        else:
            yield _from_keras(tf, path, kind, Path(tmp) / "saved_model")


def _from_keras(tf: Any, path: Path, kind: str, export_dir: Path) -> SourceModel:
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file; all mean "cannot load".
        raise ModelFormatError(
            f"{path}: cannot be loaded as a Keras model ({first_line(exc)}); "
            "check that the file is complete, or save it again with model.save()"
        ) from exc
    if len(model.inputs) != 1:
        raise ModelFormatError(
            f"{path}: the model has {len(model.inputs)} inputs; edgekit converts single-input models"
        )
    model.export(str(export_dir), format="tf_saved_model", verbose=False)

    def predict(x: np.ndarray) -> np.ndarray:
        out = model(x, training=False)
        return np.asarray(out[0] if isinstance(out, (list, tuple)) else out)

    return SourceModel(
        path=path,
        kind=kind,
        sha256=hash_path(path),
        size_bytes=path.stat().st_size,
        input=_spec(model.inputs[0]),
        outputs=tuple(_spec(t) for t in model.outputs),
        parameter_bytes=sum(int(np.prod(w.shape)) * 4 for w in model.weights),
        saved_model_dir=export_dir,
        _predict=predict,
        keras_model=model,
    )


def _from_saved_model(tf: Any, path: Path) -> SourceModel:
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises several types for a bad SavedModel.
        raise ModelFormatError(f"{path}: cannot be loaded as a SavedModel ({first_line(exc)})") from exc
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelFormatError(
            f"{path}: the SavedModel has no 'serving_default' signature; export it with one"
        )
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise ModelFormatError(
            f"{path}: the signature has {len(inputs)} inputs; edgekit converts single-input models"
        )
    ((input_name, input_spec),) = inputs.items()
    output_names = sorted(signature.structured_outputs)

    def predict(x: np.ndarray) -> np.ndarray:
        result = signature(**{input_name: tf.constant(x, dtype=input_spec.dtype)})
        return np.asarray(result[output_names[0]])

    variables = getattr(loaded, "variables", [])
    return SourceModel(
        path=path,
        kind="saved_model",
        sha256=hash_path(path),
        size_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        input=_spec(input_spec, input_name),
        outputs=tuple(_spec(signature.structured_outputs[n], n) for n in output_names),
        parameter_bytes=sum(int(np.prod(v.shape)) * 4 for v in variables),
        saved_model_dir=path,
        _predict=predict,
    )


def _from_tflite(path: Path) -> SourceModel:
    from edgekit.runtime.backends import TFLiteBackend

    content = path.read_bytes()
    try:
        backend = TFLiteBackend(content)
    except EdgekitError as exc:
        raise ModelFormatError(f"{path}: {exc}") from exc

    def no_float_model(x: np.ndarray) -> np.ndarray:
        raise ModelFormatError(f"{path}: a ready-made TFLite file has no float model to compare with")

    def spec(info: Any) -> TensorSpec:  # data is given as float; the runtime quantizes it
        return TensorSpec(info.name, info.shape, "float32" if info.quantized else info.dtype)

    return SourceModel(
        path=path,
        kind="tflite",
        sha256=hash_path(path),
        size_bytes=len(content),
        input=spec(backend.inputs[0]),
        outputs=tuple(spec(o) for o in backend.outputs),
        parameter_bytes=len(content),
        _predict=no_float_model,
        tflite_content=content,
    )


def _spec(tensor: Any, name: str | None = None) -> TensorSpec:
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    dtype = getattr(tensor.dtype, "name", str(tensor.dtype))
    return TensorSpec(name=name or str(getattr(tensor, "name", None) or "input"), shape=shape, dtype=dtype)
