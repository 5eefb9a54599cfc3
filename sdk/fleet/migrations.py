"""The fleet database's schema, as the migrations that built it: each defines what its
version adds, onto the tables the earlier ones defined, and emits the DDL for exactly that.
The live schema is all of them, in order, so a migration never reads a later version's tables:
append one for a change, and never edit one (tests/test_fleet_load.py holds each version's
schema as it was)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def v1(meta: Any, connection: Any | None) -> None:
    """The first schema: reports, samples and their rows, statuses, skipped messages, counters
    and rollout events, with time indexes."""
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import JSONB

    body = sa.JSON().with_variant(JSONB(), "postgresql")

    def keyed(name: str, *columns: Any) -> sa.Table:
        return sa.Table(
            name,
            meta,
            sa.Column("node", sa.String(32), primary_key=True),
            sa.Column("epoch", sa.BigInteger, primary_key=True),
            sa.Column("seq", sa.BigInteger, primary_key=True),
            sa.Column("fleet", sa.String(64), nullable=False),
            sa.Column("received", sa.Float, nullable=False),
            *columns,
        )

    def model() -> tuple[sa.Column[Any], ...]:
        return sa.Column("model", sa.String(128), nullable=False), sa.Column(
            "version", sa.BigInteger, nullable=False
        )

    reports = keyed(
        "reports",
        *model(),
        sa.Column("start_s", sa.Float, nullable=False),
        sa.Column("end_s", sa.Float, nullable=False),
        sa.Column("inferences", sa.BigInteger, nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("p50_ms", sa.Float),
        sa.Column("p95_ms", sa.Float),
        sa.Column("drift", sa.Float),
        sa.Column("input_psi", sa.Float),
        sa.Column("output_psi", sa.Float),
        sa.Column("dropped", sa.BigInteger, nullable=False),
        sa.Column("body", body, nullable=False),
    )
    sa.Index("reports_by_end", reports.c.end_s)
    sa.Index("reports_by_node_end", reports.c.node, reports.c.end_s)
    samples = keyed(
        "samples",
        *model(),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
    )
    sa.Index("samples_by_received", samples.c.received)
    rows = sa.Table(
        "sample_rows",
        meta,
        sa.Column("node", sa.String(32), primary_key=True),
        sa.Column("epoch", sa.BigInteger, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("pred", sa.Integer, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("label", sa.Integer),
        sa.Column("labelled_at", sa.Float),
    )
    sa.Index("sample_rows_by_confidence", rows.c.confidence)
    sa.Table(
        "statuses",
        meta,
        sa.Column("node", sa.String(32), primary_key=True),
        sa.Column("at", sa.Float, primary_key=True),
        sa.Column("fleet", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    )
    sa.Table(
        "skipped",
        meta,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("fleet", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    sa.Table(
        "counters",
        meta,
        sa.Column("fleet", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    rollouts = sa.Table(
        "rollout_events",
        meta,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("fleet", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("rollout", sa.String(128), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("body", body, nullable=False),
    )
    sa.Index("rollout_events_by_at", rollouts.c.at)
    if connection is not None:
        meta.create_all(connection, tables=[reports, samples, rows, *(meta.tables[name] for name in (
            "statuses", "skipped", "counters", "rollout_events"))])  # fmt: skip


def v2(meta: Any, connection: Any | None) -> None:
    """Indexes for the dashboard's fleet page, which reads each node's newest report and status
    in one fleet: covering, so it reads the index, not every report's JSON body."""
    import sqlalchemy as sa

    reports, statuses = meta.tables["reports"], meta.tables["statuses"]
    added = [
        sa.Index("reports_by_fleet_node_seq", reports.c.fleet, reports.c.node, reports.c.seq),
        sa.Index("statuses_by_fleet_node_at", statuses.c.fleet, statuses.c.node, statuses.c.at),
    ]
    if connection is not None:
        for index in added:
            index.create(connection)


MIGRATIONS: tuple[Callable[[Any, Any | None], None], ...] = (v1, v2)
"""MIGRATIONS[n - 1] takes a database from version n - 1 to n."""


def schema(meta: Any) -> None:
    """The version table, which ``migrate`` creates before any migration."""
    import sqlalchemy as sa

    sa.Table(
        "schema_version",
        meta,
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("applied", sa.Float, nullable=False),
    )
