"""One self-contained HTML page for ``edgekit fit``: the candidates, the budgets, the choice."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.convert.candidate import max_accuracy_drop
from edgekit.core.atomic import atomic_write
from edgekit.core.classes import ClassComparison, ClassScores
from edgekit.fit.search import FitResult, pareto
from edgekit.views.classes import row_names
from edgekit.views.figures import missing, png_img, pyplot

if TYPE_CHECKING:
    from edgekit.convert import ConvertResult
    from edgekit.core.profiles import DeviceProfile


def write_fit_report(path: Path, result: FitResult, profile: DeviceProfile, model_name: str) -> None:
    """The page, with the chosen bundle's per-class (or per entity span) report."""
    classes = ""
    if result.chosen is not None and result.accuracy is not None and result.accuracy.classes is not None:
        classes = class_section(result.accuracy.classes, result.labels, result.chosen.precision)
    atomic_write(path, render(result, profile, model_name, classes).encode())


def write_convert_report(path: Path, result: ConvertResult, profile: DeviceProfile, model_name: str) -> None:
    """The same page for one ``convert`` run, its precisions as the candidates, and the
    shipped artifact's per-class report against the float model's."""
    manifest = result.manifest
    accuracy = manifest.artifacts[0].metrics.accuracy
    classes = ""
    if accuracy is not None and accuracy.classes is not None:
        classes = class_section(accuracy.classes, manifest.labels, manifest.artifacts[0].precision)
    atomic_write(path, render(from_convert(result), profile, model_name, classes).encode())


def class_section(comparison: ClassComparison, labels: tuple[str, ...] | None, precision: str) -> str:
    """scikit-learn's classification_report layout, float → artifact in each cell."""

    def cells(a: ClassScores, b: ClassScores) -> str:
        pairs = ((a.precision, b.precision), (a.recall, b.recall), (a.f1, b.f1))
        return "".join(f"<td>{x:.3f} → {y:.3f}</td>" for x, y in pairs) + f"<td>{a.support}</td>"

    float_model, artifact = comparison.float_model, comparison.artifact
    rows = [
        f"<tr><td>{html.escape(n)}</td>{cells(a, b)}</tr>"
        for n, a, b in zip(row_names(comparison, labels), float_model.classes, artifact.classes, strict=True)
    ]
    averages = [("macro avg", float_model.macro, artifact.macro), ("weighted avg", float_model.weighted,
                artifact.weighted)]  # fmt: skip
    if float_model.micro and artifact.micro:
        averages.insert(0, ("micro avg", float_model.micro, artifact.micro))
    rows += [f"<tr><th>{name}</th>{cells(a, b)}</tr>" for name, a, b in averages]
    spans = float_model.names is not None
    what, unit = ("entity span", "Tag accuracy per word") if spans else ("class", "Accuracy")
    return (
        f"<h2>Per {what}: float → {html.escape(precision)}</h2><p>{unit} {float_model.accuracy:.3f} → "
        f"{artifact.accuracy:.3f}.</p><table><tr><th>{what}</th><th>precision</th><th>recall</th><th>F1</th>"
        f"<th>support</th></tr>{''.join(rows)}</table>"
    )


def render(result: FitResult, profile: Any, model_name: str, classes: str = "") -> str:
    plt = pyplot()
    plots = missing("plots") if plt is None else _plots(plt, result, profile)
    front = set(pareto(result.candidates))
    rows = "".join(
        f"<tr class='{'chosen' if c.verdict.startswith('chosen') else ''}'>"
        f"<td>{c.format}</td><td>{c.precision}</td><td>{c.prune:g}</td><td>{_kb(c.size_bytes)}</td>"
        f"<td>{_num(c.host_latency_ms, ' ms')}</td>"
        f"<td>{_num(c.top1, '%')}</td><td>{'yes' if i in front else ''}</td>"
        f"<td>{html.escape(c.verdict)}</td></tr>"
        for i, c in enumerate(result.candidates)
    )
    chosen = next((c for c in result.candidates if c.verdict.startswith("chosen")), None)
    summary = (
        f"Chosen: <b>{chosen.format} {chosen.precision}, pruned {chosen.prune:g}</b>, "
        f"{_kb(chosen.size_bytes)}."
        if chosen
        else "<b>No candidate fits the budgets.</b>"
    )
    max_drop = max_accuracy_drop(profile)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekit fit: {html.escape(model_name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222;padding:0 1em}}
