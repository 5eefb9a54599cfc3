"""What one model's scores on labelled data say: the confusion matrix, and calibration
(expected calibration error and the reliability diagram's bins)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

BINS = 15
"""Confidence bins for the calibration error, as Guo et al. (2017) use."""


class ReliabilityBin(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Class probabilities: the scores renormalized if they already are (non-negative rows
    summing to 1, within the rounding of an int8 softmax), else their softmax (logits)."""
    scores = np.asarray(scores, np.float64).reshape(len(scores), -1)
    sums = scores.sum(axis=1, keepdims=True)
    if scores.size and scores.min() >= 0 and np.allclose(sums, 1.0, atol=0.05):
        return scores / sums
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> list[list[int]]:
    """Rows are the true class, columns the predicted one."""
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix.tolist()


def calibration(
    scores: np.ndarray, labels: np.ndarray, bins: int = BINS
) -> tuple[float, list[ReliabilityBin]]:
    """Expected calibration error (in points: 0 is perfect) and the reliability bins: the
    samples binned by their top confidence, each bin's mean confidence against its accuracy."""
    probs = probabilities(scores)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    found, error = [], 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high) if low > 0 else confidence <= high
        count = int(inside.sum())
        mean_confidence = float(confidence[inside].mean()) if count else 0.0
        accuracy = float(correct[inside].mean()) if count else 0.0
        error += count / max(len(labels), 1) * abs(mean_confidence - accuracy)
        found.append(ReliabilityBin(low=float(low), high=float(high), count=count,
                                    confidence=mean_confidence, accuracy=accuracy))
    return 100.0 * error, found
