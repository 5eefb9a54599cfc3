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

from edgekit.convert.decoder_artifacts import CONTINUATION, Measured, full_context_peak
from edgekit.convert.options import ConvertOptions, ConvertResult
from edgekit.converters.onnx_weights import BLOCK_SIZE
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

CACHE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
STOP_NAMES = ("<|endoftext|>", "</s>", "<eos>", "[EOS]", "<|end|>", "<|eot_id|>")
DEFAULT_MAX_INCREASE = 5.0
AUTO_CPU = ("int4", "int8", "dynamic", "fp32")
AUTO_GPU = ("fp16", "fp32")
AUTO_TFLITE = ("int4", "int8", "dynamic", "fp32")
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
    """The decoder as its source: an ONNX model, or a Keras model (checked to be a decoder)."""
    import onnx

    if path.suffix.lower() != ".keras":
        return onnx.load(str(path)), "onnx"
    from edgekit.converters.keras_decoder import is_keras_decoder
    from edgekit.converters.source import load_keras_model

    model = load_keras_model(path)
    if not is_keras_decoder(model):
        raise InputError(f"{path.name} attends causally but does not give a score per token: not a decoder")
    return model, "keras"


class _Source:
    """The float decoder in the format asked for: its bytes, cache layout and precisions."""

    def __init__(self, options: ConvertOptions, tokenizer_json: bytes) -> None:
        from edgekit.convert.decoder_artifacts import make_tflite

        model, self.kind = _load(options.model)
        self.format = options.format or "onnx"
        if self.format not in ("onnx", "tflite"):
            raise InputError(f"--format {self.format}: a decoder converts to onnx or tflite")
        if self.format == "tflite" and self.kind != "keras":
            raise InputError(
                f"--format tflite: {options.model.name} is ONNX; TFLite decoders are made from a Keras "
                "decoder (ONNX to TFLite is not built): use --format onnx"
            )
        if self.format == "onnx" and self.kind == "keras":
            from edgekit.converters.keras_decoder import keras_decoder_to_onnx

            model = keras_decoder_to_onnx(model)
        self.model = model
        if self.format == "onnx":
            self.float = model.SerializeToString()
            self.spec = decoder_spec(model, options, tokenizer_json)
        else:
            self.float, _ = make_tflite(model, "fp32")
            self.spec = _tflite_spec(model, self.float, options, tokenizer_json)

    def make(
        self, precision: str, options: ConvertOptions, texts: list[list[int]]
    ) -> tuple[bytes, QuantizationScheme | None]:  # fmt: skip
        from edgekit.convert.decoder_artifacts import make_onnx, make_tflite

        if self.format == "onnx":
            return make_onnx(self.model, precision, options, self.spec, texts)
        return (self.float, None) if precision == "fp32" else make_tflite(self.model, precision, self.float)

    def tools(self) -> dict[str, str]:
        if self.format == "tflite":
            import tensorflow as tf

            return {"tensorflow": tf.__version__}
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__, "onnx_opset": str(self.model.opset_import[0].version)}


def convert_decoder(options: ConvertOptions) -> ConvertResult:
    started = time.perf_counter()
    tokenizer_json = _tokenizer(options)
    source = _Source(options, tokenizer_json)
    spec, fmt = source.spec, source.format
    texts = _texts(options.evaluation, tokenizer_json, spec)
    reference = Measured(source.float, fmt, spec, texts)
    made: list[tuple[ArtifactEntry, bytes, Measured, str | None]] = []
    problems: list[tuple[ArtifactEntry, bytes, Measured, str | None]] = []
    for precision in _precisions(options, fmt):
        content, scheme = source.make(precision, options, texts)
        measured = Measured(content, fmt, spec, texts, reference)
        entry = _entry(options, spec, precision, (fmt, content), scheme, measured, len(source.float), started)
        problem = _problem(options, entry, spec)
        if problem and options.precision != "auto":
            raise ConversionError(f"{precision}: {problem}")
        (problems if problem else made).append((entry, content, measured, problem))
    if not made:
        reasons = "; ".join(f"{e.precision}: {p}" for e, _, _, p in problems)
        raise ConversionError(f"no precision passed: {reasons}")
    entry, content, _, _ = _choose(options, made)
    manifest = _manifest(options, spec, entry, tokenizer_json, source)
    warnings = _warnings(options, entry, texts)
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
    roles = ("attention_mask" if "attention_mask" in names else None,
             "position_ids" if "position_ids" in names else None)  # fmt: skip
    return _spec(options, tokenizer_json, roles, pairs, (heads, head_size, vocab))


def _tflite_spec(
    model: Any, content: bytes, options: ConvertOptions, tokenizer_json: bytes
) -> GenerationSpec:  # fmt: skip
    """The cache layout of a TFLite decoder, read from its ``decode`` signature."""
    from edgekit.runtime.backends.tflite import TFLiteBackend

    backend = TFLiteBackend(content, 1)
    names = {info.name: info for info in backend.inputs}
    layers = len([n for n in names if n.startswith("past_")]) // 2
    pairs = tuple((f"past_{i}_{kind}", f"present_{i}_{kind}")
                  for i in range(layers) for kind in ("key", "value"))  # fmt: skip
    _, heads, _, head_size = names["past_0_key"].shape
    vocab = int(model.outputs[0].shape[-1])
    roles = (None, "position_ids" if "position_ids" in names else None)
    return _spec(options, tokenizer_json, roles, pairs, (int(heads or 0), int(head_size or 0), vocab))