table{{border-collapse:collapse;font-size:14px}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}
tr.chosen{{background:#e8f6e8}}img{{max-width:100%}}</style></head><body>
<h1>edgekit fit: {html.escape(model_name)} for {html.escape(profile.id)}</h1>
<p>{summary} Unpruned float model: top-1 {result.baseline_top1:.2f}%. Budgets: storage
{profile.budget.model_storage_mb:g} MB, memory {profile.budget.model_memory_mb:g} MB, accuracy drop
{max_drop:g} points. The smallest candidate that fits every budget wins; host latency is
shown, measured on the converting host.</p>
{plots}
<h2>Every candidate</h2>
<table><tr><th>format</th><th>precision</th><th>prune</th><th>size</th><th>host latency</th><th>top-1</th>
<th>Pareto</th><th>verdict</th></tr>{rows}</table>
{classes}
</body></html>
"""


def _plots(plt: Any, result: FitResult, profile: Any) -> str:
    measured = [c for c in result.candidates if c.size_bytes is not None and c.top1 is not None]
    plots = _size_against_accuracy(plt, result, measured, profile) + _latency_bars(plt, measured)
    if result.layer_snr:
        plots += _snr_bars(plt, result.layer_snr)
    return plots


def _size_against_accuracy(plt: Any, result: FitResult, measured: list[Any], profile: Any) -> str:
    figure, axis = plt.subplots(figsize=(8, 4.2), dpi=110)
    for fmt, marker in zip(sorted({c.format for c in measured}), "osD^v", strict=False):
        points = [c for c in measured if c.format == fmt]
        if not points:
            continue
        axis.scatter(
            [c.size_bytes / 1024 for c in points], [c.top1 for c in points], marker=marker,
            c=["tab:green" if c.fits else "tab:gray" for c in points], label=fmt, s=45,
        )
        for c in points:
            axis.annotate(f"{c.precision} p{c.prune:g}", (c.size_bytes / 1024, c.top1), fontsize=7,
                          xytext=(4, 3), textcoords="offset points")
    storage = profile.budget.model_storage_mb * 1024
    if measured and storage < 4 * max(c.size_bytes for c in measured) / 1024:
        axis.axvline(storage, color="red", linestyle="--", linewidth=1, label="storage budget")
    axis.axhline(result.baseline_top1, color="black", linewidth=0.8, label="unpruned float")
    budget = profile.budget.max_accuracy_drop
    if budget is not None:
        axis.axhline(result.baseline_top1 - budget, color="orange", linestyle="--", linewidth=1,
                     label="accuracy budget")
    chosen = next((c for c in result.candidates if c.verdict.startswith("chosen")), None)
    if chosen is not None and chosen.size_bytes is not None and chosen.top1 is not None:
        axis.scatter([chosen.size_bytes / 1024], [chosen.top1], s=220, facecolors="none", edgecolors="red",
                     linewidths=2, label="chosen")
    axis.set_xlabel("artifact size (KB)")
    axis.set_ylabel("top-1 (%)")
    axis.set_title("size against accuracy (green: fits every budget)")
    axis.legend(fontsize="small")
    return png_img(figure)


def _latency_bars(plt: Any, measured: list[Any]) -> str:
    timed = [c for c in measured if c.host_latency_ms]
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(timed) + 1.2), dpi=110)
    reference = min(c.host_latency_ms for c in timed) if timed else 1.0
    labels = [f"{c.format} {c.precision} prune {c.prune:g}" for c in timed]
    colors = ["tab:red" if c.verdict.startswith("chosen") else "tab:blue" for c in timed]
    axis.barh(labels, [c.host_latency_ms / reference for c in timed], color=colors)
    axis.set_xlabel("host latency, relative to the fastest candidate")
    axis.invert_yaxis()
    return png_img(figure)


def _snr_bars(plt: Any, layer_snr: tuple[tuple[str, float], ...]) -> str:
    figure, axis = plt.subplots(figsize=(8, 0.32 * len(layer_snr) + 1.2), dpi=110)
    names = [_layer_name(name) for name, _ in layer_snr]
    values = [max(snr, -10.0) for _, snr in layer_snr]
    axis.barh(names, values, color=["tab:red" if v < 20 else "tab:blue" for v in values])
    axis.axvline(20, color="orange", linestyle="--", linewidth=1, label="20 dB")
    axis.set_xlabel("int8 output SNR against float (dB; red: candidates to keep in float)")
    axis.set_title("per-layer quantization error, TFLite int8, unpruned model")
    axis.invert_yaxis()
    axis.legend(fontsize="small")
    return png_img(figure)


def _layer_name(tensor: str) -> str:
    """'model/conv2d_1/Relu;model/conv2d_1/BiasAdd' -> 'conv2d_1'."""
    parts = tensor.split(";")[0].split("/")
    return parts[1] if len(parts) > 2 else parts[0][:40]


def from_convert(result: Any) -> FitResult:
    """The same page for one ``convert`` run: its candidate precisions."""
    from edgekit.fit.search import FitCandidate

    manifest = result.manifest
    chosen = {(a.format, a.precision) for a in manifest.artifacts}
    compression = manifest.compression
    candidates = []
    baseline = None
    for tried in result.tried:
        entry, accuracy = tried.entry, tried.entry.metrics.accuracy
        baseline = baseline if baseline is not None else (accuracy.float_model if accuracy else None)
        won = (entry.format, entry.precision) in chosen
        candidates.append(
            FitCandidate(
                prune=compression.sparsity if compression else 0.0,
                format=entry.format,
                precision=entry.precision,
                parameters=compression.parameters_after if compression else None,
                size_bytes=entry.size,
                peak_memory_bytes=entry.metrics.peak_memory_bytes,
                host_latency_ms=entry.metrics.host_latency_ms,
                top1=accuracy.artifact if accuracy else None,
                accuracy_drop=accuracy.drop if accuracy else None,
                fits=not tried.problems,
                problems=tried.problems,
                verdict="chosen"
                if won
                else ("lost: " + "; ".join(tried.problems) if tried.problems else "lost"),
            )
        )
    if compression is not None and compression.top1_before is not None:
        baseline = compression.top1_before
    return FitResult(
        next((c for c in candidates if c.verdict == "chosen"), None),
        tuple(candidates),
        baseline or 0.0,
        False,
    )


def _kb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KB"


def _num(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.3g}{unit}"
