"""``edgekit evaluate``: the float model and each artifact of a bundle, side by side, on the
same labelled data: per class, calibration, common corruptions and transferred attacks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgekit.core.classes import ClassReport, class_report
from edgekit.core.errors import DataError, InputError
from edgekit.evaluate import attack
from edgekit.evaluate.corrupt import SEVERITIES, suite
from edgekit.evaluate.explain import Agreement
from edgekit.evaluate.scores import ReliabilityBin, calibration, confusion

Predict = Callable[[Any], np.ndarray]
"""A model's class scores for inputs: an array, or a text model's feed by input name."""
Tick = Callable[[str], None]


@dataclass(frozen=True)
class EvaluateOptions:
    bundle: Path
    source: Path
    evaluation: Path
    report: Path | None = None
    max_samples: int | None = None
    quick: bool = False
    """Severities 1, 3 and 5, one ε (0.1), at most 200 samples."""
    allow_unsigned: bool = False

    @property
    def severities(self) -> tuple[int, ...]:
        return (1, 3, 5) if self.quick else SEVERITIES

    @property
    def epsilons(self) -> tuple[float, ...]:
        return (0.1,) if self.quick else attack.EPSILONS

    @property
    def samples(self) -> int | None:
        return min(self.max_samples or 200, 200) if self.quick else self.max_samples


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Robustness(_Strict):
    corruptions: dict[str, list[float]]
    """Top-1 accuracy (%) under each corruption, at each severity."""
    mean: float
    """Their mean: the accuracy the robustness gate compares."""
    adversarial: dict[str, list[float]] | None
    """Top-1 accuracy (%) on FGSM and PGD examples crafted on the float model, at each ε."""


class ModelEvaluation(_Strict):
    name: str
    report: ClassReport
    confusion: list[list[int]]
    ece: float
    """Expected calibration error, in points."""
    reliability: list[ReliabilityBin]
    robustness: Robustness


class ArtifactEvaluation(_Strict):
    evaluation: ModelEvaluation
    agreement: float
    """Top-1 agreement with the float model, %."""
    disagreements: list[int]
    """Indices of the samples where float and artifact predict different classes."""
    f1_drops: list[tuple[int, float]]
    """The classes whose F1 dropped most against float (class, points), worst first."""
    mce_ratio: float
    """Σ corruption errors of the artifact / Σ of the float model (1.0: equally robust)."""
    robustness_drop: float
    """Float's mean accuracy under corruption minus the artifact's, in points."""
    attribution: Agreement | None = None
    """How the artifact's attributions agree with the float model's."""


class Evaluation(_Strict):
    model: str
    version: int
    samples: int
    kind: str
    """"image", "tabular", "text", "sequence" or "other": which corruptions ran."""
    labels: list[str] | None
    severities: list[int]
    epsilons: list[float]
    attack: str
    """How the adversarial examples were made, or why there are none."""
    float_model: ModelEvaluation
    artifacts: list[ArtifactEvaluation]
    explained: list[int] = []
    """The samples whose attributions were made and compared."""
    explanation: str = ""
    """How they were made."""


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(100.0 * (np.asarray(scores).reshape(len(scores), -1).argmax(axis=1) == labels).mean())


def model_evaluation(
    name: str, predict: Predict, x: Any, y: np.ndarray, classes: int,
    corrupted: dict[str, list[Any]], adversarial: dict[str, list[np.ndarray]] | None, tick: Tick,
) -> tuple[ModelEvaluation, np.ndarray]:
    """One model on the clean data, every corrupted copy and every adversarial set."""
    scores = predict(x)
    predicted = scores.reshape(len(scores), -1).argmax(axis=1)
    ece, bins = calibration(scores, y)
    under = {}
    for corruption, copies in corrupted.items():
        under[corruption] = [accuracy(predict(copy), y) for copy in copies]
        tick(f"{name}: {corruption}")
    attacked = None
    if adversarial is not None:
        attacked = {
            kind: [accuracy(predict(copy), y) for copy in copies] for kind, copies in adversarial.items()
        }
        tick(f"{name}: adversarial")
    every = [value for values in under.values() for value in values]
    robustness = Robustness(
        corruptions=under, mean=float(np.mean(every)) if every else 0.0, adversarial=attacked
    )
    return ModelEvaluation(
        name=name, report=class_report(y, predicted, classes), confusion=confusion(y, predicted, classes),
        ece=ece, reliability=bins, robustness=robustness,
    ), scores


def compare(float_eval: ModelEvaluation, float_scores: np.ndarray, evaluation: ModelEvaluation,
            scores: np.ndarray) -> ArtifactEvaluation:
    float_top = float_scores.reshape(len(float_scores), -1).argmax(axis=1)
    top = scores.reshape(len(scores), -1).argmax(axis=1)
    drops = [(i, 100 * (f.f1 - a.f1)) for i, (f, a) in
             enumerate(zip(float_eval.report.classes, evaluation.report.classes, strict=True))]  # fmt: skip
    drops.sort(key=lambda item: -item[1])

    def errors(model: ModelEvaluation) -> float:
        return sum(100 - value for values in model.robustness.corruptions.values() for value in values)

    return ArtifactEvaluation(
        evaluation=evaluation, agreement=float(100 * (float_top == top).mean()),
        disagreements=np.flatnonzero(float_top != top).tolist(), f1_drops=drops[:5],
        mce_ratio=errors(evaluation) / max(errors(float_eval), 1e-9),
        robustness_drop=float_eval.robustness.mean - evaluation.robustness.mean,
    )


def corrupted_copies(x: np.ndarray, severities: tuple[int, ...]) -> tuple[str, dict[str, list[np.ndarray]]]:
    kind, corruptions = suite(x)
    return kind, {name: [apply(x, s) for s in severities] for name, apply in corruptions.items()}


def check_labels(y: np.ndarray | None, classes: int, where: Path) -> np.ndarray:
    if y is None:
        raise DataError(f"evaluation data {where}: no labels; save them as y (class indices) next to x")
    labels = np.asarray(y).astype(np.int64).ravel()
    if labels.min() < 0 or labels.max() >= classes:
        raise DataError(
            f"evaluation data {where}: labels run from {labels.min()} to {labels.max()}, and the model "
            f"has {classes} classes; labels are class indices 0 .. {classes - 1}"
        )
    return labels


def single_input(names: list[str]) -> str:
    if len(names) != 1:
        raise InputError(
            f"edgekit evaluate takes single-input classifiers for now; this model takes {len(names)} "
            f"inputs ({', '.join(names)})"
        )
    return names[0]
