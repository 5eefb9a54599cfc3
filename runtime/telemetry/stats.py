"""Input features, reference distributions and the population stability index.

The same ``feature_plan``/``features`` run at conversion time (to build the reference in
the manifest) and on the device (per window), so the two distributions compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.core.manifest import ReferenceStats

BINS = 10
MAX_VALUE_FEATURES = 32
MAX_CHANNELS = 16
PSI_EPS = 1e-4
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
"""The usual reading of PSI: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 significant."""


@dataclass(frozen=True)
class FeaturePlan:
    kind: str
    channel_axis: int | None
    count: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n, count) float64 features of a batch ``x``."""
        n = len(x)
        if self.kind == "values":
            return x.reshape(n, -1).astype(np.float64, copy=False)
        if self.kind == "channels":
            channels = self.count // 2
            if self.channel_axis == 0:
                first = x.reshape(n, channels, -1)
                return np.concatenate((first.mean(axis=2), first.std(axis=2)), axis=1)
            last = x.reshape(n, -1, channels)
            return np.concatenate((last.mean(axis=1), last.std(axis=1)), axis=1)
        flat = x.reshape(n, -1)
        return np.stack((flat.mean(axis=1), flat.std(axis=1)), axis=1)


def feature_plan(sample_shape: tuple[int, ...], layout: str | None) -> FeaturePlan:
    """Few enough features to histogram per call: the values of a small vector, per-channel
    mean and std of an image or signal, else the sample's mean and std."""
    size = int(np.prod(sample_shape))
    if len(sample_shape) == 1 and size <= MAX_VALUE_FEATURES:
        return FeaturePlan("values", None, size)
    if len(sample_shape) >= 2:
        axis = 0 if layout == "NCHW" else len(sample_shape) - 1
        if sample_shape[axis] <= MAX_CHANNELS:
            return FeaturePlan("channels", axis, 2 * sample_shape[axis])
    return FeaturePlan("global", None, 2)


def plan_for(reference: ReferenceStats) -> FeaturePlan:
    return FeaturePlan(reference.features, reference.channel_axis, len(reference.edges))


def output_kind(outputs: np.ndarray) -> str:
    """probabilities (rows in [0, 1] summing to 1), logits (other class scores) or values."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return "values"
    sums = outputs.sum(axis=1)
    if outputs.min() >= 0 and np.allclose(sums, 1.0, atol=1e-3):
        return "probabilities"
    return "logits"


def probabilities(outputs: np.ndarray, kind: str) -> np.ndarray:
    if kind == "probabilities":
        return outputs
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def reference_stats(x: np.ndarray, outputs: np.ndarray, layout: str | None) -> ReferenceStats:
    """The reference distributions of conversion data ``x`` and the model's ``outputs`` on it."""
    plan = feature_plan(tuple(x.shape[1:]), layout)
    values = plan(x.astype(np.float32, copy=False))
    quantiles = np.linspace(0, 1, BINS + 1)[1:-1]
    edges = np.quantile(values, quantiles, axis=0).T  # (features, BINS - 1)
    expected = bin_counts(values, edges) / len(values)
    kind = output_kind(outputs)
    classes = None
    if kind != "values":
        counts = np.bincount(outputs.argmax(axis=1), minlength=outputs.shape[1])
        classes = tuple(float(c) for c in counts / len(outputs))
    return ReferenceStats(
        samples=len(x),
        features=plan.kind,  # type: ignore[arg-type]
        channel_axis=plan.channel_axis,
        edges=tuple(tuple(float(e) for e in row) for row in edges),
        expected=tuple(tuple(float(f) for f in row) for row in expected),
        outputs=kind,  # type: ignore[arg-type]
        classes=classes,
    )


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(features, BINS) counts of ``values`` (n, features) in each feature's bins."""
    features = edges.shape[0]
    index = (values[:, :, None] >= edges[None, :, :]).sum(axis=2)
    flat = index + np.arange(features) * BINS
    return np.bincount(flat.ravel(), minlength=features * BINS).reshape(features, BINS)


def psi(expected: np.ndarray, counts: np.ndarray) -> float:
    """Population stability index of observed ``counts`` against ``expected`` fractions."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    actual = np.clip(counts / total, PSI_EPS, None)
    reference = np.clip(expected, PSI_EPS, None)
    return float(np.sum((actual - reference) * np.log(actual / reference)))
