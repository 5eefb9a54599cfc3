"""The one vocabulary of artifact formats, precisions, source kinds and execution providers.

Profiles, converters, the CLI's choices and the runtime's TensorRT flags all use these
definitions, so no two places can spell a precision differently. A light module: part of
the kernel that the device side imports too.
"""

from __future__ import annotations

from typing import Literal, get_args

from edgekit.core.errors import InputError

Format = Literal["tflite", "onnx"]
FORMATS: tuple[Format, ...] = get_args(Format)

Precision = Literal["fp32", "fp16", "dynamic", "int8", "int4"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
"""Every precision, from the widest to the narrowest. int4 is weight-only (ONNX's MatMulNBits):
activations stay float."""

AUTO = "auto"
"""Not a precision: the choice of trying a profile's precisions in order."""
PrecisionChoice = Precision | Literal["auto"]
BOTH = "both"
"""Not a format: every registered format in one bundle."""
FormatChoice = Format | Literal["both"]

SourceKind = Literal["keras", "h5", "saved_model", "onnx", "tflite"]
"""What a user brings: a Keras file, a legacy .h5, a SavedModel folder, an ONNX or a TFLite file."""
SOURCE_KINDS: tuple[SourceKind, ...] = get_args(SourceKind)

ExecutionProvider = Literal[
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider", "QNNExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider",
]  # fmt: skip
"""ONNX Runtime's providers a profile may list, the edge devices' ones."""
EXECUTION_PROVIDERS: tuple[ExecutionProvider, ...] = get_args(ExecutionProvider)
TENSORRT: ExecutionProvider = "TensorrtExecutionProvider"
CUDA: ExecutionProvider = "CUDAExecutionProvider"
CPU: ExecutionProvider = "CPUExecutionProvider"
GPU_PROVIDERS: tuple[ExecutionProvider, ...] = (TENSORRT, CUDA)

TENSORRT_FP16: frozenset[Precision] = frozenset({"fp16", "int8"})
"""Artifacts for which TensorRT may pick fp16 kernels (int8 falls back to fp16, not fp32)."""
TENSORRT_INT8: frozenset[Precision] = frozenset({"int8"})
"""Artifacts whose QDQ scales let TensorRT run int8 kernels."""


def check_precision(value: str, allowed: tuple[Precision, ...], who: str) -> Precision:
    """``value`` as a Precision that ``who`` supports, or a one-line error listing the choices."""
    if value not in allowed:
        raise InputError(f"{who} has no precision '{value}'; choose from {', '.join(allowed)} or {AUTO}")
    return value  # type: ignore[return-value]
