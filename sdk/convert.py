"""``edgekit convert``: a trained model in, a bundle sized and checked for a device out.

For each precision tried (one, or the profile's order with ``auto``): convert, measure
size, peak memory and latency, compare against the float model on the evaluation data,
and check the profile's budgets. The first precision that passes is written as a bundle.
Nothing is written when nothing passes, unless the user explicitly allows the breach.
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.bundle import (
    FORMAT_VERSION,
    Accuracy,
    ArtifactEntry,
    CandidateRecord,
    Compression,
    Manifest,
    Metrics,
    Preprocessing,
    Quantization,
    QuantizationScheme,
    ReferenceStats,
    Selection,
    Source,
    Tensor,
    sha256,
    write_bundle,
)
from edgekit.converters import Artifact, ConversionSettings, Converter, converter_for
from edgekit.converters.source import SourceModel, detect_kind, load_source
from edgekit.data import Dataset, check_dataset, load_dataset
from edgekit.errors import (
    AccuracyBudgetError,
    BudgetError,
    ConversionError,
    DataError,
    EdgekitError,
    InputError,
    ModelFormatError,
)
from edgekit.measure import compare_outputs, host_latency_ms, peak_memory_bytes, run_batched
from edgekit.profiles import DEFAULT_MAX_ACCURACY_DROP, DeviceProfile
from edgekit.report import Reporter, SilentReporter
from edgekit.runtime.backends import TensorInfo, backend_for
from edgekit.runtime.telemetry.stats import reference_stats
from edgekit.signing import load_signing_key, signature_entry

MB = 1024 * 1024


@dataclass(frozen=True)
class ConvertOptions:
    model: Path
    profile: DeviceProfile
    output: Path
    precision: str = "auto"
    format: str | None = None
    """A registered format, "both", or None for the profile's first format that fits the model."""
    calibration: Path | None = None
    evaluation: Path | None = None
    max_accuracy_drop: float | None = None
    allow_accuracy_drop: bool = False
    allow_over_budget: bool = False
    force: bool = False
    name: str | None = None
    version: int = 1
    labels: Path | None = None
    calibration_method: str = "minmax"
    keep_float: tuple[str, ...] = ()
    input_shape: tuple[int | None, ...] | None = None
    sign_key: Path | None = None
    """An Ed25519 private key (edgekit keys init --publisher) to sign the bundle with."""
    prune: float | None = None
    """Fraction of channels (structured) or weights (magnitude) to prune before converting."""
    prune_mode: str = "structured"
    train_data: Path | None = None
    """.npz with x and integer labels y, to fine-tune the pruned model."""
    prune_epochs: int = 5


@dataclass(frozen=True)
class Candidate:
    """One converted precision, measured, with what (if anything) keeps it from shipping."""

    entry: ArtifactEntry
    content: bytes
    accuracy_problem: str | None
    budget_problems: tuple[str, ...]

    @property
    def problems(self) -> tuple[str, ...]:
        return ((self.accuracy_problem,) if self.accuracy_problem else ()) + self.budget_problems


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    manifest: Manifest
    tried: tuple[Candidate, ...]
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Job:
    """What every candidate of one convert run shares."""

    options: ConvertOptions
    source: SourceModel
    settings: ConversionSettings
    calibration: Dataset | None
    evaluation: Dataset | None
    float_out: np.ndarray | None
    reporter: Reporter


def convert(options: ConvertOptions, reporter: Reporter | None = None) -> ConvertResult:
    """Convert ``options.model`` for ``options.profile`` and write the bundle."""
    reporter = reporter or SilentReporter()
    if options.prune is not None:
        with tempfile.TemporaryDirectory(prefix="edgekit-prune-") as tmp:
            pruned, compression = _prune(options, Path(tmp), reporter)
            return _convert_model(replace(options, model=pruned, prune=None), reporter, compression)
    return _convert_model(options, reporter)


