"""Keras models to a SavedModel whose signature keeps the model's own names.

``model.export`` names outputs ``output_0``, ``output_1`` and so on; a detector's boxes and
scores deserve their layer names, which ``--eval-output`` and telemetry refer to. Inputs keep
their ``keras.Input`` names. The TFLite converter and tf2onnx both read this signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def output_names(model: Any) -> list[str]:
    """One name per output, the producing layer's, made unique where a layer gives several."""
    names: list[str] = []
    layers = getattr(model, "output_names", None) or [model.layers[-1].name]  # a Sequential's last layer
    for name in layers:
        unique, suffix = name, 1
        while unique in names:
            suffix += 1
            unique = f"{name}_{suffix}"
        names.append(unique)
    return names


def input_names(model: Any) -> list[str]:
    return [str(tensor.name) for tensor in model.inputs]


def export_saved_model(model: Any, export_dir: Path) -> None:
    """Write ``model``'s inference function as ``serving_default``, inputs and outputs named."""
    import keras
    import tensorflow as tf

    outputs = output_names(model)
    signature = [
        tf.TensorSpec(tensor.shape, tensor.dtype, name=name)
        for tensor, name in zip(model.inputs, input_names(model), strict=True)
    ]

    def serve(*args: Any) -> dict[str, Any]:
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        values = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(outputs, values, strict=True))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=signature)
    archive.write_out(str(export_dir), verbose=False)
