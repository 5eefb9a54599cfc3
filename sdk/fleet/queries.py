"""Reading the fleet database: a report's columns, the fleet's totals and gaps, and the
reports as the wire schema has them."""

from __future__ import annotations

import time
from typing import Any

from edgekit.core.errors import EdgekitError, InputError
from edgekit.core.telemetry import Report
from edgekit.fleet.database import tables
from edgekit.fleet.messages import SKIP_REASONS, summarize

KEY = ("node", "epoch", "seq")
"""What makes a message one row: a redelivery, to this collector or another, is written once."""
MAX_SEQ_STEP = 100_000
"""A node's sequence number may skip this many (messages its outbox dropped); a larger jump
is counted as an anomaly and starts a new run, not a gap of that size."""

_STEPS = """
WITH m AS (SELECT node, seq FROM reports WHERE fleet = :fleet
           UNION ALL SELECT node, seq FROM samples WHERE fleet = :fleet),
     s AS (SELECT node, seq - LAG(seq) OVER (PARTITION BY node ORDER BY seq) AS step FROM m)
SELECT node,
       SUM(CASE WHEN step > 1 AND step <= :most THEN step - 1 ELSE 0 END) AS gaps,
       SUM(CASE WHEN step > :most THEN 1 ELSE 0 END) AS jumps
FROM s GROUP BY node
"""


def report_columns(report: Report) -> dict[str, Any]:
    """The columns a report is queried by, and the whole report as JSON."""
    numbers = summarize(report)
    return {
        "start_s": report.start, "end_s": report.end, "inferences": report.inferences,
        "calls": report.calls, "errors": report.errors, "p50_ms": numbers["p50_ms"],
        "p95_ms": numbers["p95_ms"], "drift": numbers["drift"], "input_psi": numbers["input_psi"],
        "output_psi": numbers["output_psi"], "dropped": report.dropped,
        "body": report.model_dump(mode="json"),
    }  # fmt: skip


def fleet_state(engine: Any, fleet: str) -> dict[str, Any]:
    """Totals for ``fleet``: reports, inferences, samples, skipped messages by reason,
    unknown fields, and per node the sequence numbers missing (gaps) and the jumps."""
    import sqlalchemy as sa

    table = tables()
    reports, samples, counters = table["reports"], table["samples"], table["counters"]
    with engine.connect() as connection:
        count, inferences = connection.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(reports.c.inferences), 0)).where(
                reports.c.fleet == fleet
            )
        ).one()
        sampled = connection.execute(
            sa.select(sa.func.coalesce(sa.func.sum(samples.c.count), 0)).where(samples.c.fleet == fleet)
        ).scalar()
        counts = dict(connection.execute(
            sa.select(counters.c.name, counters.c.value).where(counters.c.fleet == fleet)
        ).tuples().all())
        steps = connection.execute(sa.text(_STEPS), {"fleet": fleet, "most": MAX_SEQ_STEP}).all()
    return {
        "fleet": fleet,
        "reports": int(count),
        "inferences": int(inferences),
        "samples": int(sampled or 0),
        "skipped": {reason: int(counts.get(reason, 0)) for reason in SKIP_REASONS},
        "unknown_fields": int(counts.get("unknown_fields", 0)),
        "gaps": {node: int(gaps) for node, gaps, _ in steps if gaps},
        "seq_jumps": {node: int(jumps) for node, _, jumps in steps if jumps},
    }


def read_reports(engine: Any, fleet: str, since: float | None = None) -> list[dict[str, Any]]:
    """Every report of ``fleet`` (ending after ``since``) as the wire schema has it, in
    (node, seq) order."""
    import sqlalchemy as sa

    reports = tables()["reports"]
    query = sa.select(reports.c.body).where(reports.c.fleet == fleet)
    if since is not None:
        query = query.where(reports.c.end_s >= since)
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(query.order_by(reports.c.node, reports.c.seq))]


def set_label(engine: Any, node: str, epoch: int, seq: int, idx: int, label: int | None) -> bool:
    """An operator's label for one captured sample (None clears it); False when no such sample."""
    import sqlalchemy as sa

    rows = tables()["sample_rows"]
    where = sa.and_(rows.c.node == node, rows.c.epoch == epoch, rows.c.seq == seq, rows.c.idx == idx)
    with engine.begin() as connection:
        done = connection.execute(
            rows.update().where(where).values(label=label, labelled_at=None if label is None else time.time())
        )
    return bool(done.rowcount)


def sample_model(engine: Any, node: str, epoch: int, seq: int) -> tuple[str, int] | None:
    """The model and version that captured a sample message, or None when there is none."""
    import sqlalchemy as sa

    samples = tables()["samples"]
    where = sa.and_(samples.c.node == node, samples.c.epoch == epoch, samples.c.seq == seq)
    with engine.connect() as connection:
        row = connection.execute(sa.select(samples.c.model, samples.c.version).where(where)).first()
    return None if row is None else (str(row[0]), int(row[1]))


def fleets(engine: Any) -> list[str]:
    """The fleets the database holds reports of."""
    import sqlalchemy as sa

    reports = tables()["reports"]
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(reports.c.fleet).distinct()).scalars())


def only_fleet(engine: Any, db: str) -> str:
    """The database's one fleet, for commands whose --fleet may be left out."""
    found = fleets(engine)
    if len(found) == 1:
        return found[0]
    if not found:
        raise EdgekitError(
            f"{db} holds no reports yet: start edgekit fleet collect --db {db}, or give --fleet"
        )
    raise InputError(f"{db} holds fleets {', '.join(found)}: choose one with --fleet")
