"""Per-window aggregation: fixed-size buffers and counters, allocated once.

``record`` runs inside ``Model.predict``: it copies the call's inputs, outputs and latency
into preallocated row buffers and nothing more. Every ``ROWS`` rows (and when the window
ends) ``digest`` folds the buffer into the histograms with whole-array numpy operations,
so the per-call cost is a few copies, and memory stays flat however many calls come.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from edgekit.core.manifest import ReferenceStats
from edgekit.core.telemetry import CONFIDENCE_EDGES, LATENCY_EDGES_MS
from edgekit.runtime.telemetry.stats import BINS, FeaturePlan, probabilities

ROWS = 256


class Capture:
    """Which inputs to keep for retraining: none, low-confidence[:threshold], random[:rate]."""

    def __init__(self, spec: str, seed: int | None = None) -> None:
        mode, _, value = spec.partition(":")
        if mode not in ("none", "low-confidence", "random"):
            raise ValueError(f"capture {spec!r}: use none, low-confidence[:0.5] or random[:0.01]")
        self.mode = mode
        try:
            self.value = float(value) if value else (0.5 if mode == "low-confidence" else 0.01)
        except ValueError as exc:
            raise ValueError(f"capture {spec!r}: {value!r} is not a number") from exc
        if not 0 < self.value <= 1:
            raise ValueError(f"capture {spec!r}: the threshold or rate must be in (0, 1]")
        self._rng = np.random.default_rng(seed)

    def choose(self, confidence: np.ndarray | None, n: int) -> np.ndarray:
        if self.mode == "low-confidence":
            if confidence is None:
                return np.zeros(n, bool)
            return confidence < self.value
        return self._rng.random(n) < self.value


class Window:
    def __init__(
        self,
        sample_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        classes: int | None,
        output_kind: str,
        plan: FeaturePlan,
        reference: ReferenceStats | None,
        capture: Capture,
        capture_slots: int,
        deidentify: Callable[[str], str] | None = None,
    ) -> None:
        self.plan = plan
        self.output_kind = output_kind
        self.capture = capture
        self._deidentify = deidentify
        """A text model's: how each captured text is de-identified; None for other models."""
        self.sample_text: list[str] = []
        """Captured texts of a text model, de-identified as they are taken."""
        self._texts: list[str] = []
        features = plan.count
        self.latency = np.zeros(len(LATENCY_EDGES_MS) + 1, np.int64)
        self.classes = np.zeros(classes, np.int64) if classes else None
        self.confidence = np.zeros(len(CONFIDENCE_EDGES) + 1, np.int64) if classes else None
        self.feature_sum = np.zeros(features)
        self.feature_sq = np.zeros(features)
        self.feature_min = np.full(features, np.inf)
        self.feature_max = np.full(features, -np.inf)
        self.edges = np.asarray(reference.edges) if reference is not None else None
        self.bins = np.zeros((features, BINS), np.int64) if reference is not None else None
        self._offsets = np.arange(features) * BINS
        self.sample_x = np.zeros((capture_slots, *sample_shape), np.float32)
        self.sample_pred = np.zeros(capture_slots, np.int64)
        self.sample_conf = np.zeros(capture_slots, np.float32)
        self._x = np.zeros((ROWS, *sample_shape), np.float32)
        # outputs are only counted for classifiers: others (a tagger's scores per token, any
        # output with a dynamic dim) are not copied at all
        self._out = np.zeros((ROWS, *output_shape) if classes else (ROWS, 0), np.float32)
        self._latency = np.zeros(ROWS)
        self._rows = 0
        self._edges_ms = np.asarray(LATENCY_EDGES_MS)
        self.reset()

    def reset(self) -> None:
        self.start = time.time()
        self._rows = 0
        self.count = 0
        self.calls = 0
        self.errors = 0
        self.samples = 0
        self.sample_text, self._texts = [], []
        self.latency[:] = 0
        for array in (self.classes, self.confidence, self.bins):
            if array is not None:
                array[:] = 0
        self.feature_sum[:] = 0
        self.feature_sq[:] = 0
        self.feature_min[:] = np.inf
        self.feature_max[:] = -np.inf

    def record(
        self, x: np.ndarray, outputs: np.ndarray, seconds: float, texts: Sequence[str] | None = None
    ) -> None:
        """The hot path: copy one call's rows (and, when capturing, its texts) into the buffer."""
        n = len(x)
        self.calls += 1
        if self._rows + n > ROWS:
            self.digest()
            if n > ROWS:
                self._fold(x, outputs, np.full(n, seconds), list(texts) if texts is not None else [""] * n)
                return
        if self._deidentify is not None and self.capture.mode != "none":
            self._texts.extend(texts if texts is not None else [""] * n)  # a feed of tokens: no text
        end = self._rows + n
        self._x[self._rows : end] = x
        if self.classes is not None:
            self._out[self._rows : end] = outputs
        self._latency[self._rows : end] = seconds
        self._rows = end

    def digest(self) -> None:
        """Fold the buffered rows into the counters."""
        rows, self._rows = self._rows, 0
        texts, self._texts = self._texts, []
        if rows:
            self._fold(self._x[:rows], self._out[:rows], self._latency[:rows], texts)

    def _fold(self, x: np.ndarray, outputs: np.ndarray, seconds: np.ndarray, texts: list[str]) -> None:
        n = len(x)
        self.count += n
        self.latency += np.bincount(
            np.searchsorted(self._edges_ms, seconds * 1000.0, side="left"), minlength=len(self.latency)
        )
        confidence = predicted = None
        if self.classes is not None and self.confidence is not None:
            probs = probabilities(outputs.reshape(n, -1), self.output_kind)
            predicted = probs.argmax(axis=1)
            confidence = probs[np.arange(n), predicted]
            self.classes += np.bincount(predicted, minlength=len(self.classes))
            self.confidence += np.bincount(
                np.searchsorted(CONFIDENCE_EDGES, confidence, side="right"), minlength=len(self.confidence)
            )
        values = self.plan(x)
        self.feature_sum += values.sum(axis=0)
        self.feature_sq += np.square(values).sum(axis=0)
        np.minimum(self.feature_min, values.min(axis=0), out=self.feature_min)
        np.maximum(self.feature_max, values.max(axis=0), out=self.feature_max)
        if self.bins is not None and self.edges is not None:
            index = (values[:, :, None] >= self.edges[None, :, :]).sum(axis=2) + self._offsets
            self.bins += np.bincount(index.ravel(), minlength=self.bins.size).reshape(self.bins.shape)
        free = len(self.sample_x) - self.samples
        if free > 0 and self.capture.mode != "none":
            chosen = np.flatnonzero(self.capture.choose(confidence, n))[:free]
            if len(chosen):
                end = self.samples + len(chosen)
                self.sample_x[self.samples : end] = x[chosen]
                if predicted is not None and confidence is not None:
                    self.sample_pred[self.samples : end] = predicted[chosen]
                    self.sample_conf[self.samples : end] = confidence[chosen]
                if self._deidentify is not None and texts:
                    self.sample_text += [self._deidentify(texts[i]) for i in chosen]
                self.samples = end

    def sample_arrays(self) -> dict[str, np.ndarray]:
        """What a sample message carries: inputs, predicted class, confidence (and texts)."""
        arrays: dict[str, np.ndarray] = {
            "x": self.sample_x[: self.samples].copy(),
            "pred": self.sample_pred[: self.samples].copy(),
            "confidence": self.sample_conf[: self.samples].copy(),
        }
        if self.sample_text:
            arrays["text"] = np.array(self.sample_text, dtype=str)
        return arrays

    def record_error(self) -> None:
        self.calls += 1
        self.errors += 1
