"""What the dashboard's pages show, read from the fleet database: one row per device, a
device's time series, drift by device and feature, the sample queue and rollout events."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgekit.core.manifest import ReferenceStats
from edgekit.fleet.database import tables
from edgekit.fleet.messages import drift_level
from edgekit.runtime.telemetry.stats import PSI_SIGNIFICANT, psi

SILENT_AFTER_WINDOWS = 3
"""A device with no status message is "silent" once this many of its windows pass unreported."""


def _newest_per_node(table: Any, fleet: str, column: str) -> Any:
    """The join that keeps each node's row with the highest ``column``. Its nodes come from a
    skip through the (fleet, node, ``column``) index, one lookup per node, and each node's
    newest from one more: no scan of all the rows, which grow with the fleet's history."""
    import sqlalchemy as sa

    step = table.alias()
    first = sa.select(sa.func.min(table.c.node).label("node")).where(table.c.fleet == fleet)
    start = first.cte("nodes", recursive=True)
    following = sa.select(sa.func.min(step.c.node)).where(step.c.fleet == fleet, step.c.node > start.c.node)
    nodes = start.union_all(sa.select(following.scalar_subquery()).where(start.c.node.is_not(None)))
    newest = table.alias()
    highest = sa.select(sa.func.max(newest.c[column]))
    highest = highest.where(newest.c.fleet == fleet, newest.c.node == nodes.c.node)
    return nodes, sa.and_(table.c.node == nodes.c.node, table.c[column] == highest.scalar_subquery())


def latest_query(fleet: str) -> Any:
    """Each node's latest report, its columns without the body (the fleet page shows columns)."""
    import sqlalchemy as sa

    reports = tables()["reports"]
    columns = (column for column in reports.c if column.name != "body")
    newest = _newest_per_node(reports, fleet, "seq")
    return sa.select(*columns).join(*newest).where(reports.c.fleet == fleet)


def _latest(engine: Any, fleet: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(latest_query(fleet)).mappings())


def _statuses(engine: Any, fleet: str) -> dict[str, tuple[str, float]]:
    import sqlalchemy as sa

    statuses = tables()["statuses"]
    query = sa.select(statuses.c.node, statuses.c.status, statuses.c.at).join(
        *_newest_per_node(statuses, fleet, "at")
    )
    with engine.connect() as connection:
        return {node: (status, at) for node, status, at in connection.execute(query)}


def fleet_rows(engine: Any, fleet: str, now: float | None = None) -> list[dict[str, Any]]:
    """One row per device pseudonym: state and last seen, the model running, and the latest
    window's rate, latency, error rate, drift and drops."""
    now = time.time() if now is None else now
    statuses = _statuses(engine, fleet)
    rows = []
    for report in _latest(engine, fleet):
        window = max(report["end_s"] - report["start_s"], 1e-6)
        status, status_at = statuses.get(report["node"], ("", 0.0))
        last_seen = max(report["received"], status_at)
        if status not in ("online", "offline"):
            status = "silent" if now - report["end_s"] > SILENT_AFTER_WINDOWS * window else "reporting"
        rows.append({
            "node": report["node"], "status": status, "last_seen": last_seen,
            "model": report["model"], "version": report["version"],
            "rate": round(report["inferences"] / window, 2),
            "p50_ms": report["p50_ms"], "p95_ms": report["p95_ms"],
            "error_rate": round(report["errors"] / report["calls"], 4) if report["calls"] else 0.0,
            "drift": report["drift"], "level": drift_level(report["drift"]), "dropped": report["dropped"],
        })
    return sorted(rows, key=lambda row: row["node"])


def device_series(engine: Any, node: str, limit: int = 500) -> list[dict[str, Any]]:
    """A device's last ``limit`` windows, oldest first."""
    import sqlalchemy as sa

    reports = tables()["reports"]
    query = sa.select(reports).where(reports.c.node == node).order_by(reports.c.seq.desc()).limit(limit)
    with engine.connect() as connection:
        found = list(connection.execute(query).mappings())
    series = []
    for report in reversed(found):
        window = max(report["end_s"] - report["start_s"], 1e-6)
        series.append({
            "end": report["end_s"], "p50_ms": report["p50_ms"], "p95_ms": report["p95_ms"],
            "rate": report["inferences"] / window, "errors": report["errors"],
            "error_rate": report["errors"] / report["calls"] if report["calls"] else 0.0,
            "input_psi": report["input_psi"], "output_psi": report["output_psi"], "drift": report["drift"],
            "classes": report["body"].get("classes"), "feature_bins": report["body"].get("feature_bins"),
            "model": report["model"], "version": report["version"],
        })
    return series


def class_shares(series: list[dict[str, Any]], last: int = 10) -> list[float] | None:
    """The predicted-class distribution over the last ``last`` windows."""
    counts = [s["classes"] for s in series[-last:] if s["classes"]]
    if not counts or len({len(c) for c in counts}) != 1:
        return None
    total = np.sum(counts, axis=0).astype(float)
    return (total / max(total.sum(), 1)).round(4).tolist()


