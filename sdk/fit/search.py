"""``edgekit fit``: search pruning ratio × format × precision, measure every candidate, keep
the smallest that fits the device profile's budgets, and say why the others lost.

Each candidate is a full ``convert`` (its own accuracy gate, memory probe and latency), so
its numbers mean what they mean in any manifest. The choice is the smallest candidate that
fits storage, memory and the accuracy budget against the *unpruned* float model; host
latency is reported but does not decide, because this host is not the device and its
timings vary from run to run, while the search must be repeatable under ``--seed``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from edgekit.convert import ConvertOptions, ConvertResult, Inputs, build, max_accuracy_drop, write
from edgekit.convert.data import check_dataset, load_dataset
from edgekit.convert.decoder import is_decoder
from edgekit.convert.measure import top1
from edgekit.convert.plan import primary_output, read_labels
from edgekit.convert.text import model_inputs, text_encoder, token_task
from edgekit.converters import Converter, ready_made
from edgekit.converters.source import detect_kind, load_source
from edgekit.core.errors import BudgetError, DataError, EdgekitError
from edgekit.core.formats import Format, Precision, PrecisionChoice
from edgekit.core.manifest import Accuracy
from edgekit.core.profiles import DeviceProfile
from edgekit.core.samples import run_samples
from edgekit.core.validation import updated
from edgekit.views.progress import Reporter, SilentReporter


class FitCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prune: float
    format: str
    precision: str
    parameters: int | None
    size_bytes: int | None
    peak_memory_bytes: int | None
    host_latency_ms: float | None
    top1: float | None
    accuracy_drop: float | None = None
    """Percentage points below the unpruned float model."""
    fits: bool
    problems: tuple[str, ...]
    verdict: str = ""
    context: int | None = None
    """A decoder's: prompt and new tokens at most."""
    perplexity_increase: float | None = None
    """A decoder's: % above the float model on the held-out text."""


@dataclass(frozen=True)
class FitOptions:
    model: Path
    profile: DeviceProfile
    output: Path
    evaluation: Path
    calibration: Path | None = None
    train_data: Path | None = None
    prune_ratios: tuple[float, ...] = (0.0, 0.25, 0.5)
    formats: tuple[Format, ...] | None = None
    precisions: tuple[Precision, ...] | None = None
    max_minutes: float = 30.0
    seed: int = 0
    max_accuracy_drop: float | None = None
    max_robustness_drop: float | None = None
    sign_key: Path | None = None
    tokenizer: Path | None = None
    """A text model's tokenizer.json; .jsonl data is tokenized by it, as in convert."""
    max_sequence_length: int | None = None
    labels: Path | None = None


@dataclass(frozen=True)
class FitResult:
    chosen: FitCandidate | None
    candidates: tuple[FitCandidate, ...]
    baseline_top1: float
    stopped_early: bool
    layer_snr: tuple[tuple[str, float], ...] = ()
    """TFLite int8, unpruned model: each layer's output SNR (dB) against float."""
    accuracy: Accuracy | None = None
    """The chosen bundle's accuracy against its float model, with the per-class report."""
    labels: tuple[str, ...] | None = None


def fit(options: FitOptions, reporter: Reporter | None = None) -> FitResult:
    reporter = reporter or SilentReporter()
    if is_decoder(options.model):
        from edgekit.fit.decoder import fit_decoder

        return fit_decoder(options, reporter)
    evaluation = load_dataset(options.evaluation, "evaluation")
    text = evaluation.text
    if evaluation.y is None and (text is None or (text.labels is None and text.tags is None)):
        raise DataError(f"evaluation data {options.evaluation}: fit compares top-1, so it needs labels")
    kind = detect_kind(options.model)
    calibration = load_dataset(options.calibration, "calibration") if options.calibration else None
    data = Inputs(kind, calibration, evaluation, labels=read_labels(options.labels))
    formats = options.formats or tuple(
        f for f in options.profile.runtime.formats if kind in Converter.registry[f].source_kinds
    )
    plan = _plan(options, kind, formats)
    baseline = _baseline_top1(options, data)
    candidates, best, stopped = _search(options, data, plan, baseline, reporter)
    chosen_index = _choose(candidates)
    candidates = _verdicts(candidates, chosen_index)
    chosen = candidates[chosen_index] if chosen_index is not None else None
    accuracy = None
    if best is not None and chosen is not None:
        table = tuple(c.model_dump(mode="json") for c in candidates)
        write(best, options.sign_key, fit=table)
        accuracy = best.manifest.artifacts[0].metrics.accuracy
    snr = _layer_snr(options, data, formats)
    return FitResult(chosen, tuple(candidates), baseline, stopped, snr, accuracy, data.labels)


