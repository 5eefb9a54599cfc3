"""The evaluation as one self-contained HTML page, every plot embedded as a PNG."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.atomic import atomic_write
from edgekit.core.classes import ClassComparison
from edgekit.evaluate.corrupt import to_nhwc
from edgekit.evaluate.run import Evaluation, ModelEvaluation
from edgekit.fit.report import class_section
from edgekit.views.figures import missing, png_img, pyplot

THUMBNAILS = 16


def write_report(
    path: Path, result: Evaluation, x: Any, maps: dict[str, np.ndarray] | None = None,
    texts: list[str] | None = None, tokens: list[list[str]] | None = None,
) -> None:
    """``x``: the inputs (an image or feature array), or for a text model its feed, with
    ``texts`` and the explained samples' ``tokens``."""
    atomic_write(path, render(result, x, maps or {}, texts, tokens).encode())


def _models(result: Evaluation) -> list[ModelEvaluation]:
    return [result.float_model, *(a.evaluation for a in result.artifacts)]


def render(
    result: Evaluation, x: Any, maps: dict[str, np.ndarray], texts: list[str] | None = None,
    tokens: list[list[str]] | None = None,
) -> str:
    plt = pyplot()
    if texts is not None:
        figures = "" if plt is None else _figures(plt, result, np.empty((0,)), {})
        figures += _text_sections(result, texts, maps, tokens)
    else:
        x = to_nhwc(x)  # thumbnails: channels last
        figures = missing("plots") if plt is None else _figures(plt, result, x, maps)
    rows = "".join(
        f"<tr><td>{html.escape(m.name)}</td><td>{100 * m.report.accuracy:.2f}</td>"
        f"<td>{100 * m.report.macro.f1:.2f}</td><td>{m.ece:.2f}</td><td>{m.robustness.mean:.2f}</td>"
        f"{_versus(result, m)}</tr>"
        for m in _models(result)
    )
    classes = "".join(
        class_section(
            ClassComparison(float_model=result.float_model.report, artifact=a.evaluation.report),
            tuple(result.labels) if result.labels else None,
            a.evaluation.name,
        )
        for a in result.artifacts
    )
    title = f"edgekit evaluate: {html.escape(result.model)} v{result.version}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222;padding:0 1em}}