def _prune(options: ConvertOptions, folder: Path, reporter: Reporter) -> tuple[Path, Compression]:
    """Prune (and fine-tune) a Keras source; the pruned model goes to ``folder``."""
    from edgekit.compress import nonzero_parameters, parameter_count, prune

    kind = detect_kind(options.model)
    if kind not in ("keras", "h5"):
        raise ModelFormatError(f"--prune works on Keras models (.keras, .h5), and {options.model} is {kind}")
    train = None
    if options.train_data is not None:
        data = load_dataset(options.train_data, "training")
        if data.y is None:
            raise DataError(
                f"training data {options.train_data}: --prune fine-tunes on labels; save it with y=labels"
            )
        train = (data.x, data.y)
    else:
        reporter.warn("--prune without --train-data: pruned once, not fine-tuned; accuracy will suffer")
    assert options.prune is not None
    with load_source(options.model, options.input_shape) as source:
        model = source.keras_model
        before = parameter_count(model)
        pruned = prune(
            model, options.prune, train, structured=options.prune_mode == "structured",
            epochs=options.prune_epochs, reporter=reporter,
        )  # fmt: skip
        before_top1 = after_top1 = None
        if options.evaluation is not None:
            evaluation = load_dataset(options.evaluation, "evaluation")
            if evaluation.y is not None:
                before_top1 = _top1(model, evaluation)
                after_top1 = _top1(pruned, evaluation)
    if before_top1 is not None and after_top1 is not None:
        max_drop = _max_drop(options)
        if before_top1 - after_top1 > max_drop and not options.allow_accuracy_drop:
            raise AccuracyBudgetError(
                f"pruning loses too much accuracy: top-1 {before_top1:.2f}% → {after_top1:.2f}% "
                f"(max drop {max_drop:g} points); prune less, fine-tune longer (--prune-epochs), "
                "or pass --allow-accuracy-drop"
            )
    path = folder / f"{_default_name(options.model)}.keras"
    pruned.save(path)
    record = Compression(
        method=options.prune_mode,  # type: ignore[arg-type]
        sparsity=options.prune,
        parameters_before=before,
        parameters_after=nonzero_parameters(pruned),
        fine_tune_epochs=options.prune_epochs if train is not None else 0,
        train_samples=len(train[0]) if train is not None else 0,
        top1_before=before_top1,
        top1_after=after_top1,
    )
    reporter.note(f"pruned {options.prune_mode}: {before:,} → {record.parameters_after:,} parameters")
    return path, record


def _top1(model: Any, data: Dataset) -> float:
    outputs = model.predict(data.x, batch_size=256, verbose=0)
    return float(100 * np.mean(np.asarray(outputs).argmax(axis=1) == data.y))


def _convert_model(
    options: ConvertOptions, reporter: Reporter, compression: Compression | None = None
) -> ConvertResult:
    kind = detect_kind(options.model)
    converters = [converter_for(fmt) for fmt in _choose_formats(options, kind, reporter)]
    if kind == "tflite":
        plans = [[_ready_made_precision(options)]]
    else:
        plans = [_choose_precisions(options, converter, reporter) for converter in converters]
    labels = _read_labels(options.labels)
    sign_key = load_signing_key(options.sign_key) if options.sign_key else None
    calibration = load_dataset(options.calibration, "calibration") if options.calibration else None
    evaluation = load_dataset(options.evaluation, "evaluation") if options.evaluation else None
    warnings: list[str] = []
    with load_source(options.model, options.input_shape) as source:
        calibration, evaluation = _check_data(source, calibration, evaluation, labels, options, warnings)
        if kind == "tflite":
            evaluation = None
            warnings.append(
                "a ready-made TFLite file ships as it is: no float model, so no accuracy gate was run"
            )
        elif evaluation is None:
            warnings.append("no --eval data: the accuracy of the converted model is not checked")
        float_out = None
        if evaluation is not None:
            with reporter.progress("Evaluating float model", len(evaluation)) as advance:
                float_out = run_batched(source.predict, evaluation.x, advance)
        settings = ConversionSettings(options.profile, options.calibration_method, options.keep_float)
        job = _Job(options, source, settings, calibration, evaluation, float_out, reporter)
        chosen, tried = [], []
        for converter, precisions in zip(converters, plans, strict=True):
            best, candidates = _select(job, converter, precisions)
            chosen.append(best)
            tried += candidates
        for message in warnings:
            reporter.warn(message)
        reference = _reference(source, calibration if calibration is not None else evaluation, reporter)
        manifest = _manifest(options, source, converters, chosen, calibration, labels, reference)
        manifest = manifest.model_copy(update={"compression": compression})
        signature = signature_entry(manifest.canonical_bytes(), sign_key) if sign_key else None
        write_bundle(options.output, manifest, {c.entry.path: c.content for c in chosen}, signature)
    return ConvertResult(options.output, manifest, tuple(tried), tuple(warnings))


