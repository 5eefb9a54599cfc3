"""TensorFlow models to ONNX with tf2onnx, inputs and outputs keeping the source's names.

tf2onnx reads a frozen graph: the SavedModel's serving signature, or the live Keras model
traced, when inputs' dynamic dims are fixed from the data (a SavedModel's signature keeps
them dynamic inside) or when it has recurrent layers: frozen, their TensorList loop is left
as ``TensorListReserve``, which ONNX Runtime cannot load, so they are unrolled first. Every
variable and captured tensor becomes a constant, so nothing leaks out as an extra input.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import numpy as np

from edgekit.converters.keras_export import serving_function
from edgekit.converters.recurrent import recurrent_layers, unrolled_if_recurrent
from edgekit.converters.source import first_line, import_tensorflow
from edgekit.converters.source_model import SourceModel
from edgekit.core.errors import ConversionError, MissingDependencyError

if TYPE_CHECKING:
    from types import ModuleType

    from onnx import ModelProto
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.types.experimental import ConcreteFunction


def from_tensorflow(source: SourceModel, opset: int, shapes: dict[str, tuple[int | None, ...]]) -> ModelProto:
    tf = import_tensorflow()
    try:
        import tf2onnx
    except ImportError as exc:
        raise MissingDependencyError("tf2onnx", "convert", "converting TensorFlow models to ONNX") from exc
    names = [spec.name for spec in source.inputs]
    outputs = [spec.name for spec in source.outputs]
    model = source.keras_model
    if model is not None and (shapes or recurrent_layers(model)):  # traced from the live model
        frozen = _frozen(tf, serving_function(unrolled_if_recurrent(model), shapes))
    else:
        frozen = _frozen(tf, _signature_function(tf, source, shapes))
    graph_inputs = [t.name for t in frozen.inputs]
    graph_outputs = [t.name for t in frozen.outputs]  # in the order of sorted output names
    erfc_noise = _ErfcHandled()
    logging.getLogger("tf2onnx.tfonnx").addFilter(erfc_noise)
    try:
        model, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=graph_inputs, output_names=graph_outputs, opset=opset
        )
    except Exception as exc:  # tf2onnx raises many types for unsupported graphs
        raise ConversionError(
            f"tf2onnx could not convert the model at opset {opset}: {first_line(exc)}"
        ) from exc
    finally:
        logging.getLogger("tf2onnx.tfonnx").removeFilter(erfc_noise)
    for old, name in zip(graph_inputs, names, strict=True):
        _rename_tensor(model, old, name)
    for old, name in zip(graph_outputs, sorted(outputs), strict=True):
        _rename_tensor(model, old, name)
    _order_outputs(model, outputs)
    _erfc_as_erf(model)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            _rename_dim_param(model, dims[0].dim_param, "batch")
    return model


def _signature_function(
    tf: ModuleType, source: SourceModel, shapes: dict[str, tuple[int | None, ...]]
) -> ConcreteFunction:
    """A SavedModel's serving signature as a function of its inputs in order, dims fixed."""
    assert source.loaded is not None  # every TensorFlow source keeps its SavedModel loaded
    signature = source.loaded.signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    names = [spec.name for spec in source.inputs]
    outputs = [spec.name for spec in source.outputs]
    input_signature = [tf.TensorSpec(shapes.get(n, specs[n].shape), specs[n].dtype, name=n) for n in names]

    @tf.autograph.experimental.do_not_convert
    def serve(*args: object) -> dict[str, object]:
        result = signature(**dict(zip(names, args, strict=True)))
        return {name: result[name] for name in outputs}

    return tf.function(serve, input_signature=input_signature)


