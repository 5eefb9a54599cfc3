"""Building one candidate: convert at one precision, measure it, gate it, and when int8
misses the accuracy gate, keep the nodes that lose the most in float and try again."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from edgekit.convert.data import Dataset
from edgekit.convert.measure import Comparison, MemoryProbe, compare_all, host_latency_ms
from edgekit.convert.options import ConvertOptions
from edgekit.convert.robustness import RobustnessCheck
from edgekit.convert.timing import Stopwatch
from edgekit.converters import Artifact, ConversionSettings, Converter
from edgekit.converters.source import SourceModel
from edgekit.core.bundle import sha256
from edgekit.core.classes import metric_name
from edgekit.core.errors import ConversionError
from edgekit.core.manifest import (
    Accuracy,
    ArtifactEntry,
    GateVerdict,
    Metrics,
    Quantization,
    Tensor,
)
from edgekit.core.profiles import DEFAULT_MAX_ACCURACY_DROP, DeviceProfile
from edgekit.core.samples import Feed, run_samples
from edgekit.core.validation import updated
from edgekit.runtime.backends import Backend, TensorInfo, backend_for
from edgekit.views.progress import Reporter, some

MB = 1024 * 1024
MAX_FALLBACK_ROUNDS = 6
"""Rounds that keep more int8 tensors out of int8: 1, 2, 4, ... tensors, 63 in all."""


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
class Job:
    """What every candidate of one convert run shares."""

    options: ConvertOptions
    source: SourceModel
    settings: ConversionSettings
    calibration: Dataset | None
    evaluation: Dataset | None
    float_out: dict[str, np.ndarray] | None
    """The float model's outputs on the evaluation data, by output name."""
    primary: str | None
    """The output the gate's top-1 or agreement is measured on (``--eval-output``)."""
    reporter: Reporter
    labels: tuple[str, ...] | None = None
    """The class names (``--labels``); for token classification, the tags."""
    robustness: RobustnessCheck | None = None
    """``--max-robustness-drop``: the corrupted evaluation data, and float's accuracy on it."""
    watch: Stopwatch = field(default_factory=Stopwatch)
    """Seconds per step of the whole run."""


def max_accuracy_drop(profile: DeviceProfile, override: float | None = None) -> float:
    """The accuracy budget in percentage points: the user's, else the profile's, else 1.0."""
    for value in (override, profile.budget.max_accuracy_drop):
        if value is not None:
            return value
    return DEFAULT_MAX_ACCURACY_DROP


def build_candidate(job: Job, converter: Converter, precision: str) -> Candidate:
    artifact, candidate = _convert(job, converter, precision, job.settings)
    if candidate.accuracy_problem and precision in converter.fallback_precisions:
        candidate = _keep_sensitive_nodes_in_float(job, converter, artifact, candidate)
    return candidate


def _convert(
    job: Job, converter: Converter, precision: str, settings: ConversionSettings
) -> tuple[Artifact, Candidate]:
    """Convert at ``precision``, then measure: the memory probe's process starts first, so
    that its imports overlap the conversion."""
    calibration = job.calibration.samples if job.calibration is not None else None
    total = (
        len(calibration) if calibration is not None and precision in converter.calibrated_precisions else 0
    )
    probe = MemoryProbe(converter.format, _example(job))
    try:  # a conversion or gate that fails must not leave the probe's process waiting
        with job.reporter.progress(f"Converting to {converter.format} {precision}", total) as advance:
            with job.watch.step("conversion (calibration included)"):
                artifact = converter.convert(job.source, precision, calibration, advance, settings)
        for note in artifact.notes:
            job.reporter.note(note)
        return artifact, _measure(job, artifact, probe)
    finally:
        probe.close()