def _spec(
    options: ConvertOptions, tokenizer_json: bytes, roles: tuple[str | None, str | None],
    pairs: tuple[tuple[str, str], ...], sizes: tuple[int, int, int],
) -> GenerationSpec:  # fmt: skip
    """The spec, once the tokenizer is seen to belong to the model's vocabulary; ``roles``
    are the mask and positions inputs, if the decoder takes them."""
    from tokenizers import Tokenizer

    heads, head_size, vocab = sizes
    tokenizer = Tokenizer.from_str(tokenizer_json.decode())
    if tokenizer.get_vocab_size() > vocab:
        raise InputError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens and the model's vocabulary {vocab}: "
            "they do not belong together; pass the tokenizer the model was trained with"
        )
    stops = tuple(t for t in (tokenizer.token_to_id(n) for n in STOP_NAMES) if t is not None)
    return GenerationSpec(
        ids="input_ids", mask=roles[0], positions=roles[1], logits="logits", cache=pairs,
        layers=len(pairs) // 2, heads=heads, head_size=head_size, vocab_size=vocab,
        max_context=options.max_sequence_length or options.profile.budget.max_sequence_length or 256,
        stop_tokens=stops,
    )  # fmt: skip


def _precisions(options: ConvertOptions, fmt: str) -> tuple[str, ...]:
    if options.precision != "auto":
        return (options.precision,)
    from edgekit.converters.onnx import for_tensorrt

    gpu = options.profile.accelerator.kind != "none" or for_tensorrt(options.profile)
    if fmt == "tflite":
        return AUTO_GPU if gpu else AUTO_TFLITE
    return AUTO_GPU if gpu else AUTO_CPU


def _entry(
    options: ConvertOptions, spec: GenerationSpec, precision: str, made: tuple[str, bytes],
    scheme: QuantizationScheme | None, measured: Measured, float_bytes: int, started: float,
) -> ArtifactEntry:  # fmt: skip
    import hashlib

    fmt, content = made

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
        size_ratio=round(len(content) / float_bytes, 4), model_memory_bytes=memory,
        peak_memory_bytes=full_context_peak(fmt, content, spec),
        host_latency_ms=round(1000 / measured.tokens_per_s, 3),
        conversion_seconds=round(time.perf_counter() - started, 2), calibration_samples=0,
        generation=quality, within_budget=memory <= options.profile.budget.model_memory_mb * MB
        and len(content) <= options.profile.budget.model_storage_mb * MB,
    )  # fmt: skip
    return ArtifactEntry(
        path=f"model.{precision}.{fmt}", format=fmt, precision=precision,
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
        if metrics.size_bytes > budget.model_storage_mb * MB:
            storage = budget.model_storage_mb
            return f"the file's {metrics.size_bytes / MB:.1f} MB pass the storage budget of {storage:g} MB"
        return (
            f"weights {metrics.size_bytes / MB:.1f} MB and the cache at {spec.max_context} tokens "
            f"{spec.cache_bytes(spec.max_context) / MB:.1f} MB pass the memory budget of "
            f"{budget.model_memory_mb:g} MB of {options.profile.id}; the largest context that fits is "
            f"{max(fits, 0)} tokens (--max-sequence-length)"
        )
    return None


def _warnings(options: ConvertOptions, entry: ArtifactEntry, texts: list[list[int]]) -> tuple[str, ...]:
    found = [] if texts else ["no --eval text: the perplexity of the converted model is not checked"]
    peak, budget = entry.metrics.peak_memory_bytes, options.profile.budget.model_memory_mb
    if peak > budget * MB:
        found.append(
            f"measured at its full context, loading and one decode step take {peak / MB:.1f} MB here with "
            f"the engine: over the {budget:g} MB memory budget, which the weights and cache alone fit"
        )
    return tuple(found)


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
    options: ConvertOptions, spec: GenerationSpec, entry: ArtifactEntry, tokenizer_json: bytes, made: _Source
) -> Manifest:  # fmt: skip
    import hashlib
    import platform

    import edgekit

    if entry.quantization is not None and entry.quantization.scheme == "onnx-matmul-nbits":
        spec = updated(spec, block_size=BLOCK_SIZE)
    source = options.model.read_bytes()
    text = TextSpec(
        file="tokenizer.json", sha256=hashlib.sha256(tokenizer_json).hexdigest(), size=len(tokenizer_json),
        max_length=spec.max_context, dynamic_length=True, vocab_size=spec.vocab_size, ids=spec.ids,
        mask=spec.mask, task="generate",
    )  # fmt: skip
    return Manifest(
        format_version=FORMAT_VERSION, name=options.name or options.model.stem, version=options.version,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=Source(file=options.model.name, kind=made.kind, sha256=hashlib.sha256(source).hexdigest(),
                      size_bytes=len(source)),
        profile=options.profile.model_dump(mode="json"), artifacts=(entry,),
        preprocessing=Preprocessing(layout=None, input_range=None),
        tools={"edgekit": edgekit.__version__, "python": platform.python_version(), "numpy": np.__version__,
               **made.tools()},
        text=text, generation=spec,
    )  # fmt: skip
