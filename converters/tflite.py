"""SavedModel to TFLite with ``tf.lite.TFLiteConverter``.

Precisions:
- ``fp32``: no optimization.
- ``fp16``: float16 weights; kernels dequantize them to float32 on CPUs without fp16.
- ``dynamic``: int8 weights, float activations quantized on the fly (no calibration data).
- ``int8``: full-integer: int8 kernels and int8 input and output, calibrated on data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgekit.converters.base import Advance, Artifact, ConversionSettings, Converter
from edgekit.converters.source import import_tensorflow
from edgekit.errors import ConversionError, DataError

if TYPE_CHECKING:
    from edgekit.converters.source import SourceModel


class TFLiteConverter(Converter):
    format = "tflite"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "dynamic", "int8")
    calibrated_precisions: ClassVar[frozenset[str]] = frozenset({"int8"})
    source_kinds: ClassVar[frozenset[str]] = frozenset({"keras", "h5", "saved_model", "tflite"})

    def convert(
        self,
        source: SourceModel,
        precision: str,
        calibration: np.ndarray | None,
        advance: Advance,
        settings: ConversionSettings,
    ) -> Artifact:
        if source.tflite_content is not None:  # a ready-made file ships as it is
            return Artifact(self.format, precision, source.tflite_content, 0.0,
                            quantization=_SCHEMES.get(precision))  # fmt: skip
        tf = import_tensorflow()
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir))
        samples = 0
        if precision != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if precision == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "int8":
            if calibration is None:
                raise DataError("int8 needs calibration data: pass --calibration FILE.npz")
            converter.representative_dataset = lambda: _samples(calibration, advance)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            samples = len(calibration)
        started = time.perf_counter()
        try:
            content = converter.convert()
        except Exception as exc:  # the converter raises ConverterError and plain errors alike
            raise ConversionError(
                f"TFLite conversion at {precision} failed: {_summary(exc)}; "
                "rerun with --debug for the converter log"
            ) from exc
        return Artifact(
            format=self.format,
            precision=precision,
            content=bytes(content),
            seconds=time.perf_counter() - started,
            calibration_samples=samples,
            quantization=_SCHEMES.get(precision),
        )

    @classmethod
    def tool_versions(cls) -> dict[str, str]:
        return {"tensorflow": import_tensorflow().__version__}


def detect_precision(content: bytes) -> str:
    """The precision of a ready-made TFLite file, read from its tensor types."""
    from edgekit.runtime.backends import TFLiteBackend

    backend = TFLiteBackend(content)
    if backend.inputs[0].quantized:
        return "int8"
    dtypes = backend.tensor_dtypes()
    if "float16" in dtypes:
        return "fp16"
    if "int8" in dtypes:
        return "dynamic"
    return "fp32"


_SCHEMES = {
    "fp16": {"scheme": "tflite-float16-weights"},
    "dynamic": {"scheme": "tflite-dynamic-range", "weights": "int8"},
    "int8": {"scheme": "tflite-full-integer", "weights": "int8", "activations": "int8", "per_channel": True},
}


def _samples(calibration: np.ndarray, advance: Advance) -> Iterator[list[Any]]:
    for row in calibration:
        yield [row[np.newaxis]]
        advance(1)


def _summary(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [type(exc).__name__])[0][:300]
