"""A decoder's artifacts, made at each precision and measured the way the gate reads them.

ONNX: fp32, fp16 (LayerNorm, Softmax and the other ``FP32_OPS`` kept in fp32, the cache and
the logits float32 at the edges), int8 or int4 weight-only (``MatMulNBits``), or dynamic
int8. TFLite (a Keras source): one model with ``prefill`` and ``decode`` signatures at fp32,
fp16, dynamic, or int8 or int4 weight-only (``converters/keras_decoder_tflite.py``).

``Measured`` runs an artifact in the runtime's own backend, two threads: perplexity on the
held-out texts, the greedy continuation of each, and decode speed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.options import ConvertOptions
from edgekit.core.errors import InputError
from edgekit.core.manifest import GenerationSpec, QuantizationScheme
from edgekit.runtime.generate import Decoder, Generation, Sampling

CONTINUATION = 8
"""Greedy tokens compared with the float model's per held-out prompt."""


class Measured:
    """One artifact in the runtime's backend: perplexity, greedy continuations, decode speed."""

    def __init__(
        self, content: bytes, fmt: str, spec: GenerationSpec, texts: list[list[int]],
        reference: Measured | None = None,
    ) -> None:  # fmt: skip
        from edgekit.runtime.backends.base import backend_for

        backend = backend_for(fmt)(content, 2)
        self.decoder = Decoder(backend.run, [o.name for o in backend.outputs], spec)
        self.tokens = sum(len(t) - 1 for t in texts)
        self.perplexity = self._perplexity(texts) if texts else None
        self.float_perplexity = reference.perplexity if reference is not None else self.perplexity
        self.continuations = [self._greedy(t[: max(1, len(t) // 2)]) for t in texts]
        self.agreement = None
        if reference is not None and texts:
            pairs = [(a, b) for mine, theirs in zip(self.continuations, reference.continuations, strict=True)
                     for a, b in zip(mine, theirs, strict=False)]  # fmt: skip
            self.agreement = 100.0 * sum(a == b for a, b in pairs) / max(len(pairs), 1)
        self.tokens_per_s = self._speed(texts[0] if texts else [1])

    def _perplexity(self, texts: list[list[int]]) -> float:
        total = 0.0
        for ids in texts:
            logits = self.decoder.logits_of(ids)
            shifted = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            total -= float(log_probs[np.arange(len(ids) - 1), ids[1:]].sum())
        return float(np.exp(total / max(self.tokens, 1)))

    def _greedy(self, prompt: list[int]) -> list[int]:
        return list(self.decoder.tokens(prompt, Sampling(max_new_tokens=CONTINUATION), Generation()))

    def _speed(self, prompt: list[int]) -> float:
        decoder = self.decoder.without_stops()  # a speed needs tokens: go past the stop token
        for _ in decoder.tokens(prompt[:8], Sampling(max_new_tokens=33), Generation()):
            pass  # warm up at the measured lengths: engines plan each new shape once (XNNPACK)
        tokens = decoder.tokens(prompt[:8], Sampling(max_new_tokens=33), Generation())
        next(tokens, None)  # the prefill and the first token
        started = time.perf_counter()
        count = sum(1 for _ in tokens)
        return max(count, 1) / max(time.perf_counter() - started, 1e-9)


def full_context_peak(fmt: str, content: bytes, spec: GenerationSpec) -> int:
    """Peak resident memory of loading the artifact and one decode step with the cache full
    (``max_context`` - 1 tokens before it), measured in a fresh process."""
    from edgekit.convert.measure import MemoryProbe
    from edgekit.core.errors import ConversionError

    decoder = _feeder(spec)
    shape = (1, spec.heads, spec.max_context - 1, spec.head_size)
    cache = [np.zeros(shape, np.dtype(spec.cache_dtype)) for _ in spec.cache]
    try:
        return MemoryProbe(fmt, decoder.feed([0], spec.max_context - 1, cache)).peak_bytes(content)
    except ConversionError as exc:
        why = str(exc).split(": ")[-1]
        raise ConversionError(
            f"the decoder fails at its full context of {spec.max_context} tokens ({why}); "
            "give --max-sequence-length the context it was trained for"
        ) from None


def make_onnx(
    model: Any, precision: str, options: ConvertOptions, spec: GenerationSpec, texts: list[list[int]]
) -> tuple[bytes, QuantizationScheme | None]:  # fmt: skip
    from edgekit.converters.onnx import ONNXConverter, for_tensorrt
    from edgekit.converters.onnx_fp16 import to_float16
    from edgekit.converters.onnx_weights import weight_only

    refusal = ONNXConverter.refusal(precision, options.profile)  # type: ignore[arg-type]
    if refusal:
        raise InputError(f"{precision} for {options.profile.id}: {refusal}")
    if precision == "fp32":
        return model.SerializeToString(), None
    if precision == "fp16":
        made = to_float16(model, outputs_apart=True)
        return made.SerializeToString(), QuantizationScheme(scheme="onnx-float16", io="float32")
    if precision == "int8" and for_tensorrt(options.profile):
        return qdq_decoder(model, spec, texts)
    if precision in ("int4", "int8"):
        made, scheme = weight_only(model, bits=4 if precision == "int4" else 8)
        return made.SerializeToString(), scheme
    if precision == "dynamic":
        return dynamic_onnx(model), QuantizationScheme(scheme="onnx-dynamic", weights="int8")
    raise InputError(f"{precision} is not a decoder precision: use fp32, fp16, int8, int4, dynamic or auto")


def make_tflite(
    model: Any, precision: str, float_content: bytes | None = None
) -> tuple[bytes, QuantizationScheme | None]:  # fmt: skip
    """A Keras decoder as TFLite with ``prefill`` and ``decode`` signatures; the weight-only
    precisions quantize ``float_content`` (its fp32 TFLite) when given."""
    from edgekit.converters.keras_decoder_tflite import keras_decoder_to_tflite
    from edgekit.views.console import quiet_native_output

    with quiet_native_output():
        content, _ = keras_decoder_to_tflite(model, precision, float_content)
    weight_only = {f"int{bits}": QuantizationScheme(scheme="litert-weight-only", weights=f"int{bits}",
                                                     per_channel=True) for bits in (4, 8)}  # fmt: skip
    schemes = {"fp16": QuantizationScheme(scheme="tflite-float16", io="float32"),
               "dynamic": QuantizationScheme(scheme="tflite-dynamic", weights="int8"),
               **weight_only}  # fmt: skip
    return content, schemes.get(precision)


def dynamic_onnx(model: Any) -> bytes:
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekit.converters.onnx_weights import quiet_quantizer

    with tempfile.TemporaryDirectory(prefix="edgekit-decoder-") as tmp, quiet_quantizer():
        onnx.save(model, f"{tmp}/float.onnx")
        quantize_dynamic(f"{tmp}/float.onnx", f"{tmp}/dynamic.onnx", weight_type=QuantType.QInt8)
        return Path(f"{tmp}/dynamic.onnx").read_bytes()


def qdq_decoder(model: Any, spec: GenerationSpec, texts: list[list[int]]) -> tuple[bytes, QuantizationScheme]:
    """int8 for TensorRT: QuantizeLinear/DequantizeLinear around each MatMul with a weight,
    symmetric (as TensorRT requires), weights per channel, activations calibrated on the
    held-out texts run as prompts. The attention's own products (query by key, weights by
    value) and everything else stay float."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgekit.converters.onnx_weights import quiet_quantizer

    if not texts:
        raise InputError("int8 for TensorRT is QDQ, calibrated on text: pass held-out text with --eval")
    named = onnx.ModelProto()
    named.CopyFrom(model)
    weights = {init.name for init in named.graph.initializer}
    for index, node in enumerate(named.graph.node):
        node.name = node.name or f"{node.op_type}_{index}"
    chosen = [n.name for n in named.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    feeds = [_prefill_feed(spec, ids) for ids in texts]
    with tempfile.TemporaryDirectory(prefix="edgekit-decoder-") as tmp, quiet_quantizer():
        onnx.save(named, f"{tmp}/float.onnx")
        quantize_static(
            f"{tmp}/float.onnx", f"{tmp}/qdq.onnx", _Feeds(feeds), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=chosen, op_types_to_quantize=["MatMul"],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}},
        )  # fmt: skip
        content = Path(f"{tmp}/qdq.onnx").read_bytes()
    return content, QuantizationScheme(
        scheme="onnx-qdq", weights="int8 symmetric", activations="int8 symmetric", per_channel=True,
        calibration_method="minmax", target="tensorrt",
    )  # fmt: skip


def _prefill_feed(spec: GenerationSpec, ids: list[int]) -> dict[str, np.ndarray]:
    decoder = _feeder(spec)
    return decoder.feed(ids, 0, decoder.empty_cache())


def _feeder(spec: GenerationSpec) -> Decoder:
    """A loop with no engine: for the feeds it would give one."""
    return Decoder(lambda feed: [], [spec.logits, *(p for _, p in spec.cache)], spec)


class _Feeds:
    """ONNX Runtime's calibration reader over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)
