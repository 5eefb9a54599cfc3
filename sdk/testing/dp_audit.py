"""Measure the ε a mechanism delivers from its outputs alone: a black-box audit in the
style of Google's DP stochastic tester and DP-Auditorium.

Run the mechanism many times on two neighbouring inputs ``x`` and ``y`` (count vectors
before noise). If it is ε-DP, every event S obeys P[M(x) ∈ S] <= e^ε P[M(y) ∈ S], both
ways. The events tried are thresholds on

- T(o) = Σ_i |o_i − y_i| − |o_i − x_i|, the log-likelihood ratio of independent Laplace
  noise up to its scale, so the most telling event for the intended mechanism, and
- each coordinate where x and y differ, which catches noise that does not change between
  runs (every run lands on the same value).

For each event the estimate is the log of the ratio of Clopper–Pearson bounds (lower over
upper), Bonferroni-corrected over all events, so a mechanism that keeps its ε shows a
measured ε above it with probability at most ``alpha``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

SELECT_ALPHA = 0.05
"""The confidence that chooses the event: rare events score low, so one lucky count cannot win."""


@dataclass(frozen=True)
class Audit:
    epsilon: float
    """The largest lower confidence bound of ln(P[M(x) ∈ S] / P[M(y) ∈ S]) over the events."""
    event: str
    runs: int


def sample(mechanism: Callable[[], np.ndarray], runs: int) -> np.ndarray:
    """(runs, d): the released vector of ``runs`` calls."""
    return np.stack([np.asarray(mechanism(), np.int64).ravel() for _ in range(runs)])


def measured_epsilon(
    out_x: np.ndarray, out_y: np.ndarray, x: np.ndarray, y: np.ndarray, alpha: float
) -> Audit:
    """The ε the outputs show, with confidence 1 − alpha; ``x`` and ``y`` are the inputs.

    The runs are split in two: the first half chooses the most telling event and direction,
    the second measures it, so only one event is tested and no correction for many is
    needed (DP-Auditorium's select-then-estimate)."""
    x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
    half_x, half_y = len(out_x) // 2, len(out_y) // 2

    def ratio(event: _Event, a: np.ndarray, b: np.ndarray, confidence: float) -> float:
        hits_a, hits_b = event.test(a, x, y), event.test(b, x, y)
        if event.swap:
            hits_a, hits_b = hits_b, hits_a
        return _log_ratio(hits_a, hits_b, confidence)

    events = list(_events(out_x[:half_x], out_y[:half_y], x, y))
    if not events:
        return Audit(0.0, "none", len(out_x))
    chosen = max(events, key=lambda event: ratio(event, out_x[:half_x], out_y[:half_y], SELECT_ALPHA))
    value = ratio(chosen, out_x[half_x:], out_y[half_y:], alpha)
    return Audit(max(value, 0.0), chosen.name + (" (y/x)" if chosen.swap else " (x/y)"), len(out_x))


@dataclass(frozen=True)
class _Event:
    """{T >= value}, {T <= value}, or {output == value} (a whole vector)."""

    kind: str
    value: Any
    swap: bool
    """Measure P[M(y) ∈ S] / P[M(x) ∈ S] instead."""

    @property
    def name(self) -> str:
        return "output == a commonest output" if self.kind == "==" else f"T {self.kind} {self.value}"

    def test(self, out: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.kind == "==":
            return np.asarray((out == self.value).all(axis=1))
        statistic = _statistic(out, x, y)
        return statistic >= self.value if self.kind == ">=" else statistic <= self.value


def _statistic(out: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.asarray((np.abs(out - y) - np.abs(out - x)).sum(axis=1))


def _events(out_x: np.ndarray, out_y: np.ndarray, x: np.ndarray, y: np.ndarray) -> Iterator[_Event]:
    seen = np.unique(np.concatenate((_statistic(out_x, x, y), _statistic(out_y, x, y))))
    modes = []
    for out in (out_x, out_y):
        values, counts = np.unique(out, axis=0, return_counts=True)
        modes.append(values[counts.argmax()])
    for swap in (False, True):
        for value in seen:
            yield _Event(">=", value, swap)
            yield _Event("<=", value, swap)
        for mode in modes:
            yield _Event("==", mode, swap)


def _log_ratio(hits_x: np.ndarray, hits_y: np.ndarray, alpha: float) -> float:
    """ln(lower bound of P_x / upper bound of P_y), each at confidence 1 - alpha."""
    hits, n, other, m = int(hits_x.sum()), len(hits_x), int(hits_y.sum()), len(hits_y)
    low = beta.ppf(alpha, hits, n - hits + 1) if hits else 0.0
    high = beta.ppf(1 - alpha, other + 1, m - other) if other < m else 1.0
    return float(np.log(low / high)) if low > 0 else 0.0
