"""``edgekit convert``: a trained model in, a bundle sized and checked for a device out.

The steps, one module each: ``plan`` (formats, precisions, data checks), ``prune`` (optional),
``candidate`` (convert, measure, gate, int8 fallback), ``select`` (which candidate ships)
and ``manifest``. For each precision tried (one, or the profile's order with ``auto``):
convert, measure size, peak memory and latency, compare against the float model on the
evaluation data, and check the profile's budgets. The first precision that passes is
written as a bundle. Nothing is written when nothing passes, unless the user explicitly
allows the breach.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.candidate import Candidate, Job, max_accuracy_drop
from edgekit.convert.decoder import convert_decoder, is_decoder
from edgekit.convert.manifest import build_manifest, reference
from edgekit.convert.memory import warn_if_short
from edgekit.convert.options import ConvertOptions, ConvertResult
from edgekit.convert.plan import Inputs, check_data, data_shapes, plan
from edgekit.convert.prune import prune_source
from edgekit.convert.robustness import robustness_check
from edgekit.convert.select import select
from edgekit.convert.state import state_pairs
from edgekit.convert.text import prepare_text
from edgekit.convert.timing import Stopwatch
from edgekit.converters import ConversionSettings, Converter, ready_made
from edgekit.converters.onnx import for_tensorrt
from edgekit.converters.source import detect_kind, load_source
from edgekit.core.bundle import write_bundle
from edgekit.core.classes import check_labels
from edgekit.core.samples import run_samples
from edgekit.core.signing import load_signing_key, signature_entry
from edgekit.core.validation import updated
from edgekit.views.progress import Reporter, SilentReporter

__all__ = [
    "Candidate",
    "ConvertOptions",
    "ConvertResult",
    "Inputs",
    "build",
    "convert",
    "max_accuracy_drop",
    "write",
]


def convert(options: ConvertOptions, reporter: Reporter | None = None) -> ConvertResult:
    """Convert ``options.model`` for ``options.profile`` and write the signed bundle."""
    result = build(options, reporter)
    started = time.perf_counter()
    result = write(result, options.sign_key)
    result.timings["write"] = time.perf_counter() - started
    return result


def write(result: ConvertResult, sign_key: Path | None, **fields: Any) -> ConvertResult:
    """Write ``result``'s bundle, signed with ``sign_key``; ``fields`` add to its manifest."""
    manifest = updated(result.manifest, **fields) if fields else result.manifest
    key = load_signing_key(sign_key) if sign_key else None
    signature = signature_entry(manifest.canonical_bytes(), key) if key else None
    write_bundle(result.output, manifest, result.contents, signature)
    return replace(result, manifest=manifest)


def build(
    options: ConvertOptions, reporter: Reporter | None = None, inputs: Inputs | None = None
) -> ConvertResult:
    """Everything ``convert`` does except writing the bundle. ``inputs``: the model's kind and
    the data, when the caller has read them already (``fit`` reads them once for every run)."""
    reporter = reporter or SilentReporter()
    if is_decoder(options.model):
        if options.sign_key:
            load_signing_key(options.sign_key)
        with reporter.progress("Converting and measuring the decoder", 1):
            return convert_decoder(options)
    kind = inputs.kind if inputs is not None else detect_kind(options.model)
    plans = plan(options, kind, reporter)
    if options.sign_key:
        load_signing_key(options.sign_key)  # a missing or wrong key fails before any work
    inputs = inputs or Inputs.read(options, kind)
    if options.prune is None and not options.drop_layers:
        return _build(options, inputs, plans, reporter, {})
    with tempfile.TemporaryDirectory(prefix="edgekit-prune-") as tmp:
        pruned, compression = prune_source(options, inputs, Path(tmp), reporter)
        pruned_options = replace(options, model=pruned, prune=None, drop_layers=0)
        return _build(
            pruned_options, replace(inputs, kind="keras"), plans, reporter, {"compression": compression}
        )


def _build(
    options: ConvertOptions, inputs: Inputs, plans: list[tuple[Converter, list[str]]], reporter: Reporter,
    extra: dict[str, Any],
) -> ConvertResult:
    watch = Stopwatch()
    started = time.perf_counter()
    with load_source(options.model, options.input_shape, inputs.kind) as source:
        watch.add("load (and export)", time.perf_counter() - started)
        for note in source.notes:
            reporter.note(note)
        inputs, text = prepare_text(source, inputs, options, reporter)
        inputs, warnings = check_data(source, inputs, options)
        state = state_pairs(source, options.state, reporter)
        for message in warnings:  # what the data checks found, before any conversion starts
            reporter.warn(message)
        warn_if_short(source, [converter for converter, _ in plans], reporter)
        checked = len(warnings)
        evaluation = inputs.evaluation
        if ready_made(inputs.kind):
            evaluation = None
            warnings.append(
                f"a ready-made {inputs.kind} file ships as it is: no float model, so no accuracy gate was run"
            )
        elif evaluation is None:
            warnings.append("no --eval data: the accuracy of the converted model is not checked")
        float_out = None
        if evaluation is not None:
            with reporter.progress("Evaluating float model", len(evaluation)) as advance:
                with watch.step("float model"):
                    outs = run_samples(source.predict, evaluation.samples, advance)
            float_out = {spec.name: out for spec, out in zip(source.outputs, outs, strict=True)}
            if inputs.primary and evaluation.y is not None and np.ndim(evaluation.y) == 1:
                check_labels(float_out[inputs.primary], evaluation.y)  # before any conversion starts
        shapes = data_shapes(source, inputs, reporter)
        settings = ConversionSettings(
            options.profile, options.calibration_method, options.keep_float, options.tflite_quantizer,
            input_shapes=shapes,
        )
        output = [spec.name for spec in source.outputs].index(inputs.primary) if inputs.primary else 0
        robust = robustness_check(options.max_robustness_drop, evaluation, source.predict, output)
        job = Job(
            options, source, settings, inputs.calibration, evaluation, float_out, inputs.primary, reporter,
            inputs.labels, robust, watch,
        )
        chosen, tried = [], []
        for converter, precisions in plans:
            best, candidates = select(job, converter, precisions)
            chosen.append(best)
            tried += candidates
        for message in warnings[checked:]:
            reporter.warn(message)
        primary = options.telemetry_output or inputs.primary
        encoder = text.encoder if text is not None else None
        with watch.step("drift reference"):
            if inputs.calibration is not None:
                drift_baseline = reference(source, inputs.calibration, primary, reporter, encoder=encoder)
            else:  # the float model's outputs on the evaluation data are at hand already
                drift_baseline = reference(source, evaluation, primary, reporter, float_out, encoder)
        extra = {
            "reference": drift_baseline,
            "primary_output": primary,
            "state": state,
            "text": text.entry([c.entry for c in chosen], for_tensorrt(options.profile)) if text else None,
            **extra,
        }
        converters = [converter for converter, _ in plans]
        manifest = build_manifest(
            options, source, converters, chosen, (inputs.calibration, inputs.evaluation), inputs.labels, extra
        )
    contents = {c.entry.path: c.content for c in chosen}
    if text is not None:
        contents[text.spec.file] = text.raw
    return ConvertResult(options.output, manifest, tuple(tried), tuple(warnings), contents, watch.seconds)
