"""Weight-only quantization of an ONNX graph's MatMul weights to 4 or 8 bits, by ONNX
Runtime's own quantizer (``MatMulNBitsQuantizer``): each constant weight becomes a
``MatMulNBits`` node that stores blocks of ``block_size`` values with one scale each and
dequantizes them as it multiplies. Activations stay float, so no calibration is needed. What
shrinks is the file and the memory the weights take, which dominate in a decoder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from edgekit.core.errors import ConversionError, MissingDependencyError
from edgekit.core.manifest import QuantizationScheme

if TYPE_CHECKING:
    from onnx import ModelProto  # noqa: TC004 - imported again at run time, when onnx is there

BLOCK_SIZE = 32
"""Values per scale: ONNX Runtime's model builder default for 4-bit CPU models."""
ACCURACY_LEVEL = 4
"""MatMulNBits multiplies in int8 on CPU (level 4): its fastest kernel on x86 and Arm."""


def weight_only(
    model: ModelProto, bits: int, block_size: int = BLOCK_SIZE
) -> tuple[ModelProto, QuantizationScheme]:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # onnx_ir, which the quantizer needs, is missing
        raise MissingDependencyError("onnx_ir", "convert", "4-bit and 8-bit weights") from exc
    from onnx import ModelProto

    copy = ModelProto()
    copy.CopyFrom(model)  # the quantizer rewrites the graph it is given: the caller's stays float
    quantizer = MatMulNBitsQuantizer(
        copy, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=ACCURACY_LEVEL
    )
    try:
        with quiet_quantizer():
            quantizer.process()
    except Exception as exc:  # the quantizer raises plain exceptions
        raise ConversionError(f"{bits}-bit weight quantization failed: {exc}") from exc
    scheme = QuantizationScheme(scheme="onnx-matmul-nbits", weights=f"int{bits} blocks of {block_size}")
    return quantizer.model.model, scheme


@contextmanager
def quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizers log every node they skip on the root logger: not the user's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
