"""Recurrent Keras layers, unrolled over their fixed number of time steps.

A SavedModel export keeps a GRU or LSTM as a ``while`` loop over a TensorList, which the
TFLite converter cannot legalize (``TensorListReserve``) at any precision, and which tf2onnx
leaves in a frozen graph as an op ONNX Runtime cannot load. With the sequence length fixed,
the same layers unrolled are plain ops that convert, with the same weights and outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.converters.keras_export import exported_variant
from edgekit.converters.source_model import SourceModel

if TYPE_CHECKING:
    import keras


def saved_model_for_tflite(source: SourceModel, shapes: dict[str, tuple[int | None, ...]]) -> Path:
    """The SavedModel the TFLite converter reads: the source's own, or, for a Keras model,
    one with ``shapes`` fixed and recurrent layers over a fixed sequence length unrolled."""
    if source.saved_model_dir is None:
        raise ValueError("a TFLite conversion needs a TensorFlow source")
    model = source.keras_model
    unroll = model is not None and bool(recurrent_layers(model)) and _sequence_length(model) is not None
    if model is None or not (unroll or shapes):
        return source.saved_model_dir
    return exported_variant(source, unrolled_if_recurrent(model), shapes, "-unrolled" if unroll else "")


def unrolled_if_recurrent(model: keras.Model) -> keras.Model:
    """``model``, or with recurrent layers over a fixed sequence length, an unrolled copy."""
    if recurrent_layers(model) and _sequence_length(model) is not None:
        return unrolled(model)
    return model


def recurrent_layers(model: keras.Model) -> list[str]:
    """Recurrent layers, and ``Bidirectional`` wrappers of them (a ``Wrapper``, not an ``RNN``)."""
    import keras

    kinds = (keras.layers.RNN, keras.layers.Bidirectional)
    return [layer.name for layer in model.layers if isinstance(layer, kinds)]


def unrolled(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with every recurrent layer unrolled, and the same weights."""
    import keras

    def clone(layer: keras.Layer) -> keras.Layer:
        if isinstance(layer, keras.layers.Bidirectional):  # both directions, backward kept backward
            return keras.layers.Bidirectional(
                _unrolled_copy(layer.forward_layer), merge_mode=layer.merge_mode,
                backward_layer=_unrolled_copy(layer.backward_layer), name=layer.name,
            )
        if isinstance(layer, keras.layers.RNN):
            return _unrolled_copy(layer)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _unrolled_copy(layer: keras.Layer) -> keras.Layer:
    return layer.__class__.from_config({**layer.get_config(), "unroll": True})


def _sequence_length(model: keras.Model) -> int | None:
    """The time steps of a (batch, time, features) input, when fixed; unrolling needs them."""
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    return shape[1] if len(shape) == 3 and shape[1] is not None else None
