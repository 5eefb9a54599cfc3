"""Selection: build candidates in order, keep the first that passes (or, on a CPU-only ONNX
profile, the fastest that passes), and record why."""

from __future__ import annotations

import platform
from dataclasses import replace

from edgekit.convert.candidate import Candidate, Job, build_candidate
from edgekit.convert.options import ConvertOptions
from edgekit.converters import Converter
from edgekit.core.errors import AccuracyBudgetError, BudgetError, NothingToConvertError
from edgekit.core.manifest import CandidateRecord, Selection
from edgekit.core.validation import updated


def select(job: Job, converter: Converter, precisions: list[str]) -> tuple[Candidate, list[Candidate]]:
    """The candidate to ship for ``converter``, with the selection recorded; every one tried."""
    options = job.options
    measured = options.precision == "auto" and converter.picks_fastest(options.profile)
    tried: list[Candidate] = []
    unchanged: list[str] = []
    for precision in precisions:
        try:
            tried.append(build_candidate(job, converter, precision))
        except NothingToConvertError as exc:
            if options.precision != "auto" or precision == precisions[-1] and not tried:
                raise
            job.reporter.note(f"skipped {str(exc).split('; use')[0]}")
            unchanged.append(precision)
            continue
        if not tried[-1].problems and not measured:
            break
    chosen = choose(tried, options)
    passing = [c for c in tried if not c.problems]
    if measured and passing:
        chosen = min(passing, key=lambda c: c.entry.metrics.host_latency_ms)
    selection = _selection(options, converter.format, tried, measured and bool(passing), unchanged)
    return replace(chosen, entry=updated(chosen.entry, selection=selection)), tried


def _selection(
    options: ConvertOptions, fmt: str, tried: list[Candidate], measured: bool, unchanged: list[str]
) -> Selection:
    method, reason = _why(options, fmt, measured)
    if unchanged:
        reason += f"; skipped {', '.join(unchanged)}: they would change nothing in this model"
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


def _why(options: ConvertOptions, fmt: str, measured: bool) -> tuple[str, str]:
    profile = options.profile
    if options.precision != "auto":
        return "explicit", f"--precision {options.precision}"
    if measured:
        return "measured-fastest", (
            f"fastest of the precisions that passed, measured in ONNX Runtime on this host "
            f"({platform.machine()}) as a proxy for {profile.id}"
        )
    reason = f"first precision in {profile.id}'s {fmt} order that passed"
    if profile.accelerator.kind != "none":
        reason += (
            f"; not measured: this host cannot run {profile.runtime.execution_providers[0]} "
            f"on a {profile.accelerator.name or profile.accelerator.kind} GPU"
        )
    return "profile-order", reason


def choose(tried: list[Candidate], options: ConvertOptions) -> Candidate:
    """The first candidate without problems, else the first whose problems the user allowed."""
    for candidate in tried:
        if not candidate.problems:
            return candidate
    for candidate in tried:
        if _overridable(candidate, options):
            return candidate
    detail = "; ".join(f"{c.entry.precision}: {', '.join(c.problems)}" for c in tried)
    if all(c.budget_problems for c in tried):
        smaller = "; try a smaller precision (int8)" if len(tried) == 1 else ""
        raise BudgetError(
            f"the model does not fit {options.profile.id}: {detail}{smaller}; make it smaller with "
            "--prune 0.5 --train-data TRAIN.npz, or let edgekit fit search pruning and precisions; "
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
