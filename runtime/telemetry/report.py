"""Turning one closed window into the report that leaves the device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.core.manifest import ReferenceStats
from edgekit.core.telemetry import (
    SCHEMA_VERSION,
    Drift,
    GenerationStats,
    InputStats,
    ModelRef,
    Privacy,
    Report,
)
from edgekit.runtime.telemetry.stats import psi
from edgekit.runtime.telemetry.window import Window


@dataclass(frozen=True)
class ReportDraft:
    """A window's report before the outbox gives it its sequence number and drop count."""

    node: str
    epoch: int
    start: float
    end: float
    model: ModelRef
    counts: dict[str, np.ndarray]
    inputs: InputStats | None
    drift: Drift | None
    samples: int
    privacy: Privacy
    generation: GenerationStats | None = None

    def encode(self, seq: int, dropped: int) -> bytes:
        counts = self.counts
        bins = counts.get("bins")
        report = Report(
            v=SCHEMA_VERSION,
            kind="report",
            node=self.node,
            epoch=self.epoch,
            seq=seq,
            start=self.start,
            end=self.end,
            model=self.model,
            inferences=int(counts["inferences"][0]),
            calls=int(counts["calls"][0]),
            errors=int(counts["errors"][0]),
            latency_ms=tuple(int(c) for c in counts["latency"]),
            classes=_ints(counts.get("classes")),
            confidence=_ints(counts.get("confidence")),
            feature_bins=None if bins is None else tuple(tuple(int(c) for c in row) for row in bins),
            inputs=self.inputs,
            drift=self.drift,
            samples=self.samples,
            dropped=dropped,
            privacy=self.privacy,
            generation=self.generation,
        )
        return report.model_dump_json().encode()


def window_counts(window: Window) -> dict[str, np.ndarray]:
    counts = {
        "inferences": np.array([window.count], np.int64),
        "calls": np.array([window.calls], np.int64),
        "errors": np.array([window.errors], np.int64),
        "latency": window.latency.copy(),
    }
    if window.classes is not None and window.confidence is not None:
        counts["classes"] = window.classes.copy()
        counts["confidence"] = window.confidence.copy()
    if window.bins is not None:
        counts["bins"] = window.bins.copy()
    return counts


def input_stats(window: Window) -> InputStats | None:
    """Per-feature statistics; None when the inputs held NaN or infinity (no JSON number)."""
    n = window.count
    mean = window.feature_sum / n
    std = np.sqrt(np.maximum(window.feature_sq / n - mean**2, 0))

    def rounded(values: np.ndarray) -> tuple[float, ...]:
        return tuple(round(float(v), 6) for v in values)

    stats = (mean, std, window.feature_min, window.feature_max)
    if not all(np.isfinite(values).all() for values in stats):
        return None
    return InputStats(
        mean=rounded(mean), std=rounded(std), min=rounded(window.feature_min), max=rounded(window.feature_max)
    )


def _ints(values: np.ndarray | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


def drift_of(reference: ReferenceStats | None, counts: dict[str, np.ndarray]) -> Drift | None:
    """PSI of the window's (released) bins and classes against the bundle's reference."""
    if reference is None or "bins" not in counts:
        return None
    rows = zip(reference.expected, counts["bins"], strict=True)
    input_psi = max(psi(np.asarray(expected), row) for expected, row in rows)
    output_psi = None
    if reference.classes is not None and "classes" in counts:
        output_psi = psi(np.asarray(reference.classes), counts["classes"])
    score = max(input_psi, output_psi or 0.0)
    return Drift(
        input_psi=round(input_psi, 4),
        output_psi=None if output_psi is None else round(output_psi, 4),
        score=round(score, 4),
    )
