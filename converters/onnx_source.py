"""ONNX models as input: checked, loaded with external data, dims fixed, run for reference."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.converters.source_model import SourceModel, TensorSpec, first_line, hash_path
from edgekit.core.errors import MissingDependencyError, ModelFormatError, RuntimeBackendError

if TYPE_CHECKING:
    from onnx import ModelProto, TensorProto, ValueInfoProto


def import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError("onnx", "convert", "converting ONNX models") from exc
    return onnx


def copy_model(model: ModelProto) -> ModelProto:
    """A deep copy of ``model``."""
    return import_onnx().load_from_string(model.SerializeToString())


def load_onnx_source(path: Path, input_shape: tuple[int | None, ...] | None) -> SourceModel:
    onnx = import_onnx()
    try:
        onnx.checker.check_model(str(path))  # by path: large models and external data work
        model = onnx.load(str(path), load_external_data=False)
        files = _model_files(path, model)
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # DecodeError, ValidationError, OSError: all mean "not usable"
        raise ModelFormatError(
            f"{path}: not a valid ONNX model ({first_line(exc)}); export it again"
        ) from exc
    _merge_opset_imports(model)
    notes = _zipmaps_as_tensors(model)
    inputs = graph_inputs(model)
    if input_shape is not None:
        if len(inputs) != 1:
            raise ModelFormatError(
                f"{path}: --input-shape fixes one input, and the model has {len(inputs)}; "
                "give calibration data instead, whose arrays fix each input's dims"
            )
        fix_input_dims(model, inputs[0].name, input_shape, str(path))
    from edgekit.runtime.backends import ONNXBackend

    try:
        session = ONNXBackend(model.SerializeToString())
    except RuntimeBackendError as exc:
        raise ModelFormatError(f"{path}: {exc}") from exc
    return SourceModel(
        path=path,
        kind="onnx",
        sha256=_hash_files(path, files),
        size_bytes=sum(f.stat().st_size for f in files),
        inputs=tuple(_spec(i) for i in inputs),
        outputs=tuple(_spec(o) for o in model.graph.output),
        parameter_bytes=float_weight_bytes(model),
        _predict=session.run,
        onnx_model=model,
        notes=tuple(notes),
    )


def _merge_opset_imports(model: ModelProto) -> None:
    """One opset import per domain, the highest, as onnxmltools merges them: skl2onnx writes
    the default domain twice (microsoft/onnxruntime#15563), and ONNX Runtime's quantizer then
    fails with "Failed to find proper ai.onnx domain"."""
    highest: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        highest[domain] = max(highest.get(domain, 0), entry.version)
    if len(highest) == len(model.opset_import):
        return
    del model.opset_import[:]
    for domain, version in highest.items():
        model.opset_import.add(domain=domain, version=version)


def _zipmaps_as_tensors(model: ModelProto) -> list[str]:
    """Each output made by a ``ZipMap`` (skl2onnx's default for classifiers: a sequence of
    {class: probability} maps, which no tensor API carries) becomes the (batch, classes)
    probabilities it was made from, in place; one note per output changed."""
    onnx = import_onnx()
    outputs = {value.name: value for value in model.graph.output}
    notes = []
    for node in model.graph.node:
        if node.op_type != "ZipMap" or node.output[0] not in outputs:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        labels = attributes.get("classlabels_strings") or attributes.get("classlabels_int64s") or []
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in labels]
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
        value = outputs[node.output[0]]
        tensor = onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, ["batch", len(classes)])
        value.type.CopyFrom(tensor)
        notes.append(
            f"output '{value.name}' was a ZipMap (a sequence of maps); it is now the "
            f"(batch, {len(classes)}) probabilities tensor, classes in the order {', '.join(classes)} "
            "(skl2onnx writes this tensor itself with options={'zipmap': False})"
        )
    return notes


def graph_inputs(model: ModelProto) -> list[ValueInfoProto]:
    """Real inputs: old exporters also list every initializer as a graph input."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def fix_input_dims(
    model: ModelProto, name: str, shape: tuple[int | None, ...], where: str, given_by: str = "--input-shape"
) -> None:
    """Give each dynamic dim of input ``name``, by position, the value in ``shape``; ``None``
    leaves that dim alone. ``given_by`` says where the shape came from, for the errors."""
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    dims = _input(model, name).type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise ModelFormatError(
            f"{where}: {given_by} has {len(shape)} dims, the model input '{name}' has {len(dims)}"
        )
    names = [d.dim_param for value in graph_inputs(model) for d in value.type.tensor_type.shape.dim
             if d.HasField("dim_param")]  # fmt: skip
    for index, (dim, value) in enumerate(zip(dims, shape, strict=True)):
        if value is None:
            continue
        if dim.HasField("dim_value") and dim.dim_value != value:
            raise ModelFormatError(
                f"{where}: {given_by} gives {value} for dim {index} of input '{name}', "
                f"which the model fixes at {dim.dim_value}"
            )
        if dim.HasField("dim_param") and names.count(dim.dim_param) == 1:
            make_dim_param_fixed(model.graph, dim.dim_param, value)
        else:  # a name several dims share (PaddleOCR's '?' for H and W) must not fix them all at once
            dim.dim_value = value


def dynamic_dims(model: ModelProto, name: str) -> list[int]:
    """Indices of input ``name``'s dynamic dims other than the batch dim."""
    dims = _input(model, name).type.tensor_type.shape.dim
    return [i for i, d in enumerate(dims) if i > 0 and not d.HasField("dim_value")]


def _input(model: ModelProto, name: str) -> ValueInfoProto:
    return next(value for value in graph_inputs(model) if value.name == name)


def _spec(value_info: ValueInfoProto) -> TensorSpec:
    onnx = import_onnx()
    tensor_type = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    return TensorSpec(name=value_info.name, shape=shape, dtype=dtype)


FLOAT_TYPES = frozenset({1, 10, 11, 16})  # float32, float16, double, bfloat16


def float_weight_bytes(model: ModelProto) -> int:
    """The model's float weights as float32 bytes: initializers, tensors held by nodes
    (PaddlePaddle's exporter keeps every weight in a ``Constant``), and float lists held by
    nodes (ONNX-ML operators keep a tree ensemble's thresholds or a linear model's
    coefficients in attributes)."""
    tensors = [*model.graph.initializer]
    floats = 0
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
        floats += sum(len(a.floats) for a in node.attribute)
    return sum(_elements(t) * 4 for t in tensors if t.data_type in FLOAT_TYPES) + floats * 4


def _elements(tensor: TensorProto) -> int:
    return int(np.prod(tensor.dims)) if len(tensor.dims) else 1


def _model_files(path: Path, model: ModelProto) -> list[Path]:
    """The .onnx file, then its external data files in name order."""
    data = {
        path.parent / entry.value
        for tensor in model.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [path, *sorted(f for f in data if f.is_file())]


def _hash_files(path: Path, files: list[Path]) -> str:
    if len(files) == 1:
        return hash_path(path)
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + bytes.fromhex(hash_path(file)))
    return digest.hexdigest()
