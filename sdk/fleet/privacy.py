"""An auditor's view of a fleet's privacy, from the ``privacy`` field of its reports: per
device pseudonym and for the fleet, the ε each report cost, the ε spent against the budget,
what ε protects, k, what is captured and whether captured text is de-identified.

Everything here is what the devices said of themselves; what a reader can check from it
(ε = sensitivity / scale, spent rising by ε per report, never past the budget) is checked,
and each finding is listed, so a device that misreports shows up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

TOLERANCE = 1e-6


@dataclass
class NodePrivacy:
    node: str
    epoch: int
    reports: int = 0
    dp_epsilon: float | None = None
    dp_spent: float | None = None
    dp_budget: float | None = None
    dp_unit: str | None = None
    dp_clip: int | None = None
    dp_sensitivity: int | None = None
    k: int | None = None
    capture: str = "none"
    deidentified: bool | None = None
    suppressed_buckets: int = 0
    findings: list[str] = field(default_factory=list)

    def add(self, report: dict[str, Any]) -> None:
        privacy = report.get("privacy") or {}
        epsilon, spent = privacy.get("dp_epsilon"), privacy.get("dp_spent")
        seq = report.get("seq")
        if self.reports and spent is not None and self.dp_spent is not None:
            # more than ε between two reports is a lost report; less is a ledger that went back
            if spent < self.dp_spent + (epsilon or 0.0) - TOLERANCE:
                self._find(f"seq {seq}: ε spent went from {self.dp_spent:g} to {spent:g}")
        if self.dp_epsilon is not None and epsilon is None:
            self._find(f"seq {seq}: a report without differential privacy after reports with it")
        self.reports += 1
        self.dp_epsilon, self.dp_spent = epsilon, spent if spent is not None else self.dp_spent
        for name in ("dp_budget", "dp_unit", "dp_clip", "dp_sensitivity", "k", "deidentified"):
            setattr(self, name, privacy.get(name))
        self.capture = privacy.get("capture", "none")
        self.suppressed_buckets += int(privacy.get("suppressed_buckets") or 0)
        if spent is not None and self.dp_budget is not None and spent > self.dp_budget + TOLERANCE:
            self._find(f"seq {seq}: ε spent {spent:g} is past the budget {self.dp_budget:g}")

    def _find(self, finding: str) -> None:
        if finding not in self.findings:
            self.findings.append(finding)


def fleet_privacy(fleet: str, reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per node and fleet-wide, from reports in (node, seq) order as ``read_reports`` gives them."""
    nodes: dict[str, NodePrivacy] = {}
    for report in reports:
        node = nodes.setdefault(report["node"], NodePrivacy(report["node"], int(report["epoch"])))
        node.add(report)
    rows = [asdict(node) for node in nodes.values()]
    private = [n for n in nodes.values() if n.dp_epsilon is not None]
    return {
        "fleet": fleet,
        "nodes": rows,
        "summary": {
            "nodes": len(nodes),
            "with_dp": len(private),
            "without_dp": len(nodes) - len(private),
            "largest_epsilon": max((n.dp_epsilon or 0.0 for n in private), default=None),
            "largest_spent": max((n.dp_spent or 0.0 for n in private), default=None),
            "smallest_k": min((n.k for n in nodes.values() if n.k is not None), default=None),
            "capturing": sorted({n.capture for n in nodes.values()} - {"none"}),
            "text_not_deidentified": sum(1 for n in nodes.values() if n.deidentified is False),
            "findings": sum(len(n.findings) for n in nodes.values()),
        },
    }
