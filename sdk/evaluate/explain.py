"""Attributions for the float model and each artifact, made the same way, and how well they agree.

- **Images.** Occlusion runs on every model, because an artifact has no gradients. Each
  patch is grayed to the image's mean, and the drop in the predicted class's probability is
  the patch's weight. Float and artifact are then compared: the Spearman rank correlation
  of their maps, and the overlap (intersection over union) of their top 10% of pixels.
  Where the source is a Keras model, integrated gradients of the float model (TensorFlow
  gradients, 32 steps from a black image) are shown beside them, for reference.
- **Tabular rows.** SHAP's permutation explainer, with an independent masker over the
  evaluation rows, runs on each model's predict function. The features whose attribution
  moved most are listed.
- **Sequences** (time, channels: a sensor window). Occlusion over time windows and channels:
  each eighth of the window of each channel is set to that channel's mean, and the drop in
  the predicted class's probability is its weight.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgekit.evaluate.corrupt import channels_first
from edgekit.evaluate.scores import probabilities

Predict = Callable[[Any], np.ndarray]
EXPLAINED = 12
"""Samples explained per model: attributions cost one call per patch or permutation."""


class Agreement(BaseModel):
    """How one artifact's attributions agree with the float model's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    rank_correlation: float
    """Spearman's rank correlation of the maps (1: the same order of importance), mean over samples."""
    top_overlap: float | None
    """Images: intersection over union of the top 10% of pixels, mean over samples."""
    per_class: dict[str, float]
    """The rank correlation, mean over the explained samples of each true class."""
    moved: list[tuple[int, float]]
    """Tabular: the features whose mean |attribution| moved most (feature, change), worst first."""