def _plan(
    options: FitOptions, kind: str, formats: tuple[Format, ...]
) -> list[tuple[float, Format, Precision]]:
    """Every (pruning ratio, format, precision) to try, in order."""
    ratios = options.prune_ratios if options.train_data is not None and kind in ("keras", "h5") else (0.0,)
    return [
        (ratio, fmt, precision)
        for ratio in ratios
        for fmt in formats
        for precision in options.precisions or Converter.registry[fmt].precisions
        if options.calibration is not None or precision not in Converter.registry[fmt].calibrated_precisions
    ]


def _search(
    options: FitOptions, data: Inputs, plan: list[tuple[float, Format, Precision]], baseline: float,
    reporter: Reporter,
) -> tuple[list[FitCandidate], ConvertResult | None, bool]:
    """Measure each candidate until the deadline; keeps only the built bundle that can still win."""
    max_drop = max_accuracy_drop(options.profile, options.max_accuracy_drop)
    deadline = time.monotonic() + options.max_minutes * 60
    candidates: list[FitCandidate] = []
    best: ConvertResult | None = None
    with reporter.progress("Fitting candidates", len(plan)) as advance:
        for index, (ratio, fmt, precision) in enumerate(plan):
            if time.monotonic() > deadline:
                reporter.warn(
                    f"--max-minutes {options.max_minutes:g} reached: {len(plan) - index} candidates not tried"
                )
                return candidates, best, True
            conv = _convert_options(options, precision, fmt, ratio)
            built, candidate = _measure(conv, data, ratio, baseline, max_drop, options.seed)
            candidates.append(candidate)
            if built is not None and _choose(candidates) == index:
                best = built
            advance(1)
    return candidates, best, False


