"""The fleet database: one SQL layer (SQLAlchemy Core) over SQLite, the embedded default, and
PostgreSQL through psycopg 3, with versioned migrations applied on open.

A message is a row keyed by (node, epoch, seq), so a redelivered one is written once, by
whichever collector commits it first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgekit.core.errors import EdgekitError, MissingDependencyError

log = logging.getLogger("edgekit.fleet")

SCHEMA_VERSION = 1
"""The newest schema this edgekit writes; a database at a higher version is refused."""


class DatabaseUnavailable(EdgekitError):
    """The database went away or cannot write (a server down, a full disk): nothing of the
    batch was committed, so nothing is acknowledged, and the batch can be retried."""


@contextmanager
def unavailable_as_error(engine: Any) -> Iterator[None]:
    """SQLAlchemy's connection and I/O errors as one line that says what happens next."""
    import sqlalchemy as sa

    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise DatabaseUnavailable(
            f"the fleet database {engine.url.render_as_string(hide_password=True)} is unavailable "
            f"({reason}); nothing was acknowledged, retrying"
        ) from None


def _tables() -> Any:
    """The schema's tables, built on first use (SQLAlchemy is imported only by fleet tools)."""
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import JSONB

    body = sa.JSON().with_variant(JSONB(), "postgresql")
    meta = sa.MetaData()

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
    sa.Table(
        "schema_version",
        meta,
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("applied", sa.Float, nullable=False),
    )
    return meta


_META: Any = None


def tables() -> Any:
    global _META
    if _META is None:
        _META = _tables()
    return _META.tables


def _v1(connection: Any) -> None:
    """The first schema: reports, samples and their rows, statuses, skipped messages, counters
    and rollout events, with time indexes."""
    meta = tables()
    first = ("reports", "samples", "sample_rows", "statuses", "skipped", "counters", "rollout_events")
    _META.create_all(connection, tables=[meta[name] for name in first])


MIGRATIONS: tuple[Callable[[Any], None], ...] = (_v1,)
"""MIGRATIONS[n - 1] takes a database from version n - 1 to n. Append, never edit one."""
assert len(MIGRATIONS) == SCHEMA_VERSION


def engine_url(url: str) -> str:
    """A --db value as SQLAlchemy's URL: a path is a SQLite file; postgresql:// uses psycopg 3."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+psycopg://") or url.startswith("sqlite:///"):
        return url
    if "://" in url:
        raise EdgekitError(f"--db {_shown(url)}: give a file path (SQLite) or postgresql://USER@HOST/DB")
    return f"sqlite:///{Path(url).expanduser()}"


def open_engine(url: str, connect_timeout: float = 5.0, create: bool = True) -> Any:
    """An engine on ``url``, reachable and at this edgekit's schema (migrated if older).
    ``create=False`` (readers: the dashboard, export) refuses a SQLite file that is not there."""
    try:
        import sqlalchemy as sa
    except ImportError:
        raise MissingDependencyError("sqlalchemy", "fleet", "the fleet database") from None
    full = engine_url(url)
    engine = None
    try:
        engine = _engine(sa, full, connect_timeout, create)
        migrate(engine)
    except (sa.exc.DatabaseError, sa.exc.ArgumentError, ValueError) as exc:
        if engine is not None:
            engine.dispose()
        raise _refusal(sa, exc, url) from None
    return engine


def _refusal(sa: Any, exc: Exception, url: str) -> EdgekitError:
    """One line for a database that cannot be opened, the password never shown."""
    if isinstance(exc, sa.exc.OperationalError):
        return EdgekitError(
            f"cannot open the fleet database {_shown(url)}: {_first(exc)}; check the URL, "
            "that the server runs, and the user's rights"
        )
    if isinstance(exc, sa.exc.DatabaseError):  # a garbage or truncated SQLite file
        return EdgekitError(
            f"{_shown(url)} is not a fleet database ({_first(exc)}); move it aside or give another --db"
        )
    return EdgekitError(f"--db {_shown(url)}: not a database URL ({exc}); see edgekit fleet collect --help")


def _engine(sa: Any, full: str, connect_timeout: float, create: bool) -> Any:
    if full.startswith("sqlite:///"):
        path = Path(full.removeprefix("sqlite:///"))
        if not create and not path.is_file():
            raise EdgekitError(f"no fleet database at {path}: start edgekit fleet collect --db {path} first")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(full, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    _require_psycopg()
    return sa.create_engine(
        full, connect_args={"connect_timeout": int(max(1, connect_timeout))}, pool_pre_ping=True
    )


def _first(exc: Any) -> str:
    """The driver's own first line, without SQLAlchemy's background link."""
    text = str(exc.orig) if getattr(exc, "orig", None) else str(exc)
    return (text.strip().splitlines() or ["?"])[0]


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise MissingDependencyError("psycopg", "fleet", "a PostgreSQL fleet database") from None


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    """WAL, so the dashboard reads while a collector writes; full sync, as commits are acks."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _shown(url: str) -> str:
    """The URL without a password, whatever its scheme."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
    return url


def migrate(engine: Any) -> int:
    """Apply the migrations this database lacks, each in its own transaction; returns the
    version. Several collectors may start at once: PostgreSQL serialises them on a lock."""
    import sqlalchemy as sa

    meta = tables()
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(20200001)"))
        meta["schema_version"].create(connection, checkfirst=True)
        found = connection.execute(sa.select(sa.func.max(meta["schema_version"].c.version))).scalar() or 0
        if found > SCHEMA_VERSION:
            raise EdgekitError(
                f"this fleet database has schema version {found}, written by a newer edgekit; this "
                f"edgekit reads up to version {SCHEMA_VERSION}: upgrade edgekit"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](connection)
            connection.execute(meta["schema_version"].insert().values(version=version, applied=time.time()))
            log.info("fleet database: schema version %d applied", version)
    return SCHEMA_VERSION


def insert_new(
    connection: Any, table: Any, rows: list[dict[str, Any]], key: tuple[str, ...]
) -> set[tuple[Any, ...]]:
    """Insert ``rows``, skipping any whose key is already there; returns the keys inserted."""
    if not rows:
        return set()
    insert = _insert(connection)
    statement = insert(table).on_conflict_do_nothing().returning(*(table.c[name] for name in key))
    return {tuple(row) for row in connection.execute(statement, rows)}


def add_counts(connection: Any, fleet: str, counts: dict[str, int]) -> None:
    """counters[name] += count, for several collectors at once."""
    counts = {name: count for name, count in counts.items() if count}
    if not counts:
        return
    table = tables()["counters"]
    insert = _insert(connection)
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=["fleet", "name"], set_={"value": table.c.value + statement.excluded.value}
    )
    connection.execute(
        statement, [{"fleet": fleet, "name": n, "value": v} for n, v in sorted(counts.items())]
    )


def _insert(connection: Any) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (the same clause on both engines)."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


def record_event(url: str, fleet: str, event: dict[str, Any]) -> None:
    """One rollout event into ``rollout_events``."""
    engine = open_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                tables()["rollout_events"].insert().values(
                    fleet=fleet, at=event["time"], rollout=str(event.get("rollout", ""))[:128],
                    event=str(event.get("event", ""))[:32], body=event,
                )
            )
    finally:
        engine.dispose()