def _keep_sensitive_nodes_in_float(
    job: Job, converter: Converter, artifact: Artifact, candidate: Candidate
) -> Candidate:
    """Retry with the nodes that lose the most kept in float, until the gate passes. If it
    never does, the round that lost the least (an --allow-accuracy-drop run ships it), not
    the last one, which keeps the most in float. A failing int8 round larger than fp16 would
    be ends the rounds and is never the one shipped: past that, int8 has nothing to offer."""
    data = job.calibration or job.evaluation  # the gate failed, so evaluation data is there
    if data is None:
        return candidate
    kept: list[str] = []
    step = 1
    tried = [candidate]
    for _ in range(MAX_FALLBACK_ROUNDS):
        started = time.perf_counter()
        with job.watch.step("fallback: ranking nodes"):
            groups = converter.rank_sensitive_nodes(job.source, artifact, data.samples, job.settings)
        fresh_groups = [g for g in groups if any(node not in kept for node in g)][:step]
        fresh = list(dict.fromkeys(n for g in fresh_groups for n in g if n not in kept))
        if not fresh:
            break
        kept += fresh
        step *= 2
        job.reporter.note(
            f"{artifact.precision} missed the accuracy budget ({candidate.accuracy_problem}); "
            f"keeping {some(fresh)} in float and retrying"
        )
        settings = replace(job.settings, float_nodes=tuple(kept))
        try:
            artifact, candidate = _convert(job, converter, artifact.precision, settings)
        except ConversionError as exc:  # the engine cannot keep these in float: the gate's verdict stands
            job.reporter.note(f"keeping {some(fresh)} in float failed: {exc}")
            break
        job.reporter.note(
            f"fallback round with {len(kept)} kept in float: {time.perf_counter() - started:.1f} s"
        )
        if not candidate.accuracy_problem:
            return candidate
        if artifact.precision == "int8" and _past_fp16(candidate, tried[0], job.source.parameter_bytes):
            job.reporter.note(
                f"int8 with {len(kept)} kept in float still misses the gate and is larger than fp16 would "
                "be: no more rounds"
            )
            break
        tried.append(candidate)
    return min(tried, key=_loss)


def _past_fp16(candidate: Candidate, plain: Candidate, weight_bytes: int) -> bool:
    """Whether the weights kept in float make this int8 larger than fp16 would be. Plain
    int8 holds the weights at 1/4 of float32, fp16 at 1/2: a round that adds more than 1/4 of
    the float32 weights to plain int8's size has passed it (measured from plain int8's size,
    so a small graph's overhead, its names and scales, does not count)."""
    return candidate.entry.size - plain.entry.size > weight_bytes / 4


def _loss(candidate: Candidate) -> tuple[float, int]:
    """What a candidate lost against float (less is better), then its size."""
    accuracy = candidate.entry.metrics.accuracy
    return (accuracy.drop if accuracy is not None else float("inf"), candidate.entry.size)


def _measure(job: Job, artifact: Artifact, probe: MemoryProbe) -> Candidate:
    """Evaluate, time and size one artifact against the profile."""
    profile = job.options.profile
    threads = min(profile.runtime.threads, os.cpu_count() or 1)
    backend = backend_for(artifact.format)(artifact.content, threads)
    with job.watch.step("gate"):
        accuracy, accuracy_problem = _evaluate(job, artifact, backend)
    size = len(artifact.content)
    example = _example(job)
    with job.watch.step("memory probe"):
        peak = probe.peak_bytes(artifact.content)
    with job.watch.step("latency"):
        latency = host_latency_ms(backend, example)
    budget_problems = budget_problems_of(size, peak, profile)
    metrics = Metrics(
        size_bytes=size,
        float_parameter_bytes=job.source.parameter_bytes,
        size_ratio=size / max(job.source.parameter_bytes, 1),
        peak_memory_bytes=peak,
        host_latency_ms=latency,
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
        quantization=artifact.quantization,
    )
    return Candidate(entry, artifact.content, accuracy_problem, budget_problems)


def _example(job: Job) -> Feed | None:
    """One batch-1 call from the data, for memory and latency: zeros would not do for models
    whose dynamic dims need a real length (Silero VAD pads its audio by reflection)."""
    data = job.calibration or job.evaluation
    return next(data.samples.batches(1))[0] if data is not None else None