def _choose_formats(options: ConvertOptions, kind: str, reporter: Reporter) -> list[str]:
    registry = Converter.registry
    if options.format == "both":
        wanted = ["tflite", "onnx"]
    elif options.format:
        if options.format not in registry:
            raise InputError(
                f"unknown format '{options.format}'; known formats: {', '.join(sorted(registry))}"
            )
        wanted = [options.format]
    else:
        for fmt in options.profile.runtime.formats:
            if fmt in registry and kind in registry[fmt].source_kinds:
                return [fmt]
            reporter.note(f"profile prefers {fmt}, which cannot be made from a {kind} model; trying the next")
        raise InputError(
            f"profile {options.profile.id} lists formats {list(options.profile.runtime.formats)}, "
            f"none of which can be made from a {kind} model; pass --format"
        )
    for fmt in wanted:
        if kind not in registry[fmt].source_kinds:
            raise InputError(
                f"--format {fmt} cannot be made from a {kind} model; an ONNX model converts to --format onnx"
            )
    return wanted


def _ready_made_precision(options: ConvertOptions) -> str:
    from edgekit.converters.tflite import detect_precision

    try:
        precision = detect_precision(options.model.read_bytes())
    except EdgekitError as exc:
        raise ModelFormatError(f"{options.model}: {exc}") from exc
    if options.precision not in ("auto", precision):
        raise InputError(
            f"{options.model} is already {precision}; a ready-made TFLite file ships as it is, "
            "so use --precision auto or convert from the original model"
        )
    return precision


def _choose_precisions(options: ConvertOptions, converter: Converter, reporter: Reporter) -> list[str]:
    fmt = converter.format
    if options.precision != "auto":
        if options.precision not in converter.precisions:
            raise InputError(
                f"{fmt} has no precision '{options.precision}'; choose from "
                f"{', '.join(converter.precisions)} or auto"
            )
        if options.precision in converter.calibrated_precisions and options.calibration is None:
            raise DataError(
                f"--precision {options.precision} needs calibration data: pass --calibration "
                "FILE.npz with about 100-500 representative inputs"
            )
        return [options.precision]
    order = [p for p in options.profile.runtime.precisions_for(fmt) if p in converter.precisions]  # type: ignore[arg-type]
    if options.calibration is None:
        skipped = [p for p in order if p in converter.calibrated_precisions]
        if skipped:
            reporter.note(f"{fmt}: skipping {', '.join(skipped)}: no --calibration data given")
        order = [p for p in order if p not in converter.calibrated_precisions]
    if not order:
        raise DataError(f"every {fmt} precision of profile {options.profile.id} needs --calibration data")
    return order


def _select(job: _Job, converter: Converter, precisions: list[str]) -> tuple[Candidate, list[Candidate]]:
    """Build candidates in order; keep the first that passes, or on a CPU ONNX profile the fastest."""
    options = job.options
    measured = (
        options.precision == "auto"
        and converter.format == "onnx"
        and options.profile.accelerator.kind == "none"
    )
    tried: list[Candidate] = []
    for precision in precisions:
        tried.append(_build_candidate(job, converter, precision))
        if not tried[-1].problems and not measured:
            break
    chosen = _choose(tried, options)
    passing = [c for c in tried if not c.problems]
    if measured and passing:
        chosen = min(passing, key=lambda c: c.entry.metrics.host_latency_ms)
    selection = _selection(options, converter.format, tried, chosen, measured and bool(passing))
    return replace(chosen, entry=chosen.entry.model_copy(update={"selection": selection})), tried


