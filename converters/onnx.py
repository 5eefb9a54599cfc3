"""ONNX artifacts for ONNX Runtime on CPUs and for TensorRT on Jetson GPUs.

- TensorFlow sources go through tf2onnx from the exported SavedModel's serving function
  (tf2onnx's ``from_keras`` breaks on Keras 3 with ``KeyError: 'keras_tensor_N'``).
- ``fp16``: onnxconverter-common's float16 converter; inputs and outputs stay float32.
- ``dynamic``: ONNX Runtime ``quantize_dynamic``, int8 weights, activations quantized at run
  time (the right choice for transformer encoders).
- ``int8``: ONNX Runtime ``quantize_static`` in QDQ format with per-channel weights,
  calibrated with minmax, entropy or percentile. Per-channel DequantizeLinear needs opset 13,
  so older models are upgraded with ``onnx.version_converter`` first.

TensorRT profiles get symmetric int8 activations and weights (every zero point 0), because
TensorRT's explicit quantization accepts only symmetric INT8 Q/DQ and quantizes weights
per output channel. CPU profiles get uint8 asymmetric activations with int8 symmetric
weights (U8S8), ONNX Runtime's fast CPU path.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from edgekit.converters.base import Advance, Artifact, ConversionSettings, Converter
from edgekit.converters.onnx_fp16 import activation_peaks, rank_overflowing_nodes, to_float16
from edgekit.converters.onnx_sensitivity import activation_sqnr, sqnr_drop
from edgekit.converters.onnx_source import copy_model, dynamic_dims, fix_input_dims, import_onnx
from edgekit.converters.onnx_weights import weight_only
from edgekit.converters.source import first_line
from edgekit.converters.tf_to_onnx import from_tensorflow
from edgekit.core.errors import ConversionError, DataError, InputError, NothingToConvertError
from edgekit.core.formats import PRECISIONS, TENSORRT, Format, Precision, SourceKind
from edgekit.core.manifest import QuantizationScheme
from edgekit.core.samples import Samples

if TYPE_CHECKING:
    from onnx import ModelProto

    from edgekit.converters.source import SourceModel
    from edgekit.core.profiles import DeviceProfile

MIN_QDQ_OPSET = 13
MAX_PROTOBUF_BYTES = 2**31 - 1
_SENSITIVITY_SAMPLES = 64


def target_opset(profile: DeviceProfile) -> int:
    """The opset to export at: TensorRT before 8.5 (JetPack 4.6) parses up to opset 13."""
    trt = profile.accelerator.tensorrt_version
    if trt and tuple(int(p) for p in trt.split(".")[:2]) < (8, 5):
        return 13
    return 17


def for_tensorrt(profile: DeviceProfile) -> bool:
    return (
        profile.accelerator.tensorrt_version is not None
        and TENSORRT in profile.runtime.execution_providers
    )


class ONNXConverter(Converter):
    format: ClassVar[Format] = "onnx"
    precisions: ClassVar[tuple[Precision, ...]] = PRECISIONS
    calibrated_precisions: ClassVar[frozenset[Precision]] = frozenset({"int8"})
    fallback_precisions: ClassVar[frozenset[Precision]] = frozenset({"int8", "fp16"})
    source_kinds: ClassVar[frozenset[SourceKind]] = frozenset({"keras", "h5", "saved_model", "onnx"})
    peak_per_weight_byte: ClassVar[float] = 56.0  # ConvNeXtTiny from Keras: 114 MB of weights, +6.3 GB

    @classmethod
    def refusal(cls, precision: Precision, profile: DeviceProfile) -> str | None:
        if precision == "dynamic" and TENSORRT in profile.runtime.execution_providers:
            return (
                "TensorRT cannot run DynamicQuantizeLinear, and the CUDA provider runs those ops "
                "on the host; use int8 (QDQ) or fp16"
            )
        if precision == "int4" and TENSORRT in profile.runtime.execution_providers:
            return "TensorRT has no 4-bit weight kernel (MatMulNBits); use fp16 or int8 (QDQ)"
        return None

    @classmethod
    def picks_fastest(cls, profile: DeviceProfile) -> bool:
        return profile.accelerator.kind == "none"  # a GPU profile's speed cannot be measured here

    def __init__(self) -> None:
        self._float: dict[tuple[object, ...], ModelProto] = {}
        self._prepared: dict[tuple[object, ...], bytes] = {}
        self._peaks: dict[int, dict[str, float]] = {}

    def convert(
        self,
        source: SourceModel,
        precision: str,
        calibration: Samples | None,
        advance: Advance,
        settings: ConversionSettings,
    ) -> Artifact:
        notes: list[str] = []
        started = time.perf_counter()
        model = self._float_model(source, settings)
        quantization: QuantizationScheme | None = None
        samples = 0
        if precision == "fp16":
            model = to_float16(model, settings.float_nodes)
            _check_changed(model, precision)
            quantization = QuantizationScheme(
                scheme="onnx-float16", io="float32", float_nodes=settings.float_nodes
            )
        elif precision in ("dynamic", "int8"):
            if precision == "int8" and calibration is None:
                raise DataError("int8 needs calibration data: pass --calibration FILE.npz")
            # only static int8 needs every dim fixed (its calibration); dynamic int8 keeps them
            shaped_by = calibration if precision == "int8" else None
            prepared = self._prepared_model(source, model, shaped_by, notes)
            float_nodes = resolve_nodes(prepared, settings)
            model, quantization = _quantize(prepared, precision, calibration, advance, settings, float_nodes)
            _check_changed(model, precision)
            samples = len(calibration) if precision == "int8" and calibration is not None else 0
        elif precision == "int4":
            model, quantization = weight_only(model, bits=4)
            _check_changed(model, precision)
        return Artifact(
            format=self.format,
            precision=precision,
            content=_serialize(model),
            seconds=time.perf_counter() - started,
            calibration_samples=samples,
            opset=_opset(model),
            quantization=quantization,
            notes=tuple(notes),
        )

    def rank_sensitive_nodes(
        self, source: SourceModel, artifact: Artifact, calibration: Samples, settings: ConversionSettings
    ) -> list[tuple[str, ...]]:
        """Per tensor, the nodes that produce or consume it, the costliest tensor first.

        A tensor's cost is how much signal-to-noise it loses against the float model
        relative to the tensors it is computed from, so errors are charged where they
        arise, not everywhere downstream of it.
        """
        if artifact.precision == "fp16":
            model = self._float_model(source, settings)
            if id(model) not in self._peaks:  # once per model: every fallback round reuses them
                self._peaks[id(model)] = activation_peaks(
                    model, (f for f, _ in calibration.head(_SENSITIVITY_SAMPLES).batches(1))
                )
            return rank_overflowing_nodes(model, self._peaks[id(model)])
        onnx = import_onnx()
        prepared = self._prepared_model(source, self._float_model(source, settings), calibration, [])
        feeds = (feed for feed, _ in calibration.head(_SENSITIVITY_SAMPLES).batches(1))
        sqnr = activation_sqnr(prepared, onnx.load_from_string(artifact.content), feeds)
        ranked = sorted(sqnr, key=lambda tensor: sqnr_drop(prepared, sqnr, tensor), reverse=True)
        touching: dict[str, list[str]] = {}
        for node in prepared.graph.node:
            for tensor in (*node.input, *node.output):
                touching.setdefault(tensor, []).append(node.name)
        # Keeping a tensor out of int8 means keeping every node that would quantize it.
        groups = [tuple(touching[tensor]) for tensor in ranked if tensor in touching]
        if _has_attention(prepared):
            groups.insert(0, tuple(n.name for n in prepared.graph.node if n.op_type not in _INT8_COMPUTE))
        return groups

    @classmethod
    def tool_versions(cls) -> dict[str, str]:
        import onnxruntime

        return {"onnx": import_onnx().__version__, "onnxruntime": onnxruntime.__version__}

    def _float_model(self, source: SourceModel, settings: ConversionSettings) -> ModelProto:
        opset = target_opset(settings.profile)
        key = (id(source), opset, settings.input_shapes)
        if key not in self._float:
            if source.onnx_model is not None:
                self._float[key] = _named_nodes(source.onnx_model)
            else:
                self._float[key] = from_tensorflow(source, opset, dict(settings.input_shapes))
        return self._float[key]

    def _prepared_model(
        self, source: SourceModel, model: ModelProto, calibration: Samples | None, notes: list[str]
    ) -> ModelProto:
        """Opset 13+, dynamic dims fixed from the data, ORT's quantization pre-processing."""
        onnx = import_onnx()
        shapes = _call_shapes(calibration) if calibration is not None else {}
        key = (id(source), id(model), tuple(shapes.items()))
        if key not in self._prepared:
            model = _with_min_opset(model, MIN_QDQ_OPSET, notes)
            dynamic = [name for name in shapes if dynamic_dims(model, name)]
            if dynamic:
                model = copy_model(model)
            for name in dynamic:
                fix_input_dims(model, name, (None, *shapes[name][1:]), "model", "the calibration data")
                notes.append(
                    f"fixed the dynamic dims of input '{name}' from the calibration data: {shapes[name][1:]}"
                )
            # the pre-processing optimizer leaves the nodes it makes unnamed; float nodes go by name
            prepared = _named_nodes(onnx.load_from_string(_pre_process(model, notes)))
            self._prepared[key] = prepared.SerializeToString()
        return onnx.load_from_string(self._prepared[key])


