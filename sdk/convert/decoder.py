"""Decoders that generate text, from an ONNX file in the layout optimum and ONNX Runtime's
model builder export (``input_ids``, ``attention_mask``, ``position_ids`` and
``past_key_values.{i}.key/value`` in; ``logits`` and ``present.{i}.key/value`` out).

Each precision is made from the float graph: fp16 (LayerNorm, Softmax and the other
``FP32_OPS`` kept in fp32, the cache and the logits float32 at the edges), int8 or int4
weight-only (``MatMulNBits``), or dynamic int8. The gate is perplexity on held-out text
(``--eval`` JSONL, one ``{"text": ...}`` a line) against the float model, and the report
adds how many of the float model's greedy continuation tokens each artifact repeats.
``auto`` keeps the passing precision that decodes fastest here on a CPU profile, else the
first that passes in the profile's order. The memory budget counts the weights and the cache
at the bundle's maximum context.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.options import ConvertOptions, ConvertResult
from edgekit.core.errors import ConversionError, DataError, InputError
from edgekit.core.manifest import (
    FORMAT_VERSION,
    ArtifactEntry,
    GenerationQuality,
    GenerationSpec,
    Manifest,
    Metrics,
    Preprocessing,
    QuantizationScheme,
    Source,
    Tensor,
    TextSpec,
)  # fmt: skip
from edgekit.core.validation import updated
from edgekit.runtime.generate import Decoder, Sampling

CACHE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
STOP_NAMES = ("<|endoftext|>", "</s>", "<eos>", "[EOS]", "<|end|>", "<|eot_id|>")
DEFAULT_MAX_INCREASE = 5.0
CONTINUATION = 8
"""Greedy tokens compared with the float model's per held-out prompt."""
AUTO_CPU = ("int4", "int8", "dynamic", "fp32")
AUTO_GPU = ("fp16", "fp32")
MB = 1 << 20


def is_decoder(path: Path) -> bool:
    """An ONNX file whose inputs take a key-value cache, or a Keras file with causal
    self-attention (its saved config says ``use_causal_mask``)."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".keras":
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                config = archive.read("config.json")
        except (OSError, KeyError, zipfile.BadZipFile):
            return False  # the usual path says what is wrong with it
        return b'"use_causal_mask": true' in config
    if path.suffix.lower() != ".onnx":
        return False
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # not ONNX at all: the usual path says so
        return False
    return any(CACHE.match(i.name) for i in graph.input)


def _load(path: Path) -> tuple[Any, str]:
    """The decoder as ONNX with its cache, and the source's kind."""
    import onnx

    if path.suffix.lower() != ".keras":
        return onnx.load(str(path)), "onnx"
    from edgekit.converters.keras_decoder import is_keras_decoder, keras_decoder_to_onnx
    from edgekit.converters.source import load_keras_model

    model = load_keras_model(path)
    if not is_keras_decoder(model):
        raise InputError(f"{path.name} attends causally but does not give a score per token: not a decoder")
    return keras_decoder_to_onnx(model), "keras"