def _layer_snr(options: FitOptions, data: Inputs, formats: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """The quantization debugger's per-layer view, for the report."""
    from edgekit.converters.tflite import TFLiteConverter

    debugged = TFLiteConverter.format in formats and data.kind in TFLiteConverter.source_kinds
    if data.calibration is None or not debugged or ready_made(data.kind):
        return ()
    try:
        with load_source(options.model, None, data.kind) as source:
            calibration, _ = check_dataset(data.calibration, source.inputs, "calibration", force=True)
            return tuple(TFLiteConverter().layer_errors(source, calibration.samples))
    except EdgekitError:
        return ()


def _convert_options(
    options: FitOptions, precision: PrecisionChoice, fmt: Format | None, ratio: float
) -> ConvertOptions:
    return ConvertOptions(
        model=options.model, profile=options.profile, output=options.output, precision=precision, format=fmt,
        calibration=options.calibration, evaluation=options.evaluation, allow_accuracy_drop=True,
        allow_over_budget=True, max_accuracy_drop=options.max_accuracy_drop,
        max_robustness_drop=options.max_robustness_drop,
        prune=ratio or None, train_data=options.train_data if ratio else None, tokenizer=options.tokenizer,
        max_sequence_length=options.max_sequence_length, labels=options.labels,
    )


def _baseline_top1(options: FitOptions, data: Inputs) -> float:
    """The unpruned float model's top-1 on the evaluation data (tokenized, for a text model)."""
    with load_source(options.model, None, data.kind) as source:
        conv = _convert_options(options, "fp32", None, 0.0)
        found = text_encoder(source, conv)
        tokens = found is not None and token_task(source, conv)
        evaluation = model_inputs(data.evaluation, found[0] if found else None, data.labels, tokens)
        assert evaluation is not None and evaluation.y is not None
        checked, _ = check_dataset(evaluation, source.inputs, "evaluation", force=True)
        outputs = run_samples(source.predict, checked.samples, lambda n: None)
        primary = primary_output(source, None, required=True)
        return top1(outputs[[o.name for o in source.outputs].index(primary or "")], evaluation.y)


def _measure(
    conv: ConvertOptions, data: Inputs, ratio: float, baseline: float, max_drop: float, seed: int
) -> tuple[ConvertResult | None, FitCandidate]:
    import keras

    keras.utils.set_random_seed(seed)
    fmt, precision = conv.format or "", conv.precision
    try:
        result = build(conv, inputs=data)
    except EdgekitError as exc:
        return None, FitCandidate(
            prune=ratio, format=fmt, precision=precision, parameters=None, size_bytes=None,
            peak_memory_bytes=None, host_latency_ms=None, top1=None, fits=False, problems=(str(exc),),
        )
    entry = result.manifest.artifacts[0]
    accuracy = entry.metrics.accuracy
    top1_value = accuracy.artifact if accuracy is not None else None
    drop = round(baseline - top1_value, 2) if top1_value is not None else None
    problems = [p for c in result.tried if c.entry.precision == precision for p in c.budget_problems]
    if drop is not None and drop > max_drop:
        problems.append(
            f"top-1 {top1_value:.2f}% is {drop:.2f} points below the unpruned model (max {max_drop:g})"
        )
    compression = result.manifest.compression
    return result, FitCandidate(
        prune=ratio, format=fmt, precision=entry.precision,
        parameters=compression.parameters_after if compression else None,
        size_bytes=entry.size, peak_memory_bytes=entry.metrics.peak_memory_bytes,
        host_latency_ms=round(entry.metrics.host_latency_ms, 4), top1=top1_value, accuracy_drop=drop,
        fits=not problems, problems=tuple(problems),
    )


def _choose(candidates: list[FitCandidate]) -> int | None:
    """The smallest candidate that fits; ties go to the more accurate, then the earlier."""
    fitting = [i for i, c in enumerate(candidates) if c.fits and c.size_bytes is not None]
    if not fitting:
        return None
    return min(fitting, key=lambda i: (candidates[i].size_bytes, candidates[i].accuracy_drop or 0.0, i))


def pareto(candidates: tuple[FitCandidate, ...] | list[FitCandidate]) -> list[int]:
    """Indices of measured candidates no other beats on size, latency and accuracy at once."""
    measured = [
        (i, c) for i, c in enumerate(candidates) if c.size_bytes is not None and c.host_latency_ms is not None
    ]

    def key(c: FitCandidate) -> tuple[float, float, float]:
        return (float(c.size_bytes or 0), float(c.host_latency_ms or 0), float(c.accuracy_drop or 0))

    front = []
    for i, c in measured:
        dominated = any(
            all(a <= b for a, b in zip(key(o), key(c), strict=True)) and key(o) != key(c) for _, o in measured
        )
        if not dominated:
            front.append(i)
    return front


def _verdicts(candidates: list[FitCandidate], chosen: int | None) -> list[FitCandidate]:
    out = []
    for i, c in enumerate(candidates):
        if i == chosen:
            verdict = "chosen: the smallest that fits every budget"
        elif c.problems:
            verdict = "lost: " + "; ".join(c.problems)
        else:
            best = candidates[chosen] if chosen is not None else None
            verdict = (
                f"lost: larger ({c.size_bytes:,} bytes against {best.size_bytes:,})"
                if best is not None and best.size_bytes is not None
                else "lost"
            )
        out.append(updated(c, verdict=verdict))
    return out


def nothing_fits(result: FitResult, profile_id: str) -> BudgetError:
    reasons = sorted({p.split(":")[0] for c in result.candidates for p in c.problems})
    fix = (
        "loosen the budget, or start from a shorter --max-sequence-length"
        if any(c.context for c in result.candidates)
        else "loosen the budget, or add pruning ratios (--prune-ratios) and --train-data"
    )
    return BudgetError(
        f"no candidate of {len(result.candidates)} fits {profile_id}: {'; '.join(reasons[:4])}; "
        f"see the table, {fix}"
    )
