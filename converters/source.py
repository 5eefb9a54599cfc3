"""Load the model a user trained: Keras 3 ``.keras``, legacy ``.h5``, a SavedModel dir, or ONNX.

Keras sources are exported to a SavedModel, the one input the TFLite converter and tf2onnx
both handle for Keras 3 (``from_keras_model`` breaks on Keras 3 models), and run through its
signature, so the float reference is exactly what the converters read. ONNX sources are
checked, loaded with their external data, and run in ONNX Runtime; they never import
TensorFlow.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.converters.keras_export import export_saved_model, input_names, output_names
from edgekit.converters.onnx_source import load_onnx_source
from edgekit.converters.source_model import (
    ACCEPTED,
    SourceModel,
    TensorSpec,
    detect_kind,
    first_line,
    hash_path,
)
from edgekit.core.errors import EdgekitError, MissingDependencyError, ModelFormatError
from edgekit.core.formats import SourceKind
from edgekit.core.samples import Feed

if TYPE_CHECKING:
    from types import ModuleType

    import tensorflow as tf
    from tensorflow.types.experimental import ConcreteFunction

    from edgekit.runtime.backends import TensorInfo

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
    path: Path, input_shape: tuple[int | None, ...] | None = None, kind: SourceKind | None = None
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


def load_keras_model(path: Path) -> Any:
    """The Keras model in ``path``, uncompiled; one line when it cannot be loaded."""
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file; all mean "cannot load".
        raise ModelFormatError(
            f"{path}: cannot be loaded as a Keras model ({first_line(exc)}); "
            "check that the file is complete, or save it again with model.save()"
        ) from exc


def _from_keras(tf: ModuleType, path: Path, kind: SourceKind, export_dir: Path) -> SourceModel:
    if kind == "keras" and not zipfile.is_zipfile(path):  # Keras itself says "File not found"
        raise ModelFormatError(
            f"{path}: not a complete .keras file (one is a zip archive; this one is cut short or is "
            "something else); save the model again with model.save()"
        )
    model = load_keras_model(path)
    export_saved_model(model, export_dir)
    source = _from_saved_model(tf, export_dir, input_names(model), output_names(model))
    return replace(
        source,
        path=path,
        kind=kind,
        sha256=hash_path(path),
        size_bytes=path.stat().st_size,
        parameter_bytes=sum(int(np.prod(w.shape)) * 4 for w in model.weights),
        keras_model=model,
    )


def _from_saved_model(
    tf: ModuleType, path: Path, inputs_order: list[str] | None = None, outputs_order: list[str] | None = None
) -> SourceModel:
    """``inputs_order``, ``outputs_order``: the names in the model's own order (Keras knows
    it); else the signature's input order and the outputs in natural name order."""
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TensorFlow raises several types for a bad SavedModel.
        raise ModelFormatError(f"{path}: cannot be loaded as a SavedModel ({first_line(exc)})") from exc
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ModelFormatError(
            f"{path}: the SavedModel has no 'serving_default' signature; export it with one"
        )
    specs = signature.structured_input_signature[1]
    names = inputs_order or list(specs)
    outputs = outputs_order or sorted(signature.structured_outputs, key=natural_key)

    def predict(feed: Feed) -> list[np.ndarray]:
        result = signature(**{name: tf.constant(feed[name], dtype=specs[name].dtype) for name in names})
        return [np.asarray(result[name]) for name in outputs]

    variables = getattr(loaded, "variables", [])
    return SourceModel(
        path=path,
        kind="saved_model",
        sha256=hash_path(path),
        size_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        inputs=tuple(_spec(specs[name], name) for name in names),
        outputs=tuple(_spec(signature.structured_outputs[name], name) for name in outputs),
        parameter_bytes=sum(int(np.prod(v.shape)) * 4 for v in variables),
        saved_model_dir=path,
        _predict=predict,
        loaded=loaded,
    )


def signature_function(
    signature: ConcreteFunction, shapes: dict[str, tuple[int | None, ...]]
) -> ConcreteFunction:
    """A SavedModel's serving ``signature`` as a concrete function with inputs' dynamic dims
    fixed by name (see ``serving_function`` for why)."""
    tf = import_tensorflow()
    specs = signature.structured_input_signature[1]
    fixed = {n: tf.TensorSpec(shapes.get(n, spec.shape), spec.dtype, name=n) for n, spec in specs.items()}
    return tf.function(lambda **inputs: signature(**inputs)).get_concrete_function(**fixed)


def natural_key(name: str) -> list[int | str]:
    """``output_2`` before ``output_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"([0-9]+)", name)]


def _from_tflite(path: Path) -> SourceModel:
    from edgekit.runtime.backends import TFLiteBackend

    content = path.read_bytes()
    try:
        backend = TFLiteBackend(content)
    except EdgekitError as exc:
        raise ModelFormatError(f"{path}: {exc}") from exc

    def no_float_model(feed: Feed) -> list[np.ndarray]:
        raise ModelFormatError(f"{path}: a ready-made TFLite file has no float model to compare with")

    def spec(info: TensorInfo) -> TensorSpec:  # data is given as float; the runtime quantizes it
        return TensorSpec(info.name, info.shape, "float32" if info.quantized else info.dtype)

    return SourceModel(
        path=path,
        kind="tflite",
        sha256=hash_path(path),
        size_bytes=len(content),
        inputs=tuple(spec(i) for i in backend.inputs),
        outputs=tuple(spec(o) for o in backend.outputs),
        parameter_bytes=len(content),
        _predict=no_float_model,
        tflite_content=content,
    )


def _spec(tensor: tf.TensorSpec, name: str | None = None) -> TensorSpec:
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    dtype = getattr(tensor.dtype, "name", str(tensor.dtype))
    return TensorSpec(name=name or str(getattr(tensor, "name", None) or "input"), shape=shape, dtype=dtype)