def _selection(
    options: ConvertOptions, fmt: str, tried: list[Candidate], chosen: Candidate, measured: bool
) -> Selection:
    profile = options.profile
    if options.precision != "auto":
        method, reason = "explicit", f"--precision {options.precision}"
    elif measured:
        method = "measured-fastest"
        reason = (
            f"fastest of the precisions that passed, measured in ONNX Runtime on this host "
            f"({platform.machine()}) as a proxy for {profile.id}"
        )
    else:
        method = "profile-order"
        reason = f"first precision in {profile.id}'s {fmt} order that passed"
        if profile.accelerator.kind != "none":
            reason += (
                f"; not measured: this host cannot run {profile.runtime.execution_providers[0]} "
                f"on a {profile.accelerator.name or profile.accelerator.kind} GPU"
            )
    records = tuple(
        CandidateRecord(
            precision=c.entry.precision,
            size_bytes=c.entry.size,
            host_latency_ms=c.entry.metrics.host_latency_ms,
            accuracy_drop=c.entry.metrics.accuracy.drop if c.entry.metrics.accuracy else None,
            problems=c.problems,
        )
        for c in tried
    )
    return Selection(method=method, reason=reason, candidates=records)  # type: ignore[arg-type]


def _read_labels(path: Path | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"labels file {path}: cannot be read ({exc})") from exc
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise InputError(f"labels file {path}: empty; give one class name per line")
    return labels


def _check_data(
    source: SourceModel,
    calibration: Dataset | None,
    evaluation: Dataset | None,
    labels: tuple[str, ...] | None,
    options: ConvertOptions,
    warnings: list[str],
) -> tuple[Dataset | None, Dataset | None]:
    checked: list[Dataset | None] = []
    for data, role in ((calibration, "calibration"), (evaluation, "evaluation")):
        if data is None:
            checked.append(None)
            continue
        data, found = check_dataset(data, source.input, role, options.force)
        warnings.extend(found)
        checked.append(data)
    classes = source.outputs[0].shape[-1] if source.outputs and source.outputs[0].shape else None
    if labels is not None and classes is not None and classes != len(labels):
        raise InputError(f"labels file {options.labels}: {len(labels)} labels for {classes} model outputs")
    if evaluation is not None and len(source.outputs) != 1:
        raise DataError(f"--eval compares one output, and the model has {len(source.outputs)}; omit --eval")
    return checked[0], checked[1]


MAX_FALLBACK_ROUNDS = 6
"""Rounds that keep more int8 tensors out of int8: 1, 2, 4, ... tensors, 63 in all."""


def _build_candidate(job: _Job, converter: Converter, precision: str) -> Candidate:
    artifact = _convert(job, converter, precision, job.settings)
    candidate = _measure(job, artifact)
    if candidate.accuracy_problem and precision in converter.calibrated_precisions:
        candidate = _keep_sensitive_nodes_in_float(job, converter, artifact, candidate)
    return candidate


def _convert(job: _Job, converter: Converter, precision: str, settings: ConversionSettings) -> Artifact:
    calib_x = job.calibration.x if job.calibration is not None else None
    total = len(calib_x) if calib_x is not None and precision in converter.calibrated_precisions else 0
    with job.reporter.progress(f"Converting to {converter.format} {precision}", total) as advance:
        artifact = converter.convert(job.source, precision, calib_x, advance, settings)
    for note in artifact.notes:
        job.reporter.note(note)
    return artifact


