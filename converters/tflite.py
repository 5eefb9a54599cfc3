"""SavedModel to TFLite with ``tf.lite.TFLiteConverter``.

Precisions:
- ``fp32``: no optimization.
- ``fp16``: float16 weights; kernels dequantize them to float32 on CPUs without fp16.
- ``dynamic``: int8 weights, float activations quantized on the fly (no calibration data).
- ``int8``: full-integer: int8 kernels and int8 input and output, calibrated on data.
  With layers kept in float (``--keep-float``, or the accuracy fallback), TensorFlow's
  ``QuantizationDebugger`` builds the selectively quantized model: the kept layers run in
  float between dequantize and quantize ops, and the model's input and output are float32.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from edgekit.converters.base import Advance, Artifact, ConversionSettings, Converter, channel_snr_db
from edgekit.converters.litert_quantize import quantize_int8
from edgekit.converters.recurrent import saved_model_for_tflite
from edgekit.converters.source import import_tensorflow, signature_function
from edgekit.core.errors import ConversionError, DataError, InputError, NothingToConvertError
from edgekit.core.formats import Format, Precision, SourceKind
from edgekit.core.manifest import QuantizationScheme
from edgekit.core.samples import Samples
from edgekit.core.validation import updated

if TYPE_CHECKING:
    import tensorflow as tf

    from edgekit.converters.source import SourceModel


class TFLiteConverter(Converter):
    format: ClassVar[Format] = "tflite"
    precisions: ClassVar[tuple[Precision, ...]] = ("fp32", "fp16", "dynamic", "int8")
    calibrated_precisions: ClassVar[frozenset[Precision]] = frozenset({"int8"})
    source_kinds: ClassVar[frozenset[SourceKind]] = frozenset({"keras", "h5", "saved_model", "tflite"})
    ready_made_kinds: ClassVar[frozenset[SourceKind]] = frozenset({"tflite"})
    peak_per_weight_byte: ClassVar[float] = 10.0  # ConvNeXtTiny: 114 MB of weights, +0.9 to +1.2 GB

    def __init__(self) -> None:
        self._floats: dict[tuple[object, ...], bytes] = {}

    def convert(
        self,
        source: SourceModel,
        precision: str,
        calibration: Samples | None,
        advance: Advance,
        settings: ConversionSettings,
    ) -> Artifact:
        if source.tflite_content is not None:  # a ready-made file ships as it is
            return Artifact(self.format, precision, source.tflite_content, 0.0,
                            quantization=_SCHEMES.get(precision))
        tf = import_tensorflow()
        shapes = dict(settings.input_shapes)
        samples = len(calibration) if precision == "int8" and calibration is not None else 0
        float_nodes: list[str] = []
        if precision == "int8" and calibration is not None:
            if settings.keep_float or settings.float_nodes:
                float_nodes = self._resolve_nodes(source, calibration, settings)
            if settings.tflite_quantizer == "litert":
                return self._litert_int8(source, calibration, advance, shapes, float_nodes)
        converter = self._converter(source, precision, calibration, advance, shapes)  # int8 needs data
        if float_nodes:
            assert calibration is not None
            data = calibration
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
        started = time.perf_counter()
        try:
            if float_nodes:
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter,
                    debug_dataset=lambda: _debug_samples(data),
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=float_nodes),
                )
                content = debugger.get_nondebug_quantized_model()
            else:
                content = converter.convert()
        except Exception as exc:  # the converter raises ConverterError and plain errors alike
            raise ConversionError(
                f"TFLite conversion at {precision} failed: {_summary(exc)}; "
                "rerun with --debug for the converter log"
            ) from exc
        if precision == "int8":
            _check_int8(content)
        return Artifact(
            format=self.format,
            precision=precision,
            content=bytes(content),
            seconds=time.perf_counter() - started,
            calibration_samples=samples,
            quantization=(
                updated(_SCHEMES["int8"], io="float32", float_nodes=tuple(float_nodes))
                if float_nodes
                else _SCHEMES.get(precision)
            ),
        )

    def _litert_int8(
        self, source: SourceModel, calibration: Samples, advance: Advance,
        shapes: dict[str, tuple[int | None, ...]], float_nodes: list[str],
    ) -> Artifact:
        """int8 by the LiteRT Quantizer, from the float model the converter makes."""
        started = time.perf_counter()
        content = quantize_int8(self._float_content(source, shapes), calibration, advance, float_nodes)
        _check_int8(content)
        return Artifact(
            format=self.format, precision="int8", content=content, seconds=time.perf_counter() - started,
            calibration_samples=len(calibration),
            quantization=updated(_SCHEMES["int8"], scheme="litert-static", float_nodes=tuple(float_nodes)),
        )

    def _float_content(self, source: SourceModel, shapes: dict[str, tuple[int | None, ...]]) -> bytes:
        """The fp32 .tflite of ``source``, converted once per source and shapes."""
        key = (id(source), tuple(shapes.items()))
        if key not in self._floats:
            try:
                converter = self._converter(source, "fp32", None, lambda n: None, shapes)
                self._floats[key] = bytes(converter.convert())
            except Exception as exc:  # the converter raises ConverterError and plain errors alike
                raise ConversionError(f"TFLite conversion at fp32 failed: {_summary(exc)}") from exc
        return self._floats[key]

    def _converter(
        self,
        source: SourceModel,
        precision: str,
        calibration: Samples | None,
        advance: Advance,
        shapes: dict[str, tuple[int | None, ...]] | None = None,
    ) -> tf.lite.TFLiteConverter:
        tf = import_tensorflow()
        shapes = shapes or {}
        if source.keras_model is not None or not shapes:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_for_tflite(source, shapes)))
        else:  # a SavedModel source with dims left dynamic
            assert source.loaded is not None
            function = signature_function(source.loaded.signatures["serving_default"], shapes)
            converter = tf.lite.TFLiteConverter.from_concrete_functions([function], source.loaded)
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
        return converter

    def layer_errors(self, source: SourceModel, calibration: Samples) -> list[tuple[str, float]]:
        """Per compute layer (see ``layer_rows``), its tensor and SNR in dB."""
        return [(tensor, snr) for op, tensor, snr in self.layer_rows(source, calibration)
                if op in _COMPUTE_OPS and math.isfinite(snr)]  # fmt: skip

    def layer_rows(self, source: SourceModel, calibration: Samples) -> list[tuple[str, str, float]]:
        """Per quantized layer in execution order, TFLite's QuantizationDebugger comparison of
        its int8 output with float on the same input, as a channel-robust SNR in dB (lower
        is worse): median channel signal over mean channel noise. The debugger's own RMSE /
        scale misses the worst case, an outlier channel that stretches a per-tensor scale so
        far that every other channel rounds to noise while the error stays within one step."""
        tf = import_tensorflow()
        sample = calibration.head(100)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=self._converter(source, "int8", sample, lambda n: None),
            debug_dataset=lambda: _debug_samples(sample),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                layer_direct_compare_metrics={"snr_db": _channel_snr_db}
            ),
        )
        debugger.run()
        dump = io.StringIO()
        debugger.layer_statistics_dump(dump)
        return [
            (row["op_name"], row["tensor_name"], float(row.get("snr_db") or "nan"))
            for row in csv.DictReader(io.StringIO(dump.getvalue()))
        ]

    def rank_sensitive_nodes(
        self, source: SourceModel, artifact: Artifact, calibration: Samples, settings: ConversionSettings
    ) -> list[tuple[str, ...]]:
        """First, when the model starts with elementwise preprocessing (a Normalization layer's
        SUB and MUL), that prefix: kept in float, the input stays float32 and is quantized
        after it, so raw features spanning orders of magnitude do not share one int8 scale.
        Then the lowest-SNR layer first, each with the layer before it: a layer's output is
        often ruined by its input's scale (one outlier channel stretches it so far that the
        rest round to zero), and only keeping both in float keeps that tensor in float.
        [] for several inputs: the debugger feeds inputs by position, in an order it picks."""
        if len(source.inputs) > 1:
            return []
        rows = self.layer_rows(source, calibration)
        prefix = []
        for op, tensor, _ in rows:
            if op not in _PREPROCESSING_OPS:
                break
            prefix.append(tensor)
        layers = [(t, snr) for op, t, snr in rows if op in _COMPUTE_OPS and math.isfinite(snr)]
        order = sorted(range(len(layers)), key=lambda i: layers[i][1])
        ranked = [tuple(name for name, _ in layers[max(i - 1, 0) : i + 1]) for i in order]
        return ([tuple(prefix)] if prefix else []) + ranked

    def _resolve_nodes(
        self, source: SourceModel, calibration: Samples, settings: ConversionSettings
    ) -> list[str]:
        chosen = list(settings.float_nodes)
        if settings.keep_float and len(source.inputs) > 1:
            raise InputError("--keep-float on TFLite takes single-input models; use --format onnx")
        if settings.keep_float:
            names = [name for name, _ in self.layer_errors(source, calibration)]
            for pattern in settings.keep_float:
                matches = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
                if not matches:
                    raise InputError(
                        f"--keep-float '{pattern}' matches no layer; some layer names: {', '.join(names[:6])}"
                    )
                chosen += [m for m in matches if m not in chosen]
        return chosen

    @classmethod
    def tool_versions(cls) -> dict[str, str]:
        return {"tensorflow": import_tensorflow().__version__}


def _check_int8(content: bytes) -> None:
    """Refuse an "int8" model whose compute layers all run in float: the accuracy fallback
    can keep every one of them out of int8, and the result is the float model, larger than
    fp32, under the int8 label."""
    from edgekit.runtime.backends.tflite import import_interpreter

    interpreter = import_interpreter()[0](model_content=content)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    compute = [op for op in interpreter._get_ops_details() if op["op_name"] in _COMPUTE_OPS]
    if compute and not any(dtypes.get(op["inputs"][0]) in ("int8", "int16") for op in compute):
        raise NothingToConvertError(
            f"int8 kept all {len(compute)} compute layers in float, so the artifact would be the float "
            "model under another label; use --precision fp16 or fp32"
        )


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


_SCHEMES: dict[str, QuantizationScheme] = {
    "fp16": QuantizationScheme(scheme="tflite-float16-weights"),
    "dynamic": QuantizationScheme(scheme="tflite-dynamic-range", weights="int8"),
    "int8": QuantizationScheme(
        scheme="tflite-full-integer", weights="int8", activations="int8", per_channel=True
    ),
}


_COMPUTE_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}
)
"""Layers worth keeping in float: the debugger can denylist these by name."""

_PREPROCESSING_OPS = frozenset({"SUB", "MUL", "ADD", "DIV", "RSQRT", "SQRT"})
"""Elementwise ops a model may start with to normalize its raw input."""


def _channel_snr_db(
    reference: Sequence[np.ndarray], quantized: Sequence[np.ndarray], scale: float, zero_point: int
) -> float:
    """``channel_snr_db`` of a layer's int8 output against float, channels last."""
    ref = np.stack([np.asarray(r, np.float64) for r in reference])
    deq = (np.stack([np.asarray(q, np.float64) for q in quantized]) - zero_point) * scale
    channels = ref.shape[-1] if ref.ndim > 2 else 1
    signal = np.mean(ref.reshape(-1, channels) ** 2, axis=0)
    noise = np.mean((ref - deq).reshape(-1, channels) ** 2, axis=0)
    return channel_snr_db(signal, noise)


def _samples(calibration: Samples, advance: Advance) -> Iterator[dict[str, np.ndarray]]:
    """One call at a time, by signature input name, as the TFLite calibrator takes them."""
    for feed, count in calibration.batches(1):
        yield feed
        advance(count)


def _debug_samples(calibration: Samples) -> Iterator[list[np.ndarray]]:
    """The QuantizationDebugger takes a list by position: single-input models only."""
    for feed, _ in calibration.batches(1):
        yield list(feed.values())


def _summary(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [type(exc).__name__])[0][:300]
