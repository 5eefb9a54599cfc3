"""fp16 ONNX models, and which nodes to keep in fp32 when fp16 gives garbage.

fp16 holds magnitudes up to 65,504. A detector whose activations go past that (PaddleOCR's
PP-OCRv4 text detector does) overflows to inf in fp16, and its output is noise. The float
model's activations on the data show which tensors those are: their producers and
consumers stay in fp32 through onnxconverter-common's node block list, with casts between.
The peaks are measured once per model, one sample at a time, and reused by every fallback round.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from edgekit.converters.onnx_sensitivity import session_with_outputs
from edgekit.converters.onnx_source import copy_model, import_onnx
from edgekit.converters.source_model import first_line
from edgekit.core.errors import ConversionError, MissingDependencyError

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

FP16_MAX = 65504.0
FP16_SAFE = FP16_MAX / 4
"""Past this, a sum or product of two such activations overflows fp16."""
CLAMPED = 1e4
"""onnxconverter-common clamps every constant past this (its ``max_finite_val``): PaddleOCR's
detector has BatchNorm variances near 1e8, and clamped to 1e4 its output is noise."""


FP32_OPS = ("Softmax", "LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal")
"""Kept in fp32 in every fp16 model: a softmax over attention scores and a layer norm's
variance (a mean of squares) are where fp16 loses a transformer's accuracy, and both are
cheap next to the matrix products around them."""


def to_float16(model: ModelProto, float_nodes: Iterable[str] = (), outputs_apart: bool = False) -> ModelProto:
    """``model`` in fp16 with float32 inputs and outputs; ``float_nodes`` stay in fp32, and so
    do the ``FP32_OPS`` and every Cast to float32 (onnxconverter-common retypes such a cast's
    output to fp16 but not its ``to``, and ONNX Runtime then refuses the model: tf2onnx's
    Embedding casts its integer ids to float this way). ``outputs_apart``: every output goes
    through an Identity first, for graphs whose outputs other nodes also read (a decoder's
    ``present`` cache), which onnxconverter-common retypes for one reader and not the other."""
    if outputs_apart:
        model = _outputs_through_identity(model)
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise MissingDependencyError("onnxconverter-common", "convert", "fp16 ONNX conversion") from exc
    casts = [n.name for n in model.graph.node if n.op_type == "Cast" and _casts_to_float32(n)]
    blocks = {"node_block_list": [*float_nodes, *casts] or None,
              "op_block_list": [*float16.DEFAULT_OP_BLOCK_LIST, *FP32_OPS]}  # fmt: skip
    try:
        try:
            return float16.convert_float_to_float16(_lifted_constants(model), keep_io_types=True, **blocks)
        except ValueError as exc:
            if "second cast node" not in str(exc):
                raise
            # an output made by a node kept in fp32 (a final Softmax): onnxconverter-common
            # then finds a Cast to fp16 straight into the output's Cast back and cannot
            # remove the pair; an Identity before each output keeps them apart
            lifted = _outputs_through_identity(_lifted_constants(model))
            return float16.convert_float_to_float16(lifted, keep_io_types=True, **blocks)
    except Exception as exc:  # onnxconverter-common raises plain exceptions on graphs it cannot take
        raise ConversionError(f"fp16 conversion failed in onnxconverter-common: {first_line(exc)}") from exc


def _lifted_constants(model: ModelProto) -> ModelProto:
    """A copy of ``model`` whose ``Constant`` nodes are initializers. onnxconverter-common
    converts every Constant node to fp16, clamped, even when only nodes kept in fp32 read
    it; an initializer that only such nodes read stays fp32. PaddlePaddle exports hold
    their weights in Constant nodes: PP-OCRv4's detector has BatchNorm variances near 1e8,
    and kept in fp32 with its variance clamped its output was noise (cosine 0.36)."""
    copy = copy_model(model)
    nodes = []
    for node in copy.graph.node:
        value = [a.t for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and value:
            value[0].name = node.output[0]
            copy.graph.initializer.append(value[0])
        else:
            nodes.append(node)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def _outputs_through_identity(model: ModelProto) -> ModelProto:
    """``model`` (changed in place) with each graph output coming out of an Identity node."""
    onnx = import_onnx()
    for output in model.graph.output:
        inner = f"{output.name}_edgekit_fp16"
        for node in model.graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        model.graph.node.append(onnx.helper.make_node("Identity", [inner], [output.name], name=inner))
    return model


def _casts_to_float32(node: NodeProto) -> bool:
    return any(a.name == "to" and a.i == 1 for a in node.attribute)


def activation_peaks(model: ModelProto, feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per float tensor of ``model``, the largest magnitude it takes on ``feeds``, one
    feed at a time (memory: one feed's activations)."""
    onnx = import_onnx()
    graph = onnx.shape_inference.infer_shapes(model).graph
    floats = {v.name for v in (*graph.value_info, *graph.output) if v.type.tensor_type.elem_type == 1}
    names = [o for node in model.graph.node if node.op_type != "Constant" for o in node.output if o in floats]
    session = session_with_outputs(model, names)
    peaks = dict.fromkeys(names, 0.0)
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            peaks[name] = max(peaks[name], _peak(np.asarray(value)))
    return peaks


def rank_overflowing_nodes(model: ModelProto, peaks: dict[str, float]) -> list[tuple[str, ...]]:
    """First, every node that takes a constant fp16 conversion would clamp (one group: the
    damage is certain); then, for each activation past ``FP16_SAFE``, largest first, the
    nodes that produce or consume it."""
    from onnx import numpy_helper

    touching: dict[str, list[str]] = {}
    for node in model.graph.node:
        for tensor in (*node.input, *node.output):
            touching.setdefault(tensor, []).append(node.name)
    constants = {t.name: _peak(numpy_helper.to_array(t)) for t in model.graph.initializer if t.data_type == 1}
    for node in model.graph.node:
        values = [a.t for a in node.attribute if a.name == "value" and a.t.data_type == 1]
        if node.op_type == "Constant" and values:  # float32: what fp16 conversion rewrites
            constants[node.output[0]] = _peak(numpy_helper.to_array(values[0]))
    clamped = [name for name, peak in constants.items() if peak > CLAMPED and name in touching]
    groups = [tuple(dict.fromkeys(n for name in clamped for n in touching[name]))] if clamped else []
    risky = [t for t, peak in peaks.items() if peak > FP16_SAFE and t in touching and t not in constants]
    return groups + [tuple(touching[t]) for t in sorted(risky, key=lambda t: -peaks[t])]


def _peak(array: np.ndarray) -> float:
    return float(np.max(np.abs(array), initial=0.0))
