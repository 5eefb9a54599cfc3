"""Keras models to a SavedModel whose signature keeps the model's own names.

``model.export`` names outputs ``output_0``, ``output_1`` and so on; a detector's boxes and
scores deserve their layer names, which ``--eval-output`` and telemetry refer to. Inputs keep
their ``keras.Input`` names. The TFLite converter and tf2onnx both read this signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.converters.source_model import SourceModel

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    from tensorflow.types.experimental import ConcreteFunction


def output_names(model: keras.Model) -> list[str]:
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


def input_names(model: keras.Model) -> list[str]:
    """Each input's ``keras.Input`` layer name (a tensor's own name is ``keras_tensor_N``
    until the model is saved and loaded)."""
    history = [getattr(getattr(t, "_keras_history", None), "operation", None) for t in model.inputs]
    return [str(getattr(op, "name", None) or t.name) for op, t in zip(history, model.inputs, strict=True)]


def serving_function(
    model: keras.Model, shapes: dict[str, tuple[int | None, ...]] | None = None
) -> ConcreteFunction:
    """``model``'s inference as a ``tf.function`` with named inputs and a dict of named
    outputs. ``shapes`` fixes inputs' dynamic dims by name: ``keras.applications`` models
    leave height and width dynamic by default, which XNNPACK and ONNX Runtime cannot prepare
    (MobileNetV3Small fails to load in both)."""
    import tensorflow as tf

    outputs = output_names(model)
    shapes = shapes or {}
    signature = [
        tf.TensorSpec(shapes.get(name, tensor.shape), tensor.dtype, name=name)
        for tensor, name in zip(model.inputs, input_names(model), strict=True)
    ]

    @tf.function(input_signature=signature)
    def serve(*args: tf.Tensor) -> dict[str, tf.Tensor]:
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        values = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(outputs, values, strict=True))

    return serve


def export_saved_model(
    model: keras.Model, export_dir: Path, shapes: dict[str, tuple[int | None, ...]] | None = None
) -> None:
    """Write ``model``'s inference function as ``serving_default``, inputs and outputs named
    (``shapes``: as for ``serving_function``)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_function(model, shapes))
    archive.write_out(str(export_dir), verbose=False)


def exported_variant(
    source: SourceModel, model: keras.Model, shapes: dict[str, tuple[int | None, ...]], tag: str
) -> Path:
    """A SavedModel of ``model`` (the source's Keras model, or a copy named by ``tag``) with
    ``shapes`` fixed, beside the source's own export; written once per variant."""
    if source.saved_model_dir is None:
        raise ValueError("only TensorFlow sources have a SavedModel")
    suffix = tag + "".join(
        f"-{name}-" + "x".join(str(d) for d in shape[1:]) for name, shape in shapes.items()
    )
    folder = source.saved_model_dir.with_name(source.saved_model_dir.name + suffix)
    if not folder.exists():
        export_saved_model(model, folder, shapes)
    return folder
