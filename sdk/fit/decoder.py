"""``edgekit fit`` on a decoder: search precision × context length. The longest context at
which some precision passes its perplexity gate and the memory budget (weights and the cache
at that context) wins; at that context, the smallest bundle."""

from __future__ import annotations

from edgekit.convert import ConvertOptions, ConvertResult, write
from edgekit.convert.decoder import convert_decoder
from edgekit.core.errors import EdgekitError
from edgekit.core.validation import updated
from edgekit.fit.search import FitCandidate, FitOptions, FitResult
from edgekit.views.progress import Reporter

CONTEXTS = (4096, 2048, 1024, 512, 256, 128, 64, 32)
PRECISIONS = ("int4", "int8", "dynamic", "fp16", "fp32")


def fit_decoder(options: FitOptions, reporter: Reporter) -> FitResult:
    longest = options.max_sequence_length or options.profile.budget.max_sequence_length or 256
    contexts = (longest, *(c for c in CONTEXTS if c < longest))
    candidates: list[FitCandidate] = []
    best: ConvertResult | None = None
    for context in contexts:
        made = []
        title = f"Decoder at a context of {context} tokens"
        with reporter.progress(title, len(_precisions(options))) as advance:
            for precision in _precisions(options):
                candidate, result = _try(options, precision, context)
                candidates.append(candidate)
                if result is not None:
                    made.append((candidate, result))
                advance(1)
        if made:  # the longest context that fits: the smallest bundle there
            chosen, best = min(made, key=lambda pair: pair[0].size_bytes or 0)
            break
    candidates = [_verdict(c, best) for c in candidates]
    chosen_one = next((c for c in candidates if c.verdict.startswith("chosen")), None)
    if best is not None:
        write(best, options.sign_key, fit=tuple(c.model_dump(mode="json") for c in candidates))
    return FitResult(chosen_one, tuple(candidates), float("nan"), False)


def _precisions(options: FitOptions) -> tuple[str, ...]:
    return tuple(options.precisions or PRECISIONS)


def _try(options: FitOptions, precision: str, context: int) -> tuple[FitCandidate, ConvertResult | None]:
    settings = ConvertOptions(
        model=options.model, profile=options.profile, output=options.output, precision=precision,  # type: ignore[arg-type]
        evaluation=options.evaluation, tokenizer=options.tokenizer, max_sequence_length=context,
    )  # fmt: skip
    try:
        result = convert_decoder(settings)
    except EdgekitError as exc:
        problem = str(exc).removeprefix(f"{precision}: ")
        return _candidate(precision, context, None, (problem,)), None
    return _candidate(precision, context, result, ()), result


def _candidate(
    precision: str, context: int, result: ConvertResult | None, problems: tuple[str, ...]
) -> FitCandidate:
    entry = result.manifest.artifacts[0] if result is not None else None
    quality = entry.metrics.generation if entry is not None else None
    return FitCandidate(
        prune=0.0, format="onnx", precision=precision, context=context, parameters=None,
        size_bytes=entry.size if entry else None,
        peak_memory_bytes=entry.metrics.model_memory_bytes if entry else None,  # what the budget checks
        host_latency_ms=entry.metrics.host_latency_ms if entry else None, top1=None,
        perplexity_increase=quality.increase if quality else None, fits=result is not None, problems=problems,
    )  # fmt: skip


def _verdict(candidate: FitCandidate, best: ConvertResult | None) -> FitCandidate:
    chosen = best.manifest.artifacts[0] if best is not None else None
    spec = best.manifest.generation if best is not None else None
    if chosen is not None and spec is not None and candidate.fits and candidate.context == spec.max_context:
        if candidate.precision == chosen.precision:
            verdict = "chosen: the longest context that fits, and the smallest bundle there"
        else:
            verdict = f"lost: larger ({candidate.size_bytes:,} bytes against {chosen.size:,})"
        return updated(candidate, verdict=verdict)
    if candidate.problems:
        return updated(candidate, verdict="lost: " + "; ".join(candidate.problems))
    return updated(candidate, verdict="not tried: a longer context fits")
