"""A Keras decoder as one TFLite model with two signatures, for the CPU profiles that run LiteRT.

``prefill`` takes the prompt (``input_ids`` and ``position_ids``, when the model takes
positions) and returns ``logits`` and the cache of every layer, ``present_{i}_key`` and
``present_{i}_value`` (1, heads, tokens, head size); ``decode`` takes the next tokens and
the cache as ``past_{i}_key/value`` and returns the logits and the grown cache. The two
signatures share one set of weights in the file.

The model's own layers run as they are (``Embedding``, ``Add``, ``LayerNormalization``,
``Dense``, ``Activation``, ``Dropout``: each works on a token at a time), and each
``MultiHeadAttention(use_causal_mask=True)`` is rewritten with its own projections to read
and extend the cache. The same layers as ``keras_decoder`` (its ONNX twin) are accepted;
``keras_decoder.check_layers`` says which one is not.

Precisions: fp32, fp16 (float16 weights, float kernels), dynamic (int8 weights with int8
kernels, LiteRT's dynamic range quantization), and int8 or int4 weight-only (per channel,
dequantized as each op runs: the LiteRT Quantizer's weight-only recipes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.core.errors import InputError

PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int4")


def keras_decoder_to_tflite(
    model: Any, precision: str, float_content: bytes | None = None
) -> tuple[bytes, tuple[int, int, int]]:  # fmt: skip
    """The TFLite decoder with ``prefill`` and ``decode`` signatures, and (layers, heads,
    head size) of its cache. int8 and int4 quantize ``float_content`` (this model's fp32
    TFLite, when the caller has it already), else a fresh fp32 conversion."""
    if precision not in PRECISIONS:
        raise InputError(
            f"{precision} for a TFLite decoder: LiteRT decoders are {', '.join(PRECISIONS)}; "
            "use --format onnx"
        )
    from edgekit.converters.keras_decoder import check_layers

    check_layers(model)
    walk = _Walk(model)
    shape = (walk.layers, *walk.cache_shape)
    if precision in ("int8", "int4"):
        from edgekit.converters.litert_quantize import weight_only

        content = float_content if float_content is not None else _convert(walk, "fp32")
        return weight_only(content, 8 if precision == "int8" else 4), shape
    return _convert(walk, precision), shape


def _convert(walk: _Walk, precision: str) -> bytes:
    """fp32, fp16 or dynamic, by the TFLite converter from the walk's two frozen functions."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = tf.Module()  # no variables: the weights are constants, shared by both signatures
    for name, past in (("prefill", False), ("decode", True)):
        traced = tf.function(getattr(walk, name), input_signature=walk.signature(past=past))
        constant = convert_variables_to_constants_v2(traced.get_concrete_function())
        call = _calling(name, constant, walk.outputs)
        setattr(frozen, name, tf.function(call, input_signature=walk.signature(past=past)))
    functions = [frozen.prefill.get_concrete_function(), frozen.decode.get_concrete_function()]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, frozen)
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    return bytes(converter.convert())


def _calling(name: str, function: Any, outputs: list[str]) -> Any:
    """``function`` (a frozen graph, flat outputs in ``outputs``' sorted order) as a function
    called ``name`` returning its outputs by name: the signature's key and output names."""

    def call(*args: Any) -> dict[str, Any]:
        return dict(zip(sorted(outputs), function(*args), strict=True))

    call.__name__ = name
    return call


class _Walk:
    """The model's graph, run in TensorFlow with a cache at each attention layer."""

    def __init__(self, model: Any) -> None:
        import keras

        self.model = model
        names = [t.name for t in model.inputs]
        self.positions = any("position" in n for n in names)
        self.attention = [op for op in model.operations if isinstance(op, keras.layers.MultiHeadAttention)]
        self.layers = len(self.attention)
        self.cache_shape = (self.attention[0].num_heads, self.attention[0].key_dim)  # all alike: check_layers
        pairs = [(i, kind) for i in range(self.layers) for kind in ("key", "value")]
        self.outputs = ["logits"] + [f"present_{i}_{kind}" for i, kind in pairs]

    def signature(self, past: bool) -> list[Any]:
        import tensorflow as tf

        specs = [tf.TensorSpec([1, None], tf.int64, "input_ids")]
        if self.positions:
            specs.append(tf.TensorSpec([1, None], tf.int64, "position_ids"))
        if past:
            heads, size = self.cache_shape
            specs += [tf.TensorSpec([1, heads, None, size], tf.float32, f"past_{i}_{kind}")
                      for i in range(self.layers) for kind in ("key", "value")]  # fmt: skip
        return specs

    def prefill(self, ids: Any, *rest: Any) -> dict[str, Any]:
        return self._run(ids, rest[0] if self.positions else None, None)

    def decode(self, ids: Any, *rest: Any) -> dict[str, Any]:
        positions = rest[0] if self.positions else None
        return self._run(ids, positions, list(rest[1:] if self.positions else rest))

    def _run(self, ids: Any, positions: Any, past: list[Any] | None) -> dict[str, Any]:
        import keras
        import tensorflow as tf

        values: dict[int, Any] = {}
        given = [tf.cast(ids, tf.int32)] + ([tf.cast(positions, tf.int32)] if self.positions else [])
        for tensor, value in zip(self.model.inputs, self._ordered(given), strict=True):
            values[id(tensor)] = value
        present: dict[str, Any] = {}
        for op in self.model.operations:
            if isinstance(op, keras.layers.InputLayer):
                continue
            node = op._inbound_nodes[0]
            args, kwargs = node.arguments.fill_in(values)
            if isinstance(op, keras.layers.MultiHeadAttention):
                layer = self.attention.index(op)
                cache = None if past is None else (past[2 * layer], past[2 * layer + 1])
                out, keys, vals = _attention(op, args[0], cache)
                present[f"present_{layer}_key"], present[f"present_{layer}_value"] = keys, vals
            else:
                out = op(*args, **{k: v for k, v in kwargs.items() if k != "training"})
            values[id(node.output_tensors[0])] = out
        return {"logits": values[id(self.model.outputs[0])], **present}

    def _ordered(self, given: list[Any]) -> list[Any]:
        """The ids and positions in the order of the model's inputs."""
        if not self.positions or "position" not in self.model.inputs[0].name:
            return given
        return given[::-1]


def _attention(op: Any, x: Any, cache: tuple[Any, Any] | None) -> tuple[Any, Any, Any]:
    """Causal self-attention over the cache and ``x``: the layer's output and the grown cache."""
    import tensorflow as tf

    def heads(dense: Any) -> Any:
        return tf.transpose(dense(x), [0, 2, 1, 3])  # (1, heads, tokens, size)

    q, k, v = heads(op._query_dense), heads(op._key_dense), heads(op._value_dense)
    keys = k if cache is None else tf.concat([cache[0], k], axis=2)
    values = v if cache is None else tf.concat([cache[1], v], axis=2)
    scores = tf.matmul(q, keys, transpose_b=True) * (1.0 / np.sqrt(op.key_dim))
    new, total = tf.shape(q)[2], tf.shape(keys)[2]
    query_at = tf.range(new)[:, None] + (total - new)  # each new token's place in the sequence
    blocked = tf.cast(tf.range(total)[None, :] > query_at, scores.dtype)
    context = tf.matmul(tf.nn.softmax(scores - 1e4 * blocked, axis=-1), values)
    return op._output_dense(tf.transpose(context, [0, 2, 1, 3])), keys, values
