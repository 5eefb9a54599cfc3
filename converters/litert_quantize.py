"""TFLite int8 through the LiteRT Quantizer (litert-quantizer, formerly ai-edge-quantizer).

Google deprecates quantizing inside the TFLite converter: convert to a float LiteRT model,
then quantize that with the LiteRT Quantizer. ``weight_only`` is its int8 and int4
weight-only modes, which TFLite decoders use. Its ``static_wi8_ai8`` recipe gives int8
weights per channel and int8 activations, inputs and outputs included, as the converter's
full-integer mode does; tensors kept in float get a recipe entry of their own
(``no_quantize``), matched by their output tensor's name. Measured beside the converter in
``benchmarks/tflite_quantizers.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Sequence

from edgekit.converters.base import Advance
from edgekit.converters.source_model import first_line
from edgekit.core.errors import ConversionError, MissingDependencyError
from edgekit.core.samples import Samples

SIGNATURE = "serving_default"


def quantize_int8(
    float_content: bytes, calibration: Samples, advance: Advance, float_tensors: Sequence[str] = ()
) -> bytes:
    """``float_content`` with int8 weights and activations, calibrated on ``calibration``;
    the ops writing ``float_tensors`` stay float."""
    try:
        from litert_quantizer import qtyping, quantizer, recipe
        from litert_quantizer.algorithm_manager import AlgorithmName
    except ImportError as exc:
        raise MissingDependencyError("litert-quantizer", "convert", "quantizing TFLite models") from exc
    engine = quantizer.Quantizer(bytearray(float_content), recipe.static_wi8_ai8())
    if float_tensors:
        names = "|".join(re.escape(name) for name in float_tensors)
        scope = f"(?:^|;)(?:{names});"  # an op's scope: its output names, each followed by ";"
        every_op = qtyping.TFLOperationName.ALL_SUPPORTED
        engine.update_quantization_recipe(scope, every_op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    feeds = [feed for feed, _ in calibration.batches(1)]  # it counts the data before it runs it
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its own progress bar; edgekit shows one
            ranges = engine.calibrate({SIGNATURE: feeds}, num_threads=os.cpu_count() or 1)
            advance(len(feeds))
            result = engine.quantize(ranges, enable_progress_report=False)
    except Exception as exc:  # it raises ValueError, RuntimeError and others for unsupported graphs
        raise ConversionError(f"the LiteRT Quantizer failed: {first_line(exc)}") from exc
    if result.quantized_model is None:
        raise ConversionError("the LiteRT Quantizer returned no model")
    return bytes(result.quantized_model)


def weight_only(float_content: bytes, bits: int) -> bytes:
    """``float_content`` with its weights in ``bits`` bits per channel, dequantized as each op
    runs (float compute), by the LiteRT Quantizer's weight-only recipes: no calibration. Every
    signature of the model is quantized, its weights still shared between them."""
    try:
        from litert_quantizer import quantizer, recipe
    except ImportError as exc:
        raise MissingDependencyError("litert-quantizer", "convert", "quantizing TFLite models") from exc
    plan = recipe.weight_only_wi4_afp32() if bits == 4 else recipe.weight_only_wi8_afp32()
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            result = quantizer.Quantizer(bytearray(float_content), plan).quantize()
    except Exception as exc:  # it raises ValueError, RuntimeError and others for unsupported graphs
        raise ConversionError(f"the LiteRT Quantizer failed: {first_line(exc)}") from exc
    if result.quantized_model is None:
        raise ConversionError("the LiteRT Quantizer returned no model")
    return bytes(result.quantized_model)
