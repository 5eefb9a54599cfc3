"""``edgekit convert``: a trained model in, a bundle sized and checked for a device out.

For each precision tried (one, or the profile's order with ``auto``): convert, measure
size, peak memory and latency, compare against the float model on the evaluation data,
and check the profile's budgets. The first precision that passes is written as a bundle.
Nothing is written when nothing passes, unless the user explicitly allows the breach.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import edgekit
from edgekit.bundle import (
    FORMAT_VERSION,
    Accuracy,
    ArtifactEntry,
    Manifest,
    Metrics,
    Preprocessing,
    Quantization,
    Source,
    Tensor,
    sha256,
    write_bundle,
)
from edgekit.converters import Converter, converter_for
from edgekit.converters.source import SourceModel, load_source
from edgekit.data import Dataset, check_dataset, load_dataset
from edgekit.errors import AccuracyBudgetError, BudgetError, DataError, InputError
from edgekit.measure import compare_outputs, host_latency_ms, peak_memory_bytes, run_batched
from edgekit.profiles import DEFAULT_MAX_ACCURACY_DROP, DeviceProfile
from edgekit.report import Reporter, SilentReporter
from edgekit.runtime.backends import TensorInfo, backend_for

MB = 1024 * 1024


@dataclass(frozen=True)
class ConvertOptions:
    model: Path
    profile: DeviceProfile
    output: Path
    precision: str = "auto"
    format: str | None = None
    calibration: Path | None = None
    evaluation: Path | None = None
    max_accuracy_drop: float | None = None
    allow_accuracy_drop: bool = False
    allow_over_budget: bool = False
    force: bool = False
    name: str | None = None
    version: int = 1
    labels: Path | None = None


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


def convert(options: ConvertOptions, reporter: Reporter | None = None) -> ConvertResult:
    """Convert ``options.model`` for ``options.profile`` and write the bundle."""
    reporter = reporter or SilentReporter()
    fmt = _choose_format(options, reporter)
    converter = converter_for(fmt)
    precisions = _choose_precisions(options, converter, fmt, reporter)
    labels = _read_labels(options.labels)
    calibration = load_dataset(options.calibration, "calibration") if options.calibration else None
    evaluation = load_dataset(options.evaluation, "evaluation") if options.evaluation else None
    warnings: list[str] = []
    with load_source(options.model) as source:
        calibration, evaluation = _check_data(source, calibration, evaluation, labels, options, warnings)
        if evaluation is None:
            warnings.append("no --eval data: the accuracy of the converted model is not checked")
        float_out = None
        if evaluation is not None:
            with reporter.progress("Evaluating float model", len(evaluation)) as advance:
                float_out = run_batched(source.predict, evaluation.x, advance)
        tried = []
        for precision in precisions:
            candidate = _build_candidate(
                source, converter, precision, calibration, evaluation, float_out, options, reporter
            )
            tried.append(candidate)
            if not candidate.problems:
                break
        chosen = _choose(tried, options)
        for message in warnings:
            reporter.warn(message)
        manifest = _manifest(options, source, converter, chosen, calibration, labels)
        write_bundle(options.output, manifest, {chosen.entry.path: chosen.content})
    return ConvertResult(options.output, manifest, tuple(tried), tuple(warnings))


def _choose_format(options: ConvertOptions, reporter: Reporter) -> str:
    if options.format:
        if options.format not in Converter.registry:
            known = ", ".join(sorted(Converter.registry))
            raise InputError(f"unknown format '{options.format}'; known formats: {known}")
        return options.format
    for fmt in options.profile.runtime.formats:
        if fmt in Converter.registry:
            return fmt
        reporter.note(f"profile prefers {fmt}, which this edgekit cannot produce yet; trying the next")
    raise InputError(
        f"profile {options.profile.id} lists formats {list(options.profile.runtime.formats)}, "
        "none of which this edgekit can produce; pass --format"
    )


def _choose_precisions(
    options: ConvertOptions, converter: Converter, fmt: str, reporter: Reporter
) -> list[str]:
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
            reporter.note(f"skipping {', '.join(skipped)}: no --calibration data given")
        order = [p for p in order if p not in converter.calibrated_precisions]
    if not order:
        raise DataError(f"every {fmt} precision of profile {options.profile.id} needs --calibration data")
    return order


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


def _build_candidate(
    source: SourceModel,
    converter: Converter,
    precision: str,
    calibration: Dataset | None,
    evaluation: Dataset | None,
    float_out: np.ndarray | None,
    options: ConvertOptions,
    reporter: Reporter,
) -> Candidate:
    calib_x = calibration.x if calibration is not None else None
    total = len(calib_x) if calib_x is not None and precision in converter.calibrated_precisions else 0
    with reporter.progress(f"Converting to {converter.format} {precision}", total) as advance:
        artifact = converter.convert(source, precision, calib_x, advance)
    backend = backend_for(artifact.format)(artifact.content)
    accuracy = None
    accuracy_problem = None
    if evaluation is not None and float_out is not None:
        with reporter.progress(f"Evaluating {precision}", len(evaluation)) as advance:
            artifact_out = run_batched(lambda x: backend.run(x)[0], evaluation.x, advance)
        result = compare_outputs(float_out, artifact_out, evaluation.y)
        accuracy, accuracy_problem = _gate(result, len(evaluation), options)
    peak = peak_memory_bytes(artifact.format, artifact.content)
    budget_problems = _budget_problems(len(artifact.content), peak, options.profile, precision)
    metrics = Metrics(
        size_bytes=len(artifact.content),
        float_parameter_bytes=source.parameter_bytes,
        size_ratio=len(artifact.content) / max(source.parameter_bytes, 1),
        peak_memory_bytes=peak,
        host_latency_ms=host_latency_ms(backend),
        conversion_seconds=artifact.seconds,
        calibration_samples=artifact.calibration_samples,
        accuracy=accuracy,
        within_budget=not budget_problems,
    )
    entry = ArtifactEntry(
        path=f"model.{precision}.{artifact.format}",
        format=artifact.format,
        precision=precision,
        sha256=sha256(artifact.content),
        size=len(artifact.content),
        inputs=tuple(_tensor(t) for t in backend.inputs),
        outputs=tuple(_tensor(t) for t in backend.outputs),
        metrics=metrics,
    )
    return Candidate(entry, artifact.content, accuracy_problem, budget_problems)


def _gate(result: dict, samples: int, options: ConvertOptions) -> tuple[Accuracy, str | None]:
    max_drop = options.max_accuracy_drop
    if max_drop is None:
        max_drop = options.profile.budget.max_accuracy_drop
    if max_drop is None:
        max_drop = DEFAULT_MAX_ACCURACY_DROP
    problem = None
    if result["drop"] > max_drop:
        what = "top-1 accuracy" if result["metric"] == "top1" else "top-1 agreement with float"
        problem = (
            f"{what} {result['artifact']:.2f}% vs float {result['float_model']:.2f}%: "
            f"drop {result['drop']:.2f} pp > allowed {max_drop:.2f} pp"
        )
    gate = "overridden" if problem else "passed"
    return Accuracy(**result, samples=samples, max_drop=max_drop, gate=gate), problem


def _budget_problems(size: int, peak: int, profile: DeviceProfile, precision: str) -> tuple[str, ...]:
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
    converter: Converter,
    chosen: Candidate,
    calibration: Dataset | None,
    labels: tuple[str, ...] | None,
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
        artifacts=(chosen.entry,),
        preprocessing=Preprocessing(
            layout="NHWC" if len(source.input.shape) == 4 else None, input_range=input_range
        ),
        labels=labels,
        tools={
            "edgekit": edgekit.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            **converter.tool_versions(),
        },
    )


def _default_name(model: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.stem if model.is_file() else model.name)
    return name.strip("-.") or "model"