def drift_since(series: list[dict[str, Any]], threshold: float = PSI_SIGNIFICANT) -> float | None:
    """When the current run of windows at or above ``threshold`` began (None: not drifting now)."""
    since = None
    for point in series:
        if point["drift"] is not None and point["drift"] >= threshold:
            since = point["end"] if since is None else since
        else:
            since = None
    return since


def feature_psi(series: list[dict[str, Any]], reference: ReferenceStats, last: int = 5) -> list[float] | None:
    """Each input feature's PSI over the last windows' summed bins, against the bundle's
    reference; None where the reports carry no bins (differential privacy, or small windows)."""
    bins = [s["feature_bins"] for s in series[-last:] if s["feature_bins"]]
    if not bins or len(bins[0]) != len(reference.expected):
        return None
    summed = np.sum([np.asarray(b, float) for b in bins], axis=0)
    return [
        round(psi(np.asarray(expected), counts), 4)
        for expected, counts in zip(reference.expected, summed, strict=True)
    ]


def feature_name(reference: ReferenceStats, index: int) -> str:
    """What feature ``index`` of the reference measures (see edgekit.runtime.telemetry.stats)."""
    if reference.features == "values":
        return f"value {index}"
    if reference.features == "channels":
        channels = len(reference.edges) // 2
        return f"channel {index % channels} {'mean' if index < channels else 'std'}"
    return ("mean", "std")[index] if index < 2 else f"feature {index}"


def drift_table(
    engine: Any, fleet: str, references: dict[tuple[str, int], ReferenceStats]
) -> list[dict[str, Any]]:
    """Per device: drift now, its reading, since when, and the features drifting most."""
    rows = []
    for row in fleet_rows(engine, fleet):
        series = device_series(engine, row["node"], limit=200)
        reference = references.get((row["model"], row["version"]))
        features = feature_psi(series, reference) if reference else None
        top = sorted(enumerate(features or []), key=lambda f: -f[1])[:3]
        named = [(feature_name(reference, i), value) for i, value in top] if reference else []
        rows.append({
            **row, "since": drift_since(series),
            "input_psi": series[-1]["input_psi"], "output_psi": series[-1]["output_psi"],
            "features": [{"feature": n, "psi": v, "level": drift_level(v)} for n, v in named],
            "trend": [point["drift"] for point in series[-40:]],
        })
    return sorted(rows, key=lambda r: -(r["drift"] or 0))


def sample_queue(engine: Any, fleet: str, only: str = "unlabelled", limit: int = 60) -> list[dict[str, Any]]:
    """Captured samples, least confident first: ``only`` unlabelled, labelled or all."""
    import sqlalchemy as sa

    table = tables()
    rows, samples = table["sample_rows"], table["samples"]
    query = (
        sa.select(rows, samples.c.model, samples.c.version, samples.c.received)
        .join(
            samples,
            sa.and_(
                rows.c.node == samples.c.node, rows.c.epoch == samples.c.epoch, rows.c.seq == samples.c.seq
            ),
        )
        .where(samples.c.fleet == fleet)
    )
    if only == "unlabelled":
        query = query.where(rows.c.label.is_(None))
    elif only == "labelled":
        query = query.where(rows.c.label.is_not(None))
    query = query.order_by(rows.c.confidence, rows.c.node, rows.c.seq, rows.c.idx).limit(limit)
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def sample_counts(engine: Any, fleet: str) -> dict[str, int]:
    """How many captured samples are unlabelled, labelled, and all."""
    import sqlalchemy as sa

    table = tables()
    rows, samples = table["sample_rows"], table["samples"]
    labelled = sa.func.count(rows.c.label)
    query = (
        sa.select(sa.func.count(), labelled)
        .select_from(
            rows.join(
                samples,
                sa.and_(
                    rows.c.node == samples.c.node,
                    rows.c.epoch == samples.c.epoch,
                    rows.c.seq == samples.c.seq,
                ),
            )
        )
        .where(samples.c.fleet == fleet)
    )
    with engine.connect() as connection:
        total, done = connection.execute(query).one()
    return {"unlabelled": int(total - done), "labelled": int(done), "all": int(total)}


def sealed_message(engine: Any, node: str, epoch: int, seq: int) -> bytes | None:
    import sqlalchemy as sa

    samples = tables()["samples"]
    query = sa.select(samples.c.sealed).where(
        samples.c.node == node, samples.c.epoch == epoch, samples.c.seq == seq
    )
    with engine.connect() as connection:
        found = connection.execute(query).scalar()
    return None if found is None else bytes(found)


def rollout_events(engine: Any, fleet: str, limit: int = 200) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    events = tables()["rollout_events"]
    query = sa.select(events).where(events.c.fleet == fleet).order_by(events.c.at.desc()).limit(limit)
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]
