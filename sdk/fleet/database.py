"""The fleet database: one SQL layer (SQLAlchemy Core) over SQLite, the embedded default, and
PostgreSQL through psycopg 3, with versioned migrations applied on open.

A message is a row keyed by (node, epoch, seq), so a redelivered one is written once, by
whichever collector commits it first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgekit.core.errors import EdgekitError, MissingDependencyError
from edgekit.fleet.migrations import MIGRATIONS, schema

log = logging.getLogger("edgekit.fleet")

SCHEMA_VERSION = 2
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


_META: Any = None


def tables() -> Any:
    """The live schema's tables: every migration's definitions, in order (built on first use:
    SQLAlchemy is imported only by fleet tools)."""
    global _META
    if _META is None:
        _META = _defined(SCHEMA_VERSION)
    return _META.tables


def _defined(version: int, connection: Any | None = None, applied_from: int = 0) -> Any:
    """The tables as of ``version``; with ``connection``, the DDL of the versions after
    ``applied_from`` emitted there."""
    import sqlalchemy as sa

    meta = sa.MetaData()
    schema(meta)
    for number, migration in enumerate(MIGRATIONS[:version], start=1):
        migration(meta, connection if number > applied_from else None)
    return meta


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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise EdgekitError(f"cannot make the folder for the fleet database {path}: {reason}") from None
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


def migrate(engine: Any, target: int = SCHEMA_VERSION) -> int:
    """Apply the migrations this database lacks, up to ``target``, in one transaction; returns
    the version. Several collectors may start at once: PostgreSQL serialises them on a lock."""
    import sqlalchemy as sa

    versions = tables()["schema_version"]
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(20200001)"))
        versions.create(connection, checkfirst=True)
        found = connection.execute(sa.select(sa.func.max(versions.c.version))).scalar() or 0
        if found > SCHEMA_VERSION:
            raise EdgekitError(
                f"this fleet database has schema version {found}, written by a newer edgekit; this "
                f"edgekit reads up to version {SCHEMA_VERSION}: upgrade edgekit"
            )
        if found < target:
            _defined(target, connection, applied_from=found)
            applied = [{"version": v, "applied": time.time()} for v in range(found + 1, target + 1)]
            connection.execute(versions.insert(), applied)
            log.info("fleet database: schema versions %d to %d applied", found + 1, target)
    return max(found, target)


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


@lru_cache(maxsize=8)
def _event_engine(url: str) -> Any:
    """One engine per database for a process's rollout events, opened (and migrated) once."""
    return open_engine(url)


def record_event(url: str, fleet: str, event: dict[str, Any]) -> None:
    """One rollout event into ``rollout_events``."""
    engine = _event_engine(url)
    with unavailable_as_error(engine), engine.begin() as connection:
        connection.execute(
            tables()["rollout_events"].insert().values(
                fleet=fleet, at=event["time"], rollout=str(event.get("rollout", ""))[:128],
                event=str(event.get("event", ""))[:32], body=event,
            )
        )