def convert_decoder(options: ConvertOptions) -> ConvertResult:
    if options.format not in (None, "onnx"):
        raise InputError(
            f"--format {options.format}: a decoder converts to ONNX only (its cache runs on ONNX Runtime, "
            "with MatMulNBits for 4-bit weights); TFLite decoders are not built yet: use --format onnx"
        )
    started = time.perf_counter()
    model, kind = _load(options.model)
    tokenizer_json = _tokenizer(options)
    spec = decoder_spec(model, options, tokenizer_json)
    texts = _texts(options.evaluation, tokenizer_json, spec)
    float_bytes = model.SerializeToString()
    reference = _Measured(float_bytes, spec, texts)
    made: list[tuple[ArtifactEntry, bytes, _Measured, str | None]] = []
    problems: list[tuple[ArtifactEntry, bytes, _Measured, str | None]] = []
    for precision in _precisions(options):
        content, scheme = _make(model, precision, options)
        measured = _Measured(content, spec, texts, reference)
        entry = _entry(options, spec, precision, content, scheme, measured, len(float_bytes), started)
        problem = _problem(options, entry, spec)
        if problem and options.precision != "auto":
            raise ConversionError(f"{precision}: {problem}")
        (problems if problem else made).append((entry, content, measured, problem))
    if not made:
        reasons = "; ".join(f"{e.precision}: {p}" for e, _, _, p in problems)
        raise ConversionError(f"no precision passed: {reasons}")
    entry, content, _, _ = _choose(options, made)
    manifest = _manifest(options, spec, entry, tokenizer_json, model, kind)
    warnings = () if texts else ("no --eval text: the perplexity of the converted model is not checked",)
    contents = {entry.path: content, "tokenizer.json": tokenizer_json}
    seconds = {"total": time.perf_counter() - started}
    return ConvertResult(options.output, manifest, (), warnings, contents, seconds)


def decoder_spec(model: Any, options: ConvertOptions, tokenizer_json: bytes) -> GenerationSpec:
    names = {i.name for i in model.graph.input}
    outputs = [o.name for o in model.graph.output]
    cache = sorted((int(m[1]), m[2], name) for name in names if (m := CACHE.match(name)))
    pairs = tuple((name, f"present.{layer}.{kind}") for layer, kind, name in cache)
    missing = [present for _, present in pairs if present not in outputs]
    if missing or "input_ids" not in names or "logits" not in outputs:
        raise InputError(
            f"{options.model.name} is not a decoder in optimum's layout: it needs input_ids and "
            f"past_key_values.N.key/value in, logits and present.N.key/value out"
            + (f" (no {missing[0]})" if missing else "")
        )
    shape = next(i for i in model.graph.input if i.name == pairs[0][0]).type.tensor_type.shape.dim
    heads, head_size = shape[1].dim_value, shape[3].dim_value
    logits = next(o for o in model.graph.output if o.name == "logits").type.tensor_type.shape.dim
    vocab = logits[-1].dim_value
    if not (heads and head_size and vocab):
        raise InputError("the decoder's cache heads and head size, and its vocabulary, must be fixed sizes")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json.decode())
    if tokenizer.get_vocab_size() > vocab:
        raise InputError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens and the model's vocabulary {vocab}: "
            "they do not belong together; pass the tokenizer the model was trained with"
        )
    stops = tuple(t for t in (tokenizer.token_to_id(n) for n in STOP_NAMES) if t is not None)
    return GenerationSpec(
        ids="input_ids", mask="attention_mask" if "attention_mask" in names else None,
        positions="position_ids" if "position_ids" in names else None, logits="logits", cache=pairs,
        layers=len(pairs) // 2, heads=heads, head_size=head_size, vocab_size=vocab,
        max_context=options.max_sequence_length or options.profile.budget.max_sequence_length or 256,
        stop_tokens=stops,
    )  # fmt: skip


class _Measured:
    """One artifact in an ONNX Runtime session: perplexity, greedy continuations, decode speed."""

    def __init__(
        self, content: bytes, spec: GenerationSpec, texts: list[list[int]], reference: _Measured | None = None
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        self.decoder = Decoder(lambda feed: session.run(None, feed), names, spec)
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
        from edgekit.runtime.generate import Generation

        return list(self.decoder.tokens(prompt, Sampling(max_new_tokens=CONTINUATION), Generation()))

    def _speed(self, prompt: list[int]) -> float:
        from edgekit.runtime.generate import Generation

        decoder = self.decoder.without_stops()  # a speed needs tokens: go past the stop token
        for _ in decoder.tokens(prompt[:8], Sampling(max_new_tokens=4), Generation()):
            pass  # warm up: the engine's first calls allocate
        tokens = decoder.tokens(prompt[:8], Sampling(max_new_tokens=33), Generation())
        next(tokens, None)  # the prefill and the first token
        started = time.perf_counter()
        count = sum(1 for _ in tokens)
        return max(count, 1) / max(time.perf_counter() - started, 1e-9)


def _make(model: Any, precision: str, options: ConvertOptions) -> tuple[bytes, QuantizationScheme | None]:
    from edgekit.converters.onnx import ONNXConverter
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
    if precision in ("int4", "int8"):
        made, scheme = weight_only(model, bits=4 if precision == "int4" else 8)
        return made.SerializeToString(), scheme
    if precision == "dynamic":
        return _dynamic(model), QuantizationScheme(scheme="onnx-dynamic", weights="int8")
    raise InputError(f"{precision} is not a decoder precision: use fp32, fp16, int8, int4, dynamic or auto")


def _dynamic(model: Any) -> bytes:
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekit.converters.onnx_weights import quiet_quantizer

    with tempfile.TemporaryDirectory(prefix="edgekit-decoder-") as tmp, quiet_quantizer():
        onnx.save(model, f"{tmp}/float.onnx")
        quantize_dynamic(f"{tmp}/float.onnx", f"{tmp}/dynamic.onnx", weight_type=QuantType.QInt8)
        return Path(f"{tmp}/dynamic.onnx").read_bytes()


def _precisions(options: ConvertOptions) -> tuple[str, ...]:
    if options.precision != "auto":
        return (options.precision,)
    from edgekit.converters.onnx import for_tensorrt

    gpu = options.profile.accelerator.kind != "none" or for_tensorrt(options.profile)
    return AUTO_GPU if gpu else AUTO_CPU


def _entry(
    options: ConvertOptions, spec: GenerationSpec, precision: str, content: bytes,
    scheme: QuantizationScheme | None, measured: _Measured, float_bytes: int, started: float,
) -> ArtifactEntry:  # fmt: skip
    import hashlib

    quality = None
    if measured.perplexity is not None and measured.agreement is not None and measured.float_perplexity:
        reference = measured.float_perplexity
        increase = 100.0 * (measured.perplexity / reference - 1)
        limit = options.max_perplexity_increase
        quality = GenerationQuality(
            texts=len(measured.continuations), tokens=measured.tokens, float_perplexity=round(reference, 4),
            artifact_perplexity=round(measured.perplexity, 4), increase=round(increase, 3),
            max_increase=limit,
            agreement=round(measured.agreement, 2), continuation_tokens=CONTINUATION,
            gate="passed" if increase <= limit else "overridden",
        )  # fmt: skip
    memory = len(content) + spec.cache_bytes(spec.max_context)
    metrics = Metrics(
        size_bytes=len(content), float_parameter_bytes=float_bytes,
        size_ratio=round(len(content) / float_bytes, 4),
        peak_memory_bytes=memory, host_latency_ms=round(1000 / measured.tokens_per_s, 3),
        conversion_seconds=round(time.perf_counter() - started, 2), calibration_samples=0,
        generation=quality, within_budget=memory <= options.profile.budget.model_memory_mb * MB
        and len(content) <= options.profile.budget.model_storage_mb * MB,
    )  # fmt: skip
    return ArtifactEntry(
        path=f"model.{precision}.onnx", format="onnx", precision=precision,
        sha256=hashlib.sha256(content).hexdigest(), size=len(content),
        inputs=(Tensor(name=spec.ids, shape=(1, None), dtype="int64"),),
        outputs=(Tensor(name=spec.logits, shape=(1, None, spec.vocab_size), dtype="float32"),),
        metrics=metrics, quantization=scheme,
    )  # fmt: skip


def _problem(options: ConvertOptions, entry: ArtifactEntry, spec: GenerationSpec) -> str | None:
    """Why this artifact cannot ship: the perplexity gate, or the memory or storage budget."""
    quality, metrics, budget = entry.metrics.generation, entry.metrics, options.profile.budget
    if quality is not None and quality.gate != "passed" and not options.allow_accuracy_drop:
        return (
            f"perplexity {quality.artifact_perplexity:g} is {quality.increase:.1f}% above the float model's "
            f"{quality.float_perplexity:g} (at most {quality.max_increase:g}%: --max-perplexity-increase, "
            "or --allow-accuracy-drop)"
        )
    if not metrics.within_budget and not options.allow_over_budget:
        fits = int((budget.model_memory_mb * MB - metrics.size_bytes) // max(spec.cache_bytes(1), 1))
        return (
            f"weights {metrics.size_bytes / MB:.1f} MB and the cache at {spec.max_context} tokens "
            f"{spec.cache_bytes(spec.max_context) / MB:.1f} MB pass the memory budget of "
            f"{budget.model_memory_mb:g} MB of {options.profile.id}; the largest context that fits is "
            f"{max(fits, 0)} tokens (--max-sequence-length)"
        )
    return None


def _choose(options: ConvertOptions, made: list[Any]) -> Any:
    """The precision asked for; for auto on a CPU profile the fastest decoder that passed,
    else the first in the profile's order."""
    if options.precision != "auto" or options.profile.accelerator.kind != "none":
        return made[0]
    return max(made, key=lambda item: item[2].tokens_per_s)


def _tokenizer(options: ConvertOptions) -> bytes:
    if options.tokenizer is None:
        raise InputError("a decoder generates text: pass its tokenizer with --tokenizer tokenizer.json")
    try:
        raw = options.tokenizer.read_bytes()
        from tokenizers import Tokenizer

        Tokenizer.from_str(raw.decode())
    except (OSError, UnicodeDecodeError, Exception) as exc:  # tokenizers raises plain exceptions
        raise InputError(f"--tokenizer {options.tokenizer}: not a readable tokenizer.json ({exc})") from None
    return raw


def _texts(path: Path | None, tokenizer_json: bytes, spec: GenerationSpec) -> list[list[int]]:
    """Held-out texts as token ids, each cut to the context; JSONL with a "text" a line."""
    if path is None:
        return []
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json.decode())
    texts = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--eval {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError):
            raise DataError(
                f"--eval {path} line {number}: a decoder's held-out data is JSONL with a \"text\" a line"
            ) from None
        ids = tokenizer.encode(str(text), add_special_tokens=False).ids[: spec.max_context]
        if len(ids) >= 2:
            texts.append(ids)
    if not texts:
        raise DataError(f"--eval {path}: no text of two tokens or more to measure perplexity on")
    return texts


def _manifest(
    options: ConvertOptions, spec: GenerationSpec, entry: ArtifactEntry, tokenizer_json: bytes, model: Any,
    kind: str,
) -> Manifest:  # fmt: skip
    import hashlib
    import platform

    import onnxruntime

    import edgekit

    if entry.precision in ("int4", "int8"):
        spec = updated(spec, block_size=32)
    source = options.model.read_bytes()
    text = TextSpec(
        file="tokenizer.json", sha256=hashlib.sha256(tokenizer_json).hexdigest(), size=len(tokenizer_json),
        max_length=spec.max_context, dynamic_length=True, vocab_size=spec.vocab_size, ids=spec.ids,
        mask=spec.mask, task="generate",
    )  # fmt: skip
    return Manifest(
        format_version=FORMAT_VERSION, name=options.name or options.model.stem, version=options.version,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=Source(file=options.model.name, kind=kind, sha256=hashlib.sha256(source).hexdigest(),
                      size_bytes=len(source)),
        profile=options.profile.model_dump(mode="json"), artifacts=(entry,),
        preprocessing=Preprocessing(layout=None, input_range=None),
        tools={"edgekit": edgekit.__version__, "python": platform.python_version(), "numpy": np.__version__,
               "onnxruntime": onnxruntime.__version__, "onnx_opset": str(model.opset_import[0].version)},
        text=text, generation=spec,
    )  # fmt: skip