def _keep_sensitive_nodes_in_float(
    job: _Job, converter: Converter, artifact: Artifact, candidate: Candidate
) -> Candidate:
    """Retry int8 with the nodes that lose the most kept in float, until the gate passes."""
    assert job.calibration is not None  # calibrated precisions never run without it
    kept: list[str] = []
    step = 1
    for _ in range(MAX_FALLBACK_ROUNDS):
        groups = converter.rank_sensitive_nodes(job.source, artifact, job.calibration.x, job.settings)
        fresh_groups = [g for g in groups if any(node not in kept for node in g)][:step]
        fresh = list(dict.fromkeys(n for g in fresh_groups for n in g if n not in kept))
        if not fresh:
            break
        kept += fresh
        step *= 2
        job.reporter.note(
            f"{artifact.precision} missed the accuracy budget ({candidate.accuracy_problem}); "
            f"keeping {', '.join(fresh)} in float and retrying"
        )
        settings = replace(job.settings, float_nodes=tuple(kept))
        try:
            artifact = _convert(job, converter, artifact.precision, settings)
        except ConversionError as exc:  # the engine cannot keep these in float: the gate's verdict stands
            job.reporter.note(f"keeping {', '.join(fresh)} in float failed: {exc}")
            break
        candidate = _measure(job, artifact)
        if not candidate.accuracy_problem:
            break
    return candidate


def _measure(job: _Job, artifact: Artifact) -> Candidate:
    """Evaluate, time and size one artifact against the profile."""
    profile = job.options.profile
    threads = min(profile.runtime.threads, os.cpu_count() or 1)
    backend = backend_for(artifact.format)(artifact.content, threads)
    accuracy = None
    accuracy_problem = None
    if job.evaluation is not None and job.float_out is not None:
        with job.reporter.progress(
            f"Evaluating {artifact.format} {artifact.precision}", len(job.evaluation)
        ) as advance:
            artifact_out = run_batched(lambda x: backend.run(x)[0], job.evaluation.x, advance)
        result = compare_outputs(job.float_out, artifact_out, job.evaluation.y)
        accuracy, accuracy_problem = _gate(result, len(job.evaluation), job.options)
    size = len(artifact.content)
    peak = peak_memory_bytes(artifact.format, artifact.content)
    budget_problems = _budget_problems(size, peak, profile)
    metrics = Metrics(
        size_bytes=size,
        float_parameter_bytes=job.source.parameter_bytes,
        size_ratio=size / max(job.source.parameter_bytes, 1),
        peak_memory_bytes=peak,
        host_latency_ms=host_latency_ms(backend),
        conversion_seconds=artifact.seconds,
        calibration_samples=artifact.calibration_samples,
        accuracy=accuracy,
        within_budget=not budget_problems,
    )
    entry = ArtifactEntry(
        path=f"model.{artifact.precision}.{artifact.format}",
        format=artifact.format,
        precision=artifact.precision,
        sha256=sha256(artifact.content),
        size=size,
        inputs=tuple(_tensor(t) for t in backend.inputs),
        outputs=tuple(_tensor(t) for t in backend.outputs),
        metrics=metrics,
        opset=artifact.opset,
        quantization=QuantizationScheme(**artifact.quantization) if artifact.quantization else None,
    )
    return Candidate(entry, artifact.content, accuracy_problem, budget_problems)


def _max_drop(options: ConvertOptions) -> float:
    for value in (options.max_accuracy_drop, options.profile.budget.max_accuracy_drop):
        if value is not None:
            return value
    return DEFAULT_MAX_ACCURACY_DROP


def _gate(result: dict, samples: int, options: ConvertOptions) -> tuple[Accuracy, str | None]:
    max_drop = _max_drop(options)
    problem = None
    if result["drop"] > max_drop:
        what = "top-1 accuracy" if result["metric"] == "top1" else "top-1 agreement with float"
        problem = (
            f"{what} {result['artifact']:.2f}% vs float {result['float_model']:.2f}%: "
            f"drop {result['drop']:.2f} pp > allowed {max_drop:.2f} pp"
        )
    gate = "overridden" if problem else "passed"
    return Accuracy(**result, samples=samples, max_drop=max_drop, gate=gate), problem