def occlusion(predict: Predict, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(samples, height, width) maps: how much graying each patch lowers the class's probability."""
    height, width = x.shape[1:3]
    patch = max(1, min(height, width) // 4)
    base = probabilities(predict(x))[np.arange(len(x)), classes]
    maps = np.zeros((len(x), height, width))
    fill = x.mean(axis=(1, 2, 3), keepdims=True)
    for top in range(0, height, patch):
        for left in range(0, width, patch):
            grayed = x.copy()
            grayed[:, top : top + patch, left : left + patch, :] = fill[:, 0, 0, :][:, None, None, :]
            drop = base - probabilities(predict(grayed))[np.arange(len(x)), classes]
            maps[:, top : top + patch, left : left + patch] = drop[:, None, None]
    return maps


def sequence_occlusion(predict: Predict, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(samples, time, channels) maps: how much flattening each time window of each channel
    to the channel's mean lowers the class's probability."""
    steps, channels = x.shape[1:3]
    window = max(1, steps // 8)
    base = probabilities(predict(x))[np.arange(len(x)), classes]
    maps = np.zeros((len(x), steps, channels))
    means = x.mean(axis=1)
    for start in range(0, steps, window):
        for channel in range(channels):
            flattened = x.copy()
            flattened[:, start : start + window, channel] = means[:, None, channel]
            drop = base - probabilities(predict(flattened))[np.arange(len(x)), classes]
            maps[:, start : start + window, channel] = drop[:, None]
    return maps


def integrated_gradients(
    model: Any, x: np.ndarray, classes: np.ndarray, output: int = 0, steps: int = 32
) -> np.ndarray:
    """Sundararajan et al. (2017) from a black image: (samples, height, width), channels summed."""
    import tensorflow as tf

    baseline = np.full_like(x, x.min())
    total = np.zeros_like(x, dtype=np.float64)
    for alpha in (np.arange(steps) + 0.5) / steps:
        point = tf.convert_to_tensor(baseline + alpha * (x - baseline))
        with tf.GradientTape() as tape:
            tape.watch(point)
            scores = model(point, training=False)
            if isinstance(scores, (list, tuple)):
                scores = scores[output]
            picked = tf.gather(scores, classes, axis=1, batch_dims=1)
        total += np.asarray(tape.gradient(picked, point))
    return (total / steps * (x - baseline)).sum(axis=-1)


def shap_values(predict: Predict, x: np.ndarray, background: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(samples, features): SHAP's permutation explainer on ``predict``'s probabilities."""
    import shap

    masker = shap.maskers.Independent(background, max_samples=min(len(background), 50))

    def chosen(rows: np.ndarray) -> np.ndarray:
        return probabilities(predict(rows.astype(x.dtype)))

    explained = shap.PermutationExplainer(chosen, masker, seed=0)(
        x, max_evals=2 * x.shape[1] + 1, silent=True
    )
    values = np.asarray(explained.values)  # (samples, features, classes)
    return values[np.arange(len(x)), :, classes]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two maps, flattened, ties ranked by their mean rank (as scipy does),
    over the places both define (NaN: a text's padding); 0 where either map is constant."""
    both = np.isfinite(a.ravel()) & np.isfinite(b.ravel())
    ranks = [_average_ranks(m.ravel()[both]) for m in (a, b)]
    if ranks[0].std() == 0 or ranks[1].std() == 0:
        return 0.0
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2)[inverse]


def top_overlap(a: np.ndarray, b: np.ndarray, share: float = 0.1) -> float:
    count = max(1, int(round(a.size * share)))
    top_a = set(np.argsort(a.ravel())[-count:].tolist())
    top_b = set(np.argsort(b.ravel())[-count:].tolist())
    return len(top_a & top_b) / len(top_a | top_b)


def agreement(
    method: str, float_maps: np.ndarray, maps: np.ndarray, labels: np.ndarray, names: list[str], kind: str
) -> Agreement:
    rhos = np.array([rank_correlation(f, m) for f, m in zip(float_maps, maps, strict=True)])
    per_class = {names[int(c)]: float(rhos[labels == c].mean()) for c in np.unique(labels)}
    overlap = None
    if kind == "image":
        overlap = float(np.mean([top_overlap(f, m) for f, m in zip(float_maps, maps, strict=True)]))
    moved: list[tuple[int, float]] = []
    if kind == "tabular":
        change = np.abs(np.abs(maps).mean(axis=0) - np.abs(float_maps).mean(axis=0))
        moved = [(int(i), float(change[i])) for i in np.argsort(change)[::-1][:5]]
    return Agreement(method=method, rank_correlation=float(rhos.mean()), top_overlap=overlap,
                     per_class=per_class, moved=moved)


def pick(labels: np.ndarray, count: int = EXPLAINED) -> np.ndarray:
    """Up to ``count`` sample indices, spread over the classes (round robin, first of each)."""
    chosen: list[int] = []
    pools = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    while len(chosen) < min(count, len(labels)):
        for pool in pools:
            if pool and len(chosen) < count:
                chosen.append(int(pool.pop(0)))
    return np.array(sorted(chosen))


class Explainer:
    """Explains the float model once, then each artifact the same way on the same samples
    (each explained for the class the float model predicts), keeping the maps for the report."""

    def __init__(self, kind: str, x: Any, labels: np.ndarray, float_scores: np.ndarray,
                 names: list[str], encoder: Any = None) -> None:
        self.kind, self.names, self.encoder = kind, names, encoder
        explained = ("image", "tabular", "text", "sequence")
        self.indices = pick(labels) if kind in explained else np.array([], np.int64)
        if isinstance(x, dict):
            self.x: Any = {name: value[self.indices] for name, value in x.items()}
        else:
            self.x, self.background = x[self.indices], x[:100]
        self.labels = labels[self.indices]
        self.classes = np.asarray(float_scores)[self.indices].reshape(len(self.indices), -1).argmax(axis=1)
        self.maps: dict[str, np.ndarray] = {}
        self.tokens: list[list[str]] | None = None
        self.how = {"image": "occlusion on every model (patches grayed to the image mean)",
                    "tabular": "SHAP's permutation explainer on every model's predict function",
                    "text": "token occlusion on every model (each real token masked out in turn)",
                    "sequence": "occlusion over time windows and channels on every model (each eighth of "
                                "each channel set to its mean)"}.get(
            kind, "none: attributions are made for image, tabular, text and sequence inputs")

    def _attribute(self, predict: Predict) -> np.ndarray:
        if self.kind == "text":
            from edgekit.evaluate.text import token_occlusion

            return token_occlusion(predict, self.x, self.classes, self.encoder)
        if self.kind == "image" and channels_first(self.x):
            nhwc = self.x.transpose(0, 2, 3, 1)
            return occlusion(lambda batch: predict(batch.transpose(0, 3, 1, 2)), nhwc, self.classes)
        if self.kind == "image":
            return occlusion(predict, self.x, self.classes)
        if self.kind == "sequence":
            return sequence_occlusion(predict, self.x, self.classes)
        return shap_values(predict, self.x, self.background, self.classes)

    def explain_float(self, predict: Predict, keras_model: Any, output: int) -> None:
        if not len(self.indices):
            return
        if self.kind == "tabular" and importlib.util.find_spec("shap") is None:
            self.how = "none: tabular attributions need SHAP (pip install 'edgekit[evaluate]')"
            return
        self.maps["float"] = self._attribute(predict)
        if self.kind == "text":
            self.tokens = [self.encoder.token_strings(row) for row in self.x[self.encoder.inputs.ids]]
        gradients = self.kind == "image" and keras_model is not None and not channels_first(self.x)
        if gradients and np.issubdtype(self.x.dtype, np.floating):
            self.maps["float, integrated gradients"] = integrated_gradients(
                keras_model, self.x, self.classes, output
            )
            self.how += "; integrated gradients of the float model (Keras source) shown for reference"

    def explain(self, name: str, predict: Predict) -> Agreement | None:
        if "float" not in self.maps:
            return None
        self.maps[name] = self._attribute(predict)
        method = {"image": "occlusion", "tabular": "SHAP permutation", "text": "token occlusion",
                  "sequence": "time-window occlusion"}[self.kind]
        return agreement(method, self.maps["float"], self.maps[name], self.labels, self.names, self.kind)
