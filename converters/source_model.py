"""What a loaded source model is, and the helpers that every source loader shares.

Light: no TensorFlow or ONNX imports, so that the per-format loaders can import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.core.errors import ModelFormatError
from edgekit.core.formats import SourceKind
from edgekit.core.samples import Feed

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    from onnx import ModelProto

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
    kind: SourceKind
    sha256: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameter_bytes: int
    _predict: Callable[[Feed], list[np.ndarray]] = field(repr=False)
    saved_model_dir: Path | None = None
    """TensorFlow sources: the exported SavedModel the converters read."""
    onnx_model: ModelProto | None = field(default=None, repr=False)
    """ONNX sources: the checked float ModelProto, external data loaded."""
    tflite_content: bytes | None = field(default=None, repr=False)
    """Ready-made TFLite sources: shipped as they are, with no float model to compare."""
    keras_model: keras.Model | None = field(default=None, repr=False)
    """Keras sources: the loaded model (for pruning)."""
    loaded: tf.Module | None = field(default=None, repr=False)
    """TensorFlow sources: the loaded SavedModel (its signature needs it alive)."""
    notes: tuple[str, ...] = ()
    """What loading changed in the model, for the user (a ZipMap output made a tensor)."""

    def predict(self, feed: Feed) -> list[np.ndarray]:
        """Every output, in ``outputs`` order, for one call's inputs by name."""
        return self._predict(feed)


def detect_kind(path: Path) -> SourceKind:
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
    if suffix in (".pt", ".pth"):
        raise ModelFormatError(
            f"{path}: a PyTorch file, which edgekit does not read; export the model to ONNX first, with "
            "torch.onnx.export(model, example_input, 'model.onnx', dynamo=True), and convert the .onnx file"
        )
    raise ModelFormatError(f"{path}: unsupported model file '{suffix or path.name}'; expected {ACCEPTED}")


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