def _call_shapes(samples: Samples) -> dict[str, tuple[int, ...]]:
    """Per input, the shape of one call's value (the batch dim as the data gives it)."""
    feed, _ = next(samples.batches(1))
    return {name: tuple(np.shape(value)) for name, value in feed.items()}


def _with_min_opset(model: ModelProto, opset: int, notes: list[str]) -> ModelProto:
    current = _opset(model)
    if current >= opset:
        return model
    onnx = import_onnx()
    try:
        upgraded = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # the version converter fails on ops it cannot adapt
        raise ConversionError(
            f"the model is opset {current} and quantization needs {opset}; upgrading failed "
            f"({first_line(exc)}); export the model at opset {opset} or later"
        ) from exc
    notes.append(f"upgraded the model from opset {current} to {opset}: per-channel QDQ needs it")
    return upgraded


def _pre_process(model: ModelProto, notes: list[str]) -> bytes:
    """ONNX Runtime's quantization pre-processing; without symbolic shapes if that fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx = import_onnx()
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-pre-") as tmp, _cwd(tmp):
        onnx.save(model, "float.onnx")
        try:
            quant_pre_process("float.onnx", "prepared.onnx")
        except Exception as exc:  # symbolic shape inference raises AssertionError and others
            notes.append(
                f"ONNX Runtime's symbolic shape inference failed ({type(exc).__name__}: "
                f"{first_line(exc)}); fell back to ONNX shape inference"
            )
            quant_pre_process("float.onnx", "prepared.onnx", skip_symbolic_shape=True)
        return Path("prepared.onnx").read_bytes()


def resolve_nodes(model: ModelProto, settings: ConversionSettings) -> list[str]:
    """Node names matching ``--keep-float`` patterns, plus those the accuracy fallback chose."""
    names = [node.name for node in model.graph.node]
    chosen = list(settings.float_nodes)
    for pattern in settings.keep_float:
        matches = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            raise InputError(
                f"--keep-float '{pattern}' matches no node; some node names: {', '.join(names[:8])}"
            )
        chosen += [m for m in matches if m not in chosen]
    return chosen


def _quantize(
    prepared: ModelProto,
    precision: str,
    calibration: Samples | None,
    advance: Advance,
    settings: ConversionSettings,
    float_nodes: list[str],
) -> tuple[ModelProto, QuantizationScheme]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    onnx = import_onnx()
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-quant-") as tmp, _cwd(tmp):
        onnx.save(prepared, "prepared.onnx")
        if precision == "dynamic":
            quantize_dynamic("prepared.onnx", "quantized.onnx", weight_type=QuantType.QInt8,
                             nodes_to_exclude=float_nodes)
            scheme = QuantizationScheme(scheme="onnx-dynamic", weights="int8", float_nodes=tuple(float_nodes))
            return onnx.load("quantized.onnx"), scheme
        assert calibration is not None
        symmetric = for_tensorrt(settings.profile)
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[settings.calibration_method]  # fmt: skip
        # One sample a call: a model may fix its batch at 1, and the histogram calibrators
        # stack per-call arrays, so they need equal calls anyway.
        reader = _Reader(calibration, advance)
        try:
            quantize_static(
                "prepared.onnx", "quantized.onnx", reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=float_nodes,
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                               "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}},
            )
        except Exception as exc:  # ORT raises plain exceptions from calibration and quantization
            raise ConversionError(f"ONNX int8 quantization failed: {first_line(exc)}") from exc
        return onnx.load("quantized.onnx"), QuantizationScheme(
            scheme="onnx-qdq", weights="int8 symmetric",
            activations="int8 symmetric" if symmetric else "uint8 asymmetric",
            per_channel=True, calibration_method=settings.calibration_method,
            target="tensorrt" if symmetric else "cpu", float_nodes=tuple(float_nodes),
        )


class _Reader:
    """Feeds calibration data to ONNX Runtime one sample a call, advancing the progress bar."""

    def __init__(self, samples: Samples, advance: Advance) -> None:
        self._batches = samples.batches(1)
        self._advance = advance

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed, count = next(self._batches, (None, 0))
        if feed is None:
            return None
        self._advance(count)
        return feed


_INT8_COMPUTE = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
"""The ops int8 pays off in; the rest of a transformer is cheap and sensitive (Softmax,
LayerNorm, the attention mask's very negative fill), so a transformer's first fallback round
keeps all of it in float, as ONNX Runtime's own transformer quantization quantizes MatMuls."""


def _has_attention(model: ModelProto) -> bool:
    """Whether a MatMul multiplies two activations (attention's scores and context)."""
    weights = {t.name for t in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return any(
        n.op_type == "MatMul" and not any(i in weights for i in n.input) for n in model.graph.node
    )


_QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearConv", "QLinearMatMul",
})  # fmt: skip


