"""A rollout's health rules: the canaries' telemetry against the control group's.

Canaries are the devices a document names, counted only while they report the new version;
the control group is every other device in the rollout's scope, counted while it reports the
previous version. Each rule bounds how much worse the canaries may be than the control group
(with no control data, than zero): error rate, p95 latency, and drift score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgekit.core.telemetry import LATENCY_EDGES_MS, Report
from edgekit.fleet.messages import percentile_ms


@dataclass(frozen=True)
class Rules:
    max_error_rate: float = 0.01
    """The canaries' error rate may exceed the control group's by at most this."""
    max_p95_ms: float = 40.0
    """Their p95 latency may exceed the control group's by at most this many ms."""
    max_drift: float = 0.25
    """Their mean drift score (PSI) may exceed the control group's by at most this."""
    min_calls: int = 100
    """Calls the canaries must have answered before any rule may promote them."""


@dataclass
class Window:
    """Telemetry summed over one side of the comparison."""

    reports: int = 0
    inferences: int = 0
    calls: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    drift_sum: float = 0.0
    drift_weight: int = 0

    def add(self, report: Report) -> None:
        self.reports += 1
        self.inferences += report.inferences
        self.calls += report.calls
        self.errors += report.errors
        self.latency = [a + b for a, b in zip(self.latency, report.latency_ms, strict=True)]
        if report.drift is not None and report.inferences:
            self.drift_sum += report.drift.score * report.inferences
            self.drift_weight += report.inferences

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def p95_ms(self) -> float:
        return percentile_ms(self.latency, 0.95) or 0.0

    @property
    def drift(self) -> float:
        return self.drift_sum / self.drift_weight if self.drift_weight else 0.0

    def numbers(self) -> dict[str, Any]:
        return {
            "reports": self.reports, "calls": self.calls, "errors": self.errors,
            "error_rate": round(self.error_rate, 5), "p95_ms": self.p95_ms, "drift": round(self.drift, 4),
        }  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    healthy: bool | None
    """True: within every rule; False: a rule is broken; None: not enough calls yet."""
    reason: str
    numbers: dict[str, Any]


def judge(canary: Window, control: Window, rules: Rules) -> Verdict:
    numbers = {
        "canary": canary.numbers(), "control": control.numbers(),
        "limits": {"max_error_rate": rules.max_error_rate, "max_p95_ms": rules.max_p95_ms,
                   "max_drift": rules.max_drift, "min_calls": rules.min_calls},
    }  # fmt: skip
    broken = [
        f"{label} {mine:.4g} against {theirs:.4g} in the control group (limit +{limit:g})"
        for label, mine, theirs, limit in (
            ("error rate", canary.error_rate, control.error_rate, rules.max_error_rate),
            ("p95 latency ms", canary.p95_ms, control.p95_ms, rules.max_p95_ms),
            ("drift", canary.drift, control.drift, rules.max_drift),
        )
        if mine - theirs > limit
    ]
    if canary.calls < rules.min_calls:
        return Verdict(
            None, f"the canaries answered {canary.calls} calls, fewer than {rules.min_calls}", numbers
        )
    if broken:
        return Verdict(False, "; ".join(broken), numbers)
    return Verdict(True, "every rule holds", numbers)
