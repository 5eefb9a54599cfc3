"""The per-class report as a table: float model → artifact, per class and on average."""

from __future__ import annotations

from rich import box
from rich.table import Table

from edgekit.core.classes import ClassComparison, ClassScores


def class_table(comparison: ClassComparison, labels: tuple[str, ...] | None, precision: str) -> Table:
    """Rows as scikit-learn's classification_report; each cell ``float → artifact``."""
    spans = comparison.float_model.names is not None
    title = f"per {'entity span' if spans else 'class'}: float → {precision}"
    table = Table(box=box.SIMPLE, title=title, title_justify="left", pad_edge=False)
    table.add_column("entity" if spans else "class", no_wrap=True)
    for name in ("precision", "recall", "F1"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("support", justify="right")
    float_rows, artifact_rows = comparison.float_model.classes, comparison.artifact.classes
    for name, before, after in zip(row_names(comparison, labels), float_rows, artifact_rows, strict=True):
        table.add_row(name, *_cells(before, after))
    table.add_section()
    if comparison.float_model.micro and comparison.artifact.micro:
        table.add_row("micro avg", *_cells(comparison.float_model.micro, comparison.artifact.micro))
    table.add_row("macro avg", *_cells(comparison.float_model.macro, comparison.artifact.macro))
    table.add_row("weighted avg", *_cells(comparison.float_model.weighted, comparison.artifact.weighted))
    accuracy = f"{comparison.float_model.accuracy:.3f} → {comparison.artifact.accuracy:.3f}"
    words = "per word" if spans else str(comparison.float_model.macro.support)  # spans count no words
    table.add_row("accuracy", "", "", accuracy, words)
    return table


def row_names(comparison: ClassComparison, labels: tuple[str, ...] | None) -> list[str]:
    """Each row's name: the entity type of a span report, else the class label or index."""
    if comparison.float_model.names is not None:
        return list(comparison.float_model.names)
    count = len(comparison.float_model.classes)
    return [labels[i] if labels and i < len(labels) else str(i) for i in range(count)]


def _cells(before: ClassScores, after: ClassScores) -> list[str]:
    return [
        *(f"{getattr(before, key):.3f} → {getattr(after, key):.3f}" for key in ("precision", "recall", "f1")),
        str(before.support),
    ]