def _check_changed(model: ModelProto, precision: str) -> None:
    """Refuse a precision that left every node as it was: a graph of ONNX-ML operators
    (TreeEnsemble, Scaler, LinearClassifier) has no int8 or fp16 kernels, and its "int8"
    artifact would be the float model under another label."""
    nodes = model.graph.node
    if precision == "fp16":
        changed = any(t.data_type == 10 for t in model.graph.initializer) or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == 10 for a in n.attribute) for n in nodes
        )
    else:
        changed = any(n.op_type in (*_QUANTIZED_OPS, "MatMulNBits") for n in nodes)
    if changed:
        return
    kinds = ", ".join(dict.fromkeys(n.op_type for n in nodes if n.op_type not in ("Identity", "Cast")))
    raise NothingToConvertError(
        f"{precision} changes nothing in this model: none of its operators ({kinds or 'none'}) "
        f"runs at {precision} in ONNX Runtime, so the artifact would be the float model under another "
        "label; use --precision fp32"
    )


def _named_nodes(model: ModelProto) -> ModelProto:
    """``model``, or a copy with a unique name for every unnamed node (PaddleOCR's exporter
    leaves some unnamed): float node lists and the casts fp16 inserts go by name."""
    if all(node.name for node in model.graph.node):
        return model
    named = copy_model(model)
    taken = {node.name for node in named.graph.node}
    for index, node in enumerate(named.graph.node):
        if not node.name:
            node.name = next(
                n for n in (f"{node.op_type}_{index}", f"{node.op_type}_{index}_edgekit") if n not in taken
            )
            taken.add(node.name)
    return named


def _serialize(model: ModelProto) -> bytes:
    if model.ByteSize() > MAX_PROTOBUF_BYTES:
        raise ConversionError("the ONNX model is over 2 GB, which one protobuf cannot hold")
    return model.SerializeToString()


def _opset(model: ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


@contextlib.contextmanager
def _cwd(folder: str) -> Iterator[None]:
    """ONNX Runtime's tools write scratch files to the working directory; keep them out of the user's."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)