def _frozen(tf: ModuleType, function: ConcreteFunction) -> ConcreteFunction:
    """The serving function with every captured tensor and variable folded in as a constant,
    and every nested function inlined. tf2onnx turns captures it does not freeze into extra
    graph inputs: a Keras Normalization layer's mean and variance would become two inputs the
    caller must feed."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(function.get_concrete_function())
    graph = frozen.graph.as_graph_def()
    if not _marked_for_xla(graph):
        return frozen
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph, name=""), [])
    pruned = wrapped.prune(
        feeds=[wrapped.graph.get_tensor_by_name(t.name) for t in frozen.inputs],
        fetches=[wrapped.graph.get_tensor_by_name(t.name) for t in frozen.outputs],
    )
    return convert_variables_to_constants_v2(pruned)  # inlines them now that nothing forbids it


_XLA_ATTRS = ("_XlaMustCompile", "_noinline")


def _marked_for_xla(graph: GraphDef) -> bool:
    """Make functions marked ``jit_compile`` inlinable, in place; whether there were any.

    Keras 3 runs grouped convolutions (ConvNeXt's depthwise ``Conv2D(groups=C)``) in a
    ``tf.function(jit_compile=True)``; grappler never inlines such a function, so the frozen
    graph keeps a ``StatefulPartitionedCall`` that tf2onnx copies into the ONNX graph as is.
    Without the markers, and renamed so they do not clash with the eager context's
    definitions, they inline like any other function."""
    marked = {f.signature.name for f in graph.library.function if any(a in f.attr for a in _XLA_ATTRS)}
    for function in graph.library.function:
        for attr in _XLA_ATTRS:
            if attr in function.attr:
                del function.attr[attr]
        if function.signature.name in marked:
            function.signature.name += "_inlinable"
    for node in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]:
        for attr in _XLA_ATTRS:
            if attr in node.attr:
                del node.attr[attr]
        if "f" in node.attr and node.attr["f"].func.name in marked:
            node.attr["f"].func.name += "_inlinable"
    return bool(marked)


def _order_outputs(model: ModelProto, names: list[str]) -> None:
    """The graph's outputs in the source model's order."""
    by_name = {value.name: value for value in model.graph.output}
    ordered = [type(by_name[name])() for name in names]
    for copy, name in zip(ordered, names, strict=True):
        copy.CopyFrom(by_name[name])
    del model.graph.output[:]
    model.graph.output.extend(ordered)


def _rename_tensor(model: ModelProto, old: str, new: str) -> None:
    for value in (*model.graph.input, *model.graph.output):
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def _rename_dim_param(model: ModelProto, old: str, new: str) -> None:
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = new


class _ErfcHandled(logging.Filter):
    """tf2onnx logs an ERROR for each ``Erfc`` (Keras 3's exact GELU) it cannot map, then
    writes the node anyway; ``_erfc_as_erf`` rewrites it, so those lines are noise. Any
    other unsupported op is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (_ERFC_OP.search(message) or _ERFC_ONLY.search(message))


_ERFC_OP = re.compile(r"^Tensorflow op \[[^\]]*: Erfc\] is not supported$")
_ERFC_ONLY = re.compile(r"^Unsupported ops: Counter\(\{'Erfc': \d+\}\)$")


def _erfc_as_erf(model: ModelProto) -> None:
    """tf2onnx writes TensorFlow's Erfc (Keras 3's exact gelu) as an ``Erfc`` node, which ONNX
    does not have: write each as 1 - Erf(x)."""
    from onnx import helper, numpy_helper

    nodes = list(model.graph.node)
    if not any(node.op_type == "Erfc" and node.domain in ("", "ai.onnx") for node in nodes):
        return
    rewritten = []
    for node in nodes:
        if node.op_type != "Erfc" or node.domain not in ("", "ai.onnx"):
            rewritten.append(node)
            continue
        erf, one = f"{node.name}/erf", f"{node.name}/one"
        model.graph.initializer.append(numpy_helper.from_array(np.ones((), np.float32), one))
        rewritten += [
            helper.make_node("Erf", [node.input[0]], [erf], name=f"{node.name}/Erf"),
            helper.make_node("Sub", [one, erf], [node.output[0]], name=node.name),
        ]
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