def _budget_problems(size: int, peak: int, profile: DeviceProfile) -> tuple[str, ...]:
    budget = profile.budget
    problems = []
    if size > budget.model_storage_mb * MB:
        problems.append(
            f"size {size / MB:.2f} MB > storage budget {budget.model_storage_mb:g} MB of {profile.id}"
        )
    if peak > budget.model_memory_mb * MB:
        problems.append(
            f"peak memory {peak / MB:.2f} MB > memory budget {budget.model_memory_mb:g} MB of {profile.id}"
        )
    return tuple(problems)


def _choose(tried: list[Candidate], options: ConvertOptions) -> Candidate:
    for candidate in tried:
        if not candidate.problems:
            return candidate
    for candidate in tried:
        if _overridable(candidate, options):
            return candidate
    detail = "; ".join(f"{c.entry.precision}: {', '.join(c.problems)}" for c in tried)
    if all(c.budget_problems for c in tried):
        smaller = "; try a smaller precision (int8) or a smaller model" if len(tried) == 1 else ""
        raise BudgetError(
            f"the model does not fit {options.profile.id}: {detail}{smaller}; "
            "or pass --allow-over-budget to ship it anyway"
        )
    raise AccuracyBudgetError(
        f"the converted model loses too much accuracy: {detail}; use more or better "
        "--calibration data, another --precision, or pass --allow-accuracy-drop"
    )


def _overridable(candidate: Candidate, options: ConvertOptions) -> bool:
    accuracy_ok = candidate.accuracy_problem is None or options.allow_accuracy_drop
    budget_ok = not candidate.budget_problems or options.allow_over_budget
    return accuracy_ok and budget_ok


def _tensor(info: TensorInfo) -> Tensor:
    quantization = None
    if info.scale is not None and info.zero_point is not None:
        quantization = Quantization(scale=info.scale, zero_point=info.zero_point)
    return Tensor(name=info.name, shape=info.shape, dtype=info.dtype, quantization=quantization)


def _manifest(
    options: ConvertOptions,
    source: SourceModel,
    converters: list[Converter],
    chosen: list[Candidate],
    calibration: Dataset | None,
    labels: tuple[str, ...] | None,
    reference: ReferenceStats | None,
) -> Manifest:
    input_range = None
    if calibration is not None:
        input_range = (float(calibration.x.min()), float(calibration.x.max()))
    return Manifest(
        format_version=FORMAT_VERSION,
        name=options.name or _default_name(options.model),
        version=options.version,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=Source(
            file=source.path.name, kind=source.kind, sha256=source.sha256, size_bytes=source.size_bytes
        ),
        profile=options.profile.model_dump(mode="json"),
        artifacts=tuple(c.entry for c in chosen),
        preprocessing=Preprocessing(layout=_layout(source), input_range=input_range),
        labels=labels,
        tools={
            "edgekit": edgekit.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            **{k: v for converter in converters for k, v in converter.tool_versions().items()},
        },
        reference=reference,
    )


def _reference(source: SourceModel, data: Dataset | None, reporter: Reporter) -> ReferenceStats | None:
    """The drift baseline for telemetry: the conversion data's input features and the float
    model's predicted classes on it."""
    if data is None or source.kind == "tflite" or len(source.outputs) != 1:
        return None
    with reporter.progress("Reference statistics", len(data)) as advance:
        outputs = run_batched(source.predict, data.x, advance)
    return reference_stats(data.x, outputs, _layout(source))


def _layout(source: SourceModel) -> str | None:
    shape = source.input.shape
    if len(shape) != 4:
        return None
    if source.kind != "onnx":
        return "NHWC"  # TensorFlow's convention
    if shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3) and shape[1] not in (1, 3):
        return "NHWC"
    return None


def _default_name(model: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.stem if model.is_file() else model.name)
    return name.strip("-.") or "model"
