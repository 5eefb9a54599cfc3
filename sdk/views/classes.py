"""The per-class report as a table: float model → artifact, per class and on average."""

from __future__ import annotations

from rich import box
from rich.table import Table

from edgekit.classes import ClassComparison, ClassScores


def class_table(comparison: ClassComparison, labels: tuple[str, ...] | None, precision: str) -> Table:
    """Rows as scikit-learn's classification_report; each cell ``float → artifact``."""
    table = Table(
        box=box.SIMPLE, title=f"per class: float → {precision}", title_justify="left", pad_edge=False
    )
    table.add_column("class", no_wrap=True)
    for name in ("precision", "recall", "F1"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("support", justify="right")
    float_rows, artifact_rows = comparison.float_model.classes, comparison.artifact.classes
    for index, (before, after) in enumerate(zip(float_rows, artifact_rows, strict=True)):
        name = labels[index] if labels and index < len(labels) else str(index)
        table.add_row(name, *_cells(before, after))
    table.add_section()
    table.add_row("macro avg", *_cells(comparison.float_model.macro, comparison.artifact.macro))
    table.add_row("weighted avg", *_cells(comparison.float_model.weighted, comparison.artifact.weighted))
    accuracy = f"{comparison.float_model.accuracy:.3f} → {comparison.artifact.accuracy:.3f}"
    table.add_row("accuracy", "", "", accuracy, str(comparison.float_model.macro.support))
    return table


def _cells(before: ClassScores, after: ClassScores) -> list[str]:
    return [
        *(f"{getattr(before, key):.3f} → {getattr(after, key):.3f}" for key in ("precision", "recall", "f1")),
        str(before.support),
    ]