def _evaluate(job: Job, artifact: Artifact, backend: Backend) -> tuple[Accuracy | None, str | None]:
    """The artifact against the float model on the evaluation data, and the gate's verdict."""
    if job.evaluation is None or job.float_out is None or job.primary is None:
        return None, None
    title = f"Evaluating {artifact.format} {artifact.precision}"
    with job.reporter.progress(title, len(job.evaluation)) as advance:
        outs = run_samples(backend.run, job.evaluation.samples, advance)
    result = compare_all(
        job.float_out,
        _by_name(backend, outs, list(job.float_out)),
        job.primary,
        job.evaluation.y,
        job.options.gate_metric,
        job.labels,
    )
    primary = job.float_out[job.primary]
    judged = job.primary if primary.size > len(primary) else None  # more than one value per sample
    accuracy, problem = gate(result, len(job.evaluation), job.options, artifact.precision, judged)
    if job.robustness is None:
        return accuracy, problem
    output = list(job.float_out).index(job.primary)
    robust = job.robustness.measure(backend.run, output)
    if problem is None and robust.drop > robust.max_drop:
        problem = (
            f"top-1 under common corruptions {robust.artifact:.2f}% vs float {robust.float_model:.2f}%: "
            f"drop {robust.drop:.2f} pp > allowed {robust.max_drop:.2f} pp"
        )
    verdict = "overridden" if problem else "passed"
    return updated(accuracy, robustness=robust, gate=verdict), problem


def _by_name(backend: Backend, outs: list[np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The artifact's outputs by the source model's output names."""
    named = {info.name: out for info, out in zip(backend.outputs, outs, strict=True)}
    if set(names) <= set(named):
        return named
    if len(outs) == len(names):  # an engine that renamed the outputs kept their order
        return dict(zip(names, outs, strict=True))
    raise ConversionError(f"the artifact has outputs {sorted(named)}, the source model {names}")


COSINE_FLOORS = {"fp32": 0.999, "fp16": 0.99, "dynamic": 0.9, "int8": 0.9}
"""For outputs that top-1 does not judge (the others, beside the one ``--eval-output``
names, such as a recurrent state, and a one-value score, whose agreement is always 100%):
below these, the output no longer tracks the float model's."""


def gate(
    result: Comparison, samples: int, options: ConvertOptions, precision: str, judged: str | None = None
) -> tuple[Accuracy, str | None]:
    """The verdict: top-1 (or agreement) within the budget, and every output but ``judged``
    (the one top-1 measures meaningfully) above the cosine floor."""
    max_drop = max_accuracy_drop(options.profile, options.max_accuracy_drop)
    problem = None
    if result.level == "map":  # agreement means nothing here: every output's cosine judges
        judged = None
    elif result.drop > max_drop:
        spans = result.classes is not None and result.classes.float_model.names is not None
        what = metric_name(result.metric, result.level, spans)
        if result.outputs:
            what += f" of output '{result.output}'"
        problem = (
            f"{what} {result.artifact:.2f}% vs float {result.float_model:.2f}%: "
            f"drop {result.drop:.2f} pp > allowed {max_drop:.2f} pp"
        )
    floor = COSINE_FLOORS.get(precision, 0.0)
    cosines = {name: each.cosine for name, each in (result.outputs or {}).items()}
    low = {name: c for name, c in (cosines or {result.output or "": result.similarity.cosine}).items()
           if c < floor and name != judged}  # fmt: skip
    if problem is None and low:
        name, cosine = min(low.items(), key=lambda item: item[1])
        which = f"output '{name}'" if cosines else "the output"
        problem = f"{which} has cosine {cosine:.4f} with float, below {floor} for {precision}"
    verdict: GateVerdict = "overridden" if problem else "passed"
    return accuracy_record(result, samples, max_drop, verdict), problem


def accuracy_record(result: Comparison, samples: int, max_drop: float, gate: GateVerdict) -> Accuracy:
    """The manifest's record of a comparison and its verdict."""
    return Accuracy(
        metric=result.metric, level=result.level, output=result.output, samples=samples,
        float_model=result.float_model, artifact=result.artifact, drop=result.drop, max_drop=max_drop,
        agreement=result.similarity.agreement, cosine=result.similarity.cosine,
        max_abs_error=result.similarity.max_abs_error, outputs=result.outputs, classes=result.classes,
        gate=gate,
    )


def budget_problems_of(size: int, peak: int, profile: DeviceProfile) -> tuple[str, ...]:
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


def _tensor(info: TensorInfo) -> Tensor:
    quantization = None
    if info.scale is not None and info.zero_point is not None:
        quantization = Quantization(scale=info.scale, zero_point=info.zero_point)
    return Tensor(name=info.name, shape=info.shape, dtype=info.dtype, quantization=quantization)