table{{border-collapse:collapse;font-size:14px}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}img{{max-width:100%}}
.note{{background:#f5f5f0;padding:8px 12px;border-left:4px solid #aaa}}</style></head><body>
<h1>{title}</h1>
<p>{result.samples} labelled samples ({html.escape(result.kind)} inputs); the float model and each
artifact of the bundle on the same inputs. Accuracy, macro-F1 and accuracy under corruption in %,
expected calibration error (ECE) in points; the robustness drop is float's mean accuracy under the
corruptions minus the artifact's, and the corruption error ratio is the artifact's summed errors
over float's (1.00: equally robust).</p>
<table><tr><th>model</th><th>accuracy</th><th>macro-F1</th><th>ECE</th><th>under corruption</th>
<th>agreement with float</th><th>robustness drop</th><th>error ratio</th></tr>{rows}</table>
<p class="note">Adversarial examples: {html.escape(result.attack)}. They are crafted on the float model
and transferred: attacks crafted on a quantized graph follow its rounded, near-zero gradients and
overstate its robustness (gradient masking), so transfer from float is the honest measure.</p>
{figures}
{classes}
</body></html>
"""


def _versus(result: Evaluation, model: ModelEvaluation) -> str:
    found = next((a for a in result.artifacts if a.evaluation is model), None)
    if found is None:
        return "<td>-</td><td>-</td><td>-</td>"
    return (
        f"<td>{found.agreement:.2f}</td><td>{found.robustness_drop:+.2f}</td><td>{found.mce_ratio:.2f}</td>"
    )


def _figures(plt: Any, result: Evaluation, x: np.ndarray, maps: dict[str, np.ndarray]) -> str:
    parts = [
        "<h2>Per-class F1</h2>", _f1_bars(plt, result),
        "<h2>Confusion matrices</h2>", _confusions(plt, result),
        "<h2>Calibration: reliability diagrams</h2>", _reliability(plt, result),
        "<h2>Accuracy under common corruptions</h2>", _corruption_curves(plt, result),
    ]  # fmt: skip
    if result.float_model.robustness.adversarial:
        parts += ["<h2>Accuracy under attack (transferred from float)</h2>", _attack_curves(plt, result)]
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        parts += ["<h2>Where float and artifact disagree</h2>", _disagreements(plt, result, x)]
    if "float" in maps:
        parts += [f"<h2>Explanations</h2><p>{html.escape(result.explanation)}.</p>", _agreement_table(result)]
        draw = _saliency if x.ndim == 4 else _time_maps if x.ndim == 3 else None
        parts.append(draw(plt, result, x, maps) if draw else _attribution_bars(plt, maps))
    return "\n".join(parts)


def _agreement_table(result: Evaluation) -> str:
    rows = []
    for artifact in result.artifacts:
        found = artifact.attribution
        if found is None:
            continue
        overlap = "-" if found.top_overlap is None else f"{found.top_overlap:.2f}"
        worst = min(found.per_class.items(), key=lambda item: item[1])
        moved = ", ".join(f"feature {i} ({change:.3f})" for i, change in found.moved[:3]) or "-"
        rows.append(
            f"<tr><td>{html.escape(artifact.evaluation.name)}</td><td>{found.rank_correlation:.3f}</td>"
            f"<td>{overlap}</td><td>{html.escape(worst[0])} ({worst[1]:.3f})</td><td>{moved}</td></tr>"
        )
    return (
        "<p>Agreement of each artifact's attributions with the float model's, on the same samples: "
        "rank correlation (1: the same order of importance) and, for images, the overlap of the top 10% "
        "of pixels.</p><table><tr><th>artifact</th><th>rank correlation</th><th>top-10% overlap</th>"
        f"<th>least agreeing class</th><th>moved most</th></tr>{''.join(rows)}</table>"
    )


def _saliency(plt: Any, result: Evaluation, x: np.ndarray, maps: dict[str, np.ndarray]) -> str:
    shown = min(6, len(result.explained))
    columns = ["input", *maps]
    figure, axes = plt.subplots(shown, len(columns), figsize=(1.6 * len(columns), 1.6 * shown), squeeze=False)
    for row, index in enumerate(result.explained[:shown]):
        image = x[index]
        axes[row][0].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        for column, name in enumerate(maps, start=1):
            axes[row][column].imshow(maps[name][row], cmap="inferno")
        for column, name in enumerate(columns):
            axes[row][column].axis("off")
            if row == 0:
                axes[row][column].set_title(name, fontsize=7)
    return png_img(figure, "saliency maps")


def _time_maps(plt: Any, result: Evaluation, x: np.ndarray, maps: dict[str, np.ndarray]) -> str:
    """Per explained sequence: its channels over time, then each model's map (channels by time)."""
    shown = min(4, len(result.explained))
    columns = ["input", *maps]
    figure, axes = plt.subplots(shown, len(columns), figsize=(2.4 * len(columns), 1.4 * shown), squeeze=False)
    for row, index in enumerate(result.explained[:shown]):
        axes[row][0].plot(x[index], linewidth=0.8)
        for column, name in enumerate(maps, start=1):
            axes[row][column].imshow(maps[name][row].T, cmap="inferno", aspect="auto")
        for column, name in enumerate(columns):
            axes[row][column].set_xticks([])
            axes[row][column].set_yticks([])
            if row == 0:
                axes[row][column].set_title(name, fontsize=7)
    axes[-1][0].set_xlabel("time", fontsize=7)
    return png_img(figure, "attributions over time and channels")


def _attribution_bars(plt: Any, maps: dict[str, np.ndarray]) -> str:
    figure, axes = plt.subplots(figsize=(9, 3))
    width = 0.8 / len(maps)
    for i, (name, values) in enumerate(maps.items()):
        mean = np.abs(values).mean(axis=0)
        axes.bar(np.arange(len(mean)) + i * width, mean, width, label=name)
    axes.set_xlabel("feature")
    axes.set_ylabel("mean |SHAP value|")
    axes.legend(fontsize=8)
    return png_img(figure, "feature attributions")


def _names(result: Evaluation, count: int) -> list[str]:
    return (
        list(result.labels)
        if result.labels and len(result.labels) == count
        else [str(i) for i in range(count)]
    )


def _f1_bars(plt: Any, result: Evaluation) -> str:
    models = _models(result)
    count = len(models[0].report.classes)
    figure, axes = plt.subplots(figsize=(9, 3))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        axes.bar(
            np.arange(count) + i * width, [100 * c.f1 for c in model.report.classes], width, label=model.name
        )
    axes.set_xticks(np.arange(count) + 0.4 - width / 2, _names(result, count))
    axes.set_ylabel("F1 (%)")
    axes.set_ylim(0, 118)
    axes.legend(fontsize=8, ncol=len(models), loc="upper center")
    return png_img(figure, "per-class F1")


def _confusions(plt: Any, result: Evaluation) -> str:
    models = _models(result)
    figure, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        ax.imshow(np.asarray(model.confusion), cmap="Blues")
        ax.set_title(model.name, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    return png_img(figure, "confusion matrices")


def _reliability(plt: Any, result: Evaluation) -> str:
    figure, axes = plt.subplots(figsize=(4.5, 4))
    axes.plot([0, 1], [0, 1], color="#999", linestyle="--", label="perfect")
    for model in _models(result):
        used = [b for b in model.reliability if b.count]
        axes.plot([b.confidence for b in used], [b.accuracy for b in used], marker="o",
                  label=f"{model.name} (ECE {model.ece:.1f})")
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.legend(fontsize=8)
    return png_img(figure, "reliability diagrams")


def _corruption_curves(plt: Any, result: Evaluation) -> str:
    names = list(result.float_model.robustness.corruptions)
    figure, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for model in _models(result):
            ax.plot(result.severities, model.robustness.corruptions[name], marker="o", label=model.name)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("severity")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    return png_img(figure, "accuracy under corruption")


def _attack_curves(plt: Any, result: Evaluation) -> str:
    attacks = list(result.float_model.robustness.adversarial or {})
    figure, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3), squeeze=False)
    for ax, kind in zip(axes[0], attacks, strict=True):
        for model in _models(result):
            ax.plot(result.epsilons, (model.robustness.adversarial or {})[kind], marker="o", label=model.name)
        ax.set_title(kind.upper(), fontsize=9)
        ax.set_xlabel("ε (fraction of the input range)")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    return png_img(figure, "accuracy under attack")


def _disagreements(plt: Any, result: Evaluation, x: np.ndarray) -> str:
    parts = []
    count = len(result.float_model.report.classes)
    names = _names(result, count)
    for artifact in result.artifacts:
        shown = artifact.disagreements[:THUMBNAILS]
        if not shown:
            parts.append(
                f"<p>{html.escape(artifact.evaluation.name)}: float and artifact agree on every sample.</p>"
            )
            continue
        figure, axes = plt.subplots(1, len(shown), figsize=(1.3 * len(shown), 1.6), squeeze=False)
        for ax, index in zip(axes[0], shown, strict=True):
            image = x[index]
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
            ax.set_title(f"#{index}", fontsize=7)
            ax.axis("off")
        parts.append(
            f"<p>{html.escape(artifact.evaluation.name)}: {len(artifact.disagreements)} of {result.samples} "
            f"samples (first {len(shown)}; class names: {', '.join(names)}).</p>"
        )
        parts.append(png_img(figure, f"disagreements {artifact.evaluation.name}"))
    return "\n".join(parts)


def _text_sections(
    result: Evaluation, texts: list[str], maps: dict[str, np.ndarray], tokens: list[list[str]] | None
) -> str:
    parts = ["<h2>Where float and artifact disagree</h2>"]
    for artifact in result.artifacts:
        shown = artifact.disagreements[:THUMBNAILS]
        items = "".join(f"<li>#{i}: {html.escape(texts[i])}</li>" for i in shown)
        parts.append(f"<p>{html.escape(artifact.evaluation.name)}: {len(artifact.disagreements)} of "
                     f"{result.samples} texts.</p><ul>{items}</ul>")
    if "float" in maps and tokens is not None:
        how = html.escape(result.explanation)
        shading = "darker: the token matters more to the predicted class"
        parts += [f"<h2>Explanations</h2><p>{how}; {shading}.</p>", _agreement_table(result), "<table>"]
        for row, index in enumerate(result.explained[:8]):
            parts.append(f"<tr><th colspan=2>#{index}: {html.escape(texts[index])}</th></tr>")
            for name, values in maps.items():
                parts.append(
                    f"<tr><td>{html.escape(name)}</td><td>{_shaded(tokens[row], values[row])}</td></tr>"
                )
        parts.append("</table>")
    return "\n".join(parts)


def _shaded(tokens: list[str], weights: np.ndarray) -> str:
    real = np.isfinite(weights)
    top = float(np.nanmax(np.abs(weights))) if real.any() else 0.0
    spans = []
    for token, weight, shown in zip(tokens, weights, real, strict=True):
        if not shown:
            continue
        alpha = abs(float(weight)) / top if top > 0 else 0.0
        spans.append(f'<span style="background:rgba(214,39,40,{alpha:.2f})">{html.escape(token)}</span>')
    return " ".join(spans)
