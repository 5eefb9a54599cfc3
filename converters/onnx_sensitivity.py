"""How much each int8 tensor of an ONNX graph loses, for the accuracy fallback's ranking.

Each activation the QDQ model quantizes is compared with the same tensor of the float
model, one sample at a time: both models run side by side with those tensors as extra
outputs, and only per-channel sums of signal and noise are kept. Memory is one sample's
activations of both models, whatever the number of samples (collecting every activation of
every sample first, as ONNX Runtime's ``qdq_loss_debug`` does, took 13 GB on PP-OCRv4's
recognizer). A tensor is ranked by how much SQNR it loses against the tensors it is
computed from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from edgekit.converters.base import channel_snr_db
from edgekit.converters.onnx_source import import_onnx
from edgekit.core.samples import Feed

if TYPE_CHECKING:
    from onnx import ModelProto

DEQUANTIZED = ("_DequantizeLinear_Output", "_DequantizeLinear_Output_1")
"""ONNX Runtime's QDQ names: tensor X quantized and dequantized again is X plus one of these."""


def activation_sqnr(
    float_model: ModelProto, qdq_model: ModelProto, feeds: Iterable[Feed]
) -> dict[str, float]:
    """Per activation that ``qdq_model`` quantizes, its channel-robust SQNR (dB) against
    ``float_model`` on ``feeds`` (one sample each)."""
    pairs = _quantized_activations(float_model, qdq_model)
    shapes = static_shapes(float_model)
    float_session = session_with_outputs(float_model, list(pairs))
    qdq_session = session_with_outputs(qdq_model, list(pairs.values()))
    signal: dict[str, np.ndarray] = {}
    noise: dict[str, np.ndarray] = {}
    for feed in feeds:
        reference = dict(zip(pairs, float_session.run(list(pairs), feed), strict=True))
        noisy = qdq_session.run(list(pairs.values()), feed)
        for (tensor, ref), out in zip(reference.items(), noisy, strict=True):
            powers = _channel_powers(ref, out, shapes.get(tensor))
            if powers is None:
                continue
            signal[tensor] = signal.get(tensor, 0.0) + powers[0]
            noise[tensor] = noise.get(tensor, 0.0) + powers[1]
    return {tensor: channel_snr_db(signal[tensor], noise[tensor]) for tensor in signal}


def _quantized_activations(float_model: ModelProto, qdq_model: ModelProto) -> dict[str, str]:
    """Float tensor name -> the QDQ model's dequantized copy of it, for activations only."""
    constant = {t.name for t in float_model.graph.initializer}
    constant |= {o for n in float_model.graph.node if n.op_type == "Constant" for o in n.output}
    produced = {o for n in float_model.graph.node for o in n.output}
    produced |= {i.name for i in float_model.graph.input}
    pairs: dict[str, str] = {}
    for node in qdq_model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        out = node.output[0]
        name = next((out[: -len(s)] for s in DEQUANTIZED if out.endswith(s)), None)
        if name is not None and name in produced and name not in constant:
            pairs.setdefault(name, out)
    return pairs


def session_with_outputs(model: ModelProto, outputs: list[str]):  # type: ignore[no-untyped-def]  # onnxruntime has no stubs
    """An ONNX Runtime session of ``model`` with ``outputs`` added, graph optimizations off
    (they would fuse tensors away)."""
    import onnxruntime

    onnx = import_onnx()
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    known = {o.name for o in augmented.graph.output}
    for name in outputs:
        if name not in known:
            value = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            augmented.graph.output.append(value)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False  # an arena would keep every extra output's peak
    return onnxruntime.InferenceSession(
        augmented.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _channel_powers(
    reference: np.ndarray, noisy: np.ndarray, shape: tuple[int, ...] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel (dim 1 where ``shape``, the dims after batch, is known), the summed
    square of ``reference`` and of its difference from ``noisy``."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != np.shape(noisy) or not ref.size:
        return None
    err = ref - np.asarray(noisy, dtype=np.float64)
    if shape and ref.size % int(np.prod(shape)) == 0:
        per_channel = int(np.prod(shape[1:], dtype=np.int64))
        ref, err = ref.reshape(-1, shape[0], per_channel), err.reshape(-1, shape[0], per_channel)
        return np.asarray(np.sum(ref**2, axis=(0, 2))), np.asarray(np.sum(err**2, axis=(0, 2)))
    return np.atleast_1d(np.sum(ref**2)), np.atleast_1d(np.sum(err**2))


IDEAL_SQNR_DB = 50.0
"""About what int8 rounding alone leaves of a well-scaled signal (6 dB per bit, plus ~2)."""


def sqnr_drop(model: ModelProto, sqnr: dict[str, float], tensor: str) -> float:
    """SQNR of the tensors ``tensor`` is computed from, minus its own."""
    producers = {out: node for node in model.graph.node for out in node.output}
    upstream: list[float] = []
    pending, seen = [tensor], {tensor}
    while pending:
        node = producers.get(pending.pop())
        for name in node.input if node is not None else ():
            if name in seen:
                continue
            seen.add(name)
            if name in sqnr:
                upstream.append(sqnr[name])
            else:
                pending.append(name)  # an unquantized tensor: look further up
    return min(upstream, default=IDEAL_SQNR_DB) - sqnr[tensor]


def static_shapes(model: ModelProto) -> dict[str, tuple[int, ...]]:
    """Per tensor, its dims after the batch dim, where shape inference knows them all."""
    onnx = import_onnx()
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    graph = inferred.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim[1:]
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes
