"""Per-class precision, recall, F1 and support, laid out as scikit-learn's
``classification_report`` (``zero_division=0``): one row per class, then accuracy and the
macro and weighted averages. A test compares it with scikit-learn on the same predictions."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgekit.core.errors import DataError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassScores(_Strict):
    precision: float
    recall: float
    f1: float
    support: int


class ClassReport(_Strict):
    """One model's predictions against the labels; ``classes[i]`` is class index i, or with
    ``names`` the entity type ``names[i]``."""

    classes: tuple[ClassScores, ...]
    accuracy: float
    macro: ClassScores
    weighted: ClassScores
    names: tuple[str, ...] | None = None
    """Span reports (``edgekit.core.spans``): the entity type of each row; else rows are class indices."""
    micro: ClassScores | None = None
    """Span reports: every span counted alike (for classes, micro-F1 is the accuracy)."""


class ClassComparison(_Strict):
    """The float model and the artifact on the same labelled evaluation data."""

    float_model: ClassReport
    artifact: ClassReport


def class_report(labels: np.ndarray, predicted: np.ndarray, classes: int) -> ClassReport:
    """Scores for classes ``0 .. classes - 1`` (every class, also one absent from both)."""
    labels, predicted = np.asarray(labels).ravel(), np.asarray(predicted).ravel()
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    precision = safe_divide(true_positive, predicted_count)
    recall = safe_divide(true_positive, support)
    f1 = safe_divide(2 * precision * recall, precision + recall)
    rows = tuple(
        ClassScores(precision=float(p), recall=float(r), f1=float(f), support=int(s))
        for p, r, f, s in zip(precision, recall, f1, support, strict=True)
    )
    total = int(support.sum())
    weights = support / total if total else np.zeros(classes)
    return ClassReport(
        classes=rows,
        accuracy=float(true_positive.sum() / total) if total else 0.0,
        macro=ClassScores(
            precision=float(precision.mean()), recall=float(recall.mean()), f1=float(f1.mean()), support=total
        ),
        weighted=ClassScores(
            precision=float(weights @ precision),
            recall=float(weights @ recall),
            f1=float(weights @ f1),
            support=total,
        ),
    )


def check_labels(float_out: np.ndarray, labels: np.ndarray) -> int:
    """The number of classes ``float_out`` scores; refuses labels that are no index of one."""
    classes = int(np.asarray(float_out).reshape(len(float_out), -1).shape[1])
    labels = np.asarray(labels).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"evaluation labels run from {labels.min()} to {labels.max()}, and the model has {classes} "
            "classes: labels are class indices 0 .. classes - 1"
        )
    return classes


def compare_classes(float_out: np.ndarray, artifact_out: np.ndarray, labels: np.ndarray) -> ClassComparison:
    classes = check_labels(float_out, labels)
    labels = np.asarray(labels).astype(np.int64)

    def report(out: np.ndarray) -> ClassReport:
        return class_report(labels, np.asarray(out).reshape(len(out), -1).argmax(axis=1), classes)

    return ClassComparison(float_model=report(float_out), artifact=report(artifact_out))


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0.0)


def metric_name(metric: str, level: str = "sample", spans: bool = False) -> str:
    """What the gate compared, in words: "top-1 accuracy", "span macro-F1", ..."""
    if metric == "agreement":
        return "top-1 agreement with float" + (" per position" if level == "position" else "")
    if level == "word":
        return "top-1 accuracy per word" if metric == "top1" else f"{'span' if spans else 'tag'} macro-F1"
    return "top-1 accuracy" if metric == "top1" else "macro-F1"
