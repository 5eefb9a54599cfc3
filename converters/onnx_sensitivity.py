"""How much each int8 tensor of an ONNX graph loses, for the accuracy fallback's ranking.

Signal-to-quantization-noise ratios come from ONNX Runtime's QDQ debug tensors; a tensor
is ranked by how much SQNR it loses against the tensors it is computed from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgekit.converters.base import channel_snr_db
from edgekit.converters.onnx_source import import_onnx

if TYPE_CHECKING:
    from onnx import ModelProto


def channel_robust_sqnr(
    reference: Sequence[np.ndarray], noisy: Sequence[np.ndarray], shape: tuple[int, ...] | None
) -> float:
    """``channel_snr_db`` of ONNX Runtime's debug tensors, channels first. The debug tool
    saves tensors flattened, so ``shape`` (without batch) restores the channels."""
    ref = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in reference])
    err = ref - np.concatenate([np.asarray(n, dtype=np.float64).ravel() for n in noisy])
    if shape and ref.size % int(np.prod(shape)) == 0:
        per_channel = int(np.prod(shape[1:], dtype=np.int64))
        signal = np.mean(ref.reshape(-1, shape[0], per_channel) ** 2, axis=(0, 2))
        noise = np.mean(err.reshape(-1, shape[0], per_channel) ** 2, axis=(0, 2))
    else:
        signal, noise = np.mean(ref**2, keepdims=True), np.mean(err**2, keepdims=True)
    return channel_snr_db(signal, noise)


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
