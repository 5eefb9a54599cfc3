"""Load the model a user trained: Keras 3 ``.keras``, legacy ``.h5``, a SavedModel dir, or ONNX.

Keras sources are exported to a SavedModel, the one input the TFLite converter and tf2onnx
both handle for Keras 3 (``from_keras_model`` breaks on Keras 3 models). ONNX sources are
checked, loaded with their external data, and run in ONNX Runtime; they never import
TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, MissingDependencyError, ModelFormatError

ACCEPTED = "a Keras .keras file, a legacy Keras .h5 file, a TensorFlow SavedModel directory, or an .onnx file"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join("batch" if i == 0 and d is None else str(d) for i, d in enumerate(self.shape))
        return f"({dims}) {self.dtype}"


@dataclass
class SourceModel:
    """A loaded float model: what it takes, what it gives, and how to run it."""

    path: Path
    kind: str
    sha256: str
    size_bytes: int
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    parameter_bytes: int
    _predict: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    saved_model_dir: Path | None = None
    """TensorFlow sources: the exported SavedModel the converters read."""
    onnx_model: Any = field(default=None, repr=False)
    """ONNX sources: the checked float ModelProto, external data loaded."""
    tflite_content: bytes | None = field(default=None, repr=False)
    """Ready-made TFLite sources: shipped as they are, with no float model to compare."""
    keras_model: Any = field(default=None, repr=False)
    """Keras sources: the loaded model (for pruning)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float outputs of the first output for a batch ``x``."""
        return self._predict(x)


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


def detect_kind(path: Path) -> str:
    if not path.exists():
        raise ModelFormatError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ModelFormatError(f"{path}: a directory without saved_model.pb; expected {ACCEPTED}")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".tflite":
        return "tflite"
    raise ModelFormatError(f"{path}: unsupported model file '{suffix or path.name}'; expected {ACCEPTED}")


@contextmanager
def load_source(path: Path, input_shape: tuple[int | None, ...] | None = None) -> Iterator[SourceModel]:
    """Load ``path``; Keras models are exported to a temporary SavedModel, removed on exit.

    ``input_shape`` fixes an ONNX model's dynamic input dims (``None`` keeps one dynamic).
    """
    kind = detect_kind(path)
    if kind == "onnx":
        from edgekit.converters.onnx_source import load_onnx_source

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


def hash_path(path: Path) -> str:
    """sha256 of a file, or of a directory's relative names and contents in sorted order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
