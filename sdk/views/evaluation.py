"""``edgekit evaluate``'s summary: a row per model, float first."""

from __future__ import annotations

from rich.table import Table

from edgekit.evaluate import Evaluation


def evaluation_table(result: Evaluation) -> Table:
    attacked = bool(result.float_model.robustness.adversarial)
    pgd = f", PGD at ε {result.epsilons[-1]:g}" if attacked else ""
    title = f"{result.model} v{result.version}: {result.samples} samples, {result.kind} inputs{pgd}"
    table = Table(
        title=title, caption="in %; ECE in points; drop: float's accuracy under corruption minus this one's"
    )
    for column in ("model", "accuracy", "macro-F1", "ECE", "corrupted", "drop", "agreement",
                   *(["PGD"] if attacked else [])):
        table.add_column(column, justify="left" if column == "model" else "right")
    rows = [(result.float_model, None), *((a.evaluation, a) for a in result.artifacts)]
    for model, compared in rows:
        attack = (model.robustness.adversarial or {}).get("pgd", [])
        table.add_row(
            model.name, f"{100 * model.report.accuracy:.2f}", f"{100 * model.report.macro.f1:.2f}",
            f"{model.ece:.2f}", f"{model.robustness.mean:.2f}",
            "-" if compared is None else f"{compared.robustness_drop:+.2f}",
            "-" if compared is None else f"{compared.agreement:.2f}",
            *([f"{attack[-1]:.2f}"] if attacked and attack else []),
        )
    return table
