"""A statistical test of the ε the report pipeline delivers, and of the test itself.

Neighbouring windows go through the device's own path (``Window.record`` → ``window_counts``
→ ``dp.release`` with the noise ``dp.mechanism`` builds, as ``Telemetry`` does) thousands of
times; ``edgekit.testing.dp_audit`` estimates ε from the two output distributions with a
confidence bound. The real mechanism must measure at most its configured ε; three broken
ones (sensitivity halved, noise drawn once per process, noise after k-suppression) must
measure more, so the test is seen to fail when privacy fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edgekit.core.manifest import ReferenceStats
from edgekit.runtime.telemetry import dp
from edgekit.runtime.telemetry.privacy import Noise, suppress
from edgekit.runtime.telemetry.report import window_counts
from edgekit.runtime.telemetry.stats import FeaturePlan
from edgekit.runtime.telemetry.window import Capture, Window
from edgekit.testing.dp_audit import measured_epsilon, sample

pytest.importorskip("opendp")

EPSILON = 1.0
K = 5
ALPHA = 1e-3
EDGES = tuple(round(0.1 * i, 1) for i in range(1, 10))
Counts = dict[str, np.ndarray]
Release = Callable[[Counts, Noise, "int | None"], np.ndarray]


def flat(counts: Counts) -> np.ndarray:
    return np.concatenate([value.ravel() for value in counts.values()])


def real(counts: Counts, noise: Noise, most: int | None) -> np.ndarray:
    return flat(dp.release(counts, noise, most, K).counts)


def suppressed_first(counts: Counts, noise: Noise, most: int | None) -> np.ndarray:
    """Broken on purpose: k-suppression before the noise."""
    counts = {name: value.copy() for name, value in dp.clip(counts, most).items()}
    for name, value in counts.items():
        if name not in dp.SCALARS:
            suppress(value, K)
    return flat({name: noise(value) for name, value in counts.items()})


class DrawnOnce(Noise):
    """Broken on purpose: one noise vector per process, added to every release."""

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        if not hasattr(self, "_drawn"):
            self._drawn = super().__call__(np.zeros_like(counts)) - 0
        return np.clip(counts + self._drawn, 0, None)


def regressor(calls: list[tuple[float, int]], errors: int = 0) -> Counts:
    """A model with one output value and no reference statistics: inferences, calls, errors
    and latency. Each (milliseconds, n) is one call of n inferences."""
    window = Window((2,), (1,), None, "values", FeaturePlan("values", None, 2), None, Capture("none"), 0)
    for ms, n in calls:
        window.record(np.zeros((n, 2), np.float32), np.zeros((n, 1), np.float32), ms / 1000)
    for _ in range(errors):
        window.record_error()
    window.digest()
    return window_counts(window)


def classifier(calls: list[tuple[float, int, float, float, int]], errors: int = 0) -> Counts:
    """A two-class model with reference bins for two input values: every histogram. Each
    (input value, class, confidence, milliseconds, n) is one call of n inferences."""
    reference = ReferenceStats(
        samples=100, features="values", channel_axis=None, edges=(EDGES, EDGES),
        expected=((0.1,) * 10,) * 2, outputs="probabilities", classes=(0.5, 0.5),
    )  # fmt: skip
    window = Window(
        (2,), (2,), 2, "probabilities", FeaturePlan("values", None, 2), reference, Capture("none"), 0
    )
    for value, label, confidence, ms, n in calls:
        probs = np.zeros((n, 2), np.float32)
        probs[:, label], probs[:, 1 - label] = confidence, 1 - confidence
        window.record(np.full((n, 2), value, np.float32), probs, ms / 1000)
    for _ in range(errors):
        window.record_error()
    window.digest()
    return window_counts(window)


def audit(
    x: Counts, y: Counts, runs: int, noise: Noise, release: Release = real, most: int | None = None
) -> Any:
    return measured_epsilon(
        sample(lambda: release(x, noise, most), runs),
        sample(lambda: release(y, noise, most), runs),
        flat(dp.clip(x, most)),
        flat(dp.clip(y, most)),
        ALPHA,
    )


# One more inference, as a call of its own, in a latency bucket that holds k - 1: the
# pair that moves every count the sensitivity allows, and that suppression before noise
# would betray.
SMALL_X = regressor([(0.3, K - 1), (3.0, 16)])
SMALL_Y = regressor([(0.3, K - 1), (3.0, 16), (0.3, 1)])
FAST_RUNS = 4000


def test_the_pair_moves_the_counts_by_the_full_sensitivity() -> None:
    assert np.abs(flat(SMALL_X) - flat(SMALL_Y)).sum() == dp.sensitivity(SMALL_X, None) == 3


def test_the_report_pipeline_keeps_its_epsilon() -> None:
    measured = audit(SMALL_X, SMALL_Y, FAST_RUNS, dp.mechanism(SMALL_X, EPSILON, None))
    assert measured.epsilon <= EPSILON, measured


def test_the_audit_catches_a_halved_sensitivity(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sensitivity = dp.sensitivity
    monkeypatch.setattr(dp, "sensitivity", lambda counts, most: max(real_sensitivity(counts, most) // 2, 1))
    measured = audit(SMALL_X, SMALL_Y, FAST_RUNS, dp.mechanism(SMALL_X, EPSILON, None))
    assert measured.epsilon > EPSILON, measured


def test_the_audit_catches_noise_drawn_once_per_process() -> None:
    noise = DrawnOnce(EPSILON, dp.sensitivity(SMALL_X, None))
    measured = audit(SMALL_X, SMALL_Y, FAST_RUNS // 4, noise)
    assert measured.epsilon > EPSILON, measured


def test_the_audit_catches_noise_added_after_k_suppression() -> None:
    measured = audit(SMALL_X, SMALL_Y, FAST_RUNS, dp.mechanism(SMALL_X, EPSILON, None), suppressed_first)
    assert measured.epsilon > EPSILON, measured


# Every histogram: latency, classes, confidence and two rows of feature bins.
RICH_X = classifier([(0.05, 0, 0.95, 0.3, K - 1), (0.55, 1, 0.65, 3.0, 16)])
RICH_Y = classifier([(0.05, 0, 0.95, 0.3, K - 1), (0.55, 1, 0.65, 3.0, 16), (0.05, 0, 0.95, 0.3, 1)])
# Two whole windows of one device, as far apart as dp_clip allows: all its inferences in
# one call and latency bucket, or all in another, with failed calls besides.
CLIP = 4
WINDOW_X = regressor([(0.3, 40)])
WINDOW_Y = regressor([(30.0, 40)], errors=39)
SLOW_RUNS = 20000


@pytest.mark.slow
@pytest.mark.parametrize("unit", ["inference", "window"])
def test_every_histogram_keeps_its_epsilon_and_a_halved_sensitivity_shows(
    unit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y, most = (RICH_X, RICH_Y, None) if unit == "inference" else (WINDOW_X, WINDOW_Y, CLIP)
    reach = np.abs(flat(dp.clip(x, most)) - flat(dp.clip(y, most))).sum()
    assert reach > dp.sensitivity(x, most) / 2  # so that half the noise shows
    assert audit(x, y, SLOW_RUNS, dp.mechanism(x, EPSILON, most), most=most).epsilon <= EPSILON
    real_sensitivity = dp.sensitivity
    monkeypatch.setattr(dp, "sensitivity", lambda counts, most: real_sensitivity(counts, most) // 2)
    assert audit(x, y, SLOW_RUNS, dp.mechanism(x, EPSILON, most), most=most).epsilon > EPSILON


@pytest.mark.slow
def test_the_rich_layout_catches_noise_after_suppression_and_reused_noise() -> None:
    noise = dp.mechanism(RICH_X, EPSILON, None)
    assert audit(RICH_X, RICH_Y, SLOW_RUNS, noise, suppressed_first).epsilon > EPSILON
    drawn_once = DrawnOnce(EPSILON, dp.sensitivity(RICH_X, None))
    assert audit(RICH_X, RICH_Y, SLOW_RUNS // 10, drawn_once).epsilon > EPSILON


def test_clipping_bounds_every_scalar_and_histogram() -> None:
    clipped = dp.clip(classifier([(0.85, 1, 0.55, 30.0, 1)] * 25, errors=30), CLIP)
    assert all(int(clipped[name][0]) <= CLIP for name in dp.SCALARS if name in clipped)
    for name, value in clipped.items():
        if name not in dp.SCALARS:
            assert (value.reshape(-1, value.shape[-1]).sum(axis=1) <= CLIP).all(), name
