"""The rollouts page's content: each rollout's events, its decision, and the canaries against
the control group, from the decision's numbers and from the reports of both versions."""

from __future__ import annotations

from typing import Any

from edgekit.fleet.dashboard import data, svg


def rollout_sections(engine: Any, fleet: str) -> list[dict[str, Any]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in reversed(data.rollout_events(engine, fleet)):
        grouped.setdefault(event["rollout"], []).append(event)
    sections = []
    for rollout, events in grouped.items():
        started: dict[str, Any] = next((e["body"] for e in events if e["event"] == "started"), {})
        decision = next((e["body"] for e in events if e["event"] == "decision"), None)
        charts = _numbers_chart(decision["numbers"]) if decision and decision.get("numbers") else ""
        if started:
            end = next((e["at"] for e in events if e["event"] == "decision"), None)
            charts += _versions_chart(engine, fleet, started, events[0]["at"], end)
        sections.append({
            "rollout": rollout, "events": events, "charts": charts,
            "decision": decision["decision"] if decision else None,
            "reason": decision["reason"] if decision else f"v{started.get('version')} on canaries, watched",
        })
    return sorted(sections, key=lambda s: -s["events"][0]["at"])


METRICS = (("error_rate", "error rate"), ("p95_ms", "p95 latency (ms)"), ("drift", "drift (PSI)"))


def _numbers_chart(numbers: dict[str, Any]) -> str:
    """Per rule, the canaries against the control group at the decision, and what was allowed."""
    canary, control, limits = numbers.get("canary", {}), numbers.get("control", {}), numbers.get("limits", {})
    charts = []
    for metric, title in METRICS:
        mine, theirs = float(canary.get(metric) or 0), float(control.get(metric) or 0)
        limit = limits.get(f"max_{metric}")
        allowed = None if limit is None else theirs + float(limit)
        charts.append(svg.comparison(title, {"canary": mine, "control": theirs}, allowed))
    return '<div class="decision">' + "".join(charts) + "</div>"


def _versions_chart(
    engine: Any, fleet: str, started: dict[str, Any], since: float, until: float | None
) -> str:
    """p95 latency per report of the new version (canaries) and the previous (control)."""
    import sqlalchemy as sa

    from edgekit.fleet.database import tables

    reports = tables()["reports"]
    versions = {started.get("version"): "canary (new)", started.get("previous"): "control (previous)"}
    query = (
        sa.select(reports.c.end_s, reports.c.version, reports.c.p95_ms)
        .where(
            reports.c.fleet == fleet, reports.c.model == started.get("model"), reports.c.end_s >= since - 60
        )
        .order_by(reports.c.end_s)
    )
    if until is not None:
        query = query.where(reports.c.end_s <= until + 60)
    with engine.connect() as connection:
        rows = [r for r in connection.execute(query) if r.version in versions]
    times = [r.end_s for r in rows]
    lines = {
        name: [r.p95_ms if r.version == version else None for r in rows] for version, name in versions.items()
    }
    return svg.line_chart("p95 latency by version during the rollout (ms)", times, lines, " ms")
