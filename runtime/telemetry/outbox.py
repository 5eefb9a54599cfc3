"""The durable outbox: every report and sample lands in SQLite (WAL, synchronous=FULL)
before the first publish attempt, and leaves only when the broker acknowledges it.

Sequence numbers, the dropped count and the witness of the ε ledger (``ledger.py``) live in
the same database and change in the same transactions as the rows they describe, so a crash
at any point leaves them consistent.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit.core.errors import EdgekitError
from edgekit.core.telemetry import Kind
from edgekit.runtime.telemetry.ledger import Ledger, Witness

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
"""


class OutboxError(EdgekitError):
    """The outbox database cannot be opened or written."""


@dataclass(frozen=True)
class Entry:
    seq: int
    node: str
    kind: Kind
    payload: bytes


class BudgetSpent(Exception):
    """The ε ledger would pass its cap, or cannot be trusted: nothing is released."""


class Outbox:
    def __init__(self, path: Path, max_bytes: int, max_age_s: float) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise OutboxError(f"telemetry outbox {path}: {exc}; check the folder is writable") from exc

    def _meta(self, key: str) -> float:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row else 0.0

    def _set(self, key: str, value: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def put(
        self,
        kind: Kind,
        node: str,
        build: Callable[[int, int], bytes],
        *,
        epsilon: float = 0.0,
        budget: float | None = None,
        ledger: Ledger | None = None,
    ) -> int:
        """Store one message; ``build(seq, dropped)`` makes its payload, ``dropped`` being
        how many entries this outbox has dropped so far. With a ``ledger``, charges it
        ``epsilon`` before the commit and records the witness in the same transaction; raises
        BudgetSpent, storing nothing, when that would pass ``budget`` or the ledger is stopped.
        Returns the seq."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if ledger is not None:
                        _check(ledger, epsilon, budget)
                    seq = int(self._meta("seq")) + 1
                    dropped = int(self._meta("dropped"))
                    payload = build(seq, dropped)
                    self._db.execute(
                        "INSERT INTO outbox (seq, node, kind, created, payload) VALUES (?, ?, ?, ?, ?)",
                        (seq, node, kind, time.time(), payload),
                    )
                    self._set("seq", seq)
                    self._set("bytes", self._meta("bytes") + len(payload))
                    self._enforce_limits()
                    if ledger is not None:
                        charged = ledger.charge(epsilon)
                        self._set("ledger_releases", charged.releases)
                        self._set("epsilon_spent", charged.spent)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise OutboxError(f"telemetry outbox {self.path}: {exc}") from exc
            except OSError as exc:
                raise OutboxError(f"ε ledger {ledger.path if ledger else ''}: {exc.strerror or exc}") from exc
        return seq

    def witness(self) -> Witness | None:
        """The ε ledger's numbers as this outbox last recorded them; None if it never did."""
        with self._lock:
            rows = dict(
                self._db.execute(
                    "SELECT key, value FROM meta WHERE key IN ('ledger_releases', 'epsilon_spent')"
                ).fetchall()
            )
        if not rows:
            return None
        return Witness(int(rows.get("ledger_releases", 0)), float(rows.get("epsilon_spent", 0.0)))

    def _enforce_limits(self) -> None:
        """Drop the oldest entries past the age or size limit, and count them."""
        expired = self._db.execute(
            "DELETE FROM outbox WHERE created < ? RETURNING length(payload)", (time.time() - self.max_age_s,)
        ).fetchall()
        total = self._meta("bytes") - sum(size for (size,) in expired)
        dropped = len(expired)
        if total > self.max_bytes:
            excess, last = total - self.max_bytes, None
            for seq, size in self._db.execute("SELECT seq, length(payload) FROM outbox ORDER BY seq"):
                excess -= size
                total -= size
                dropped += 1
                last = seq
                if excess <= 0:
                    break
            if last is not None:
                self._db.execute("DELETE FROM outbox WHERE seq <= ?", (last,))
        if dropped:
            self._set("dropped", self._meta("dropped") + dropped)
        self._set("bytes", max(total, 0))

    def pending(self, after: int, limit: int) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, node, kind, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [Entry(*row) for row in rows]

    def oldest_node(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT node FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    def ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            sizes = 0
            for seq in seqs:
                row = self._db.execute("DELETE FROM outbox WHERE seq = ? RETURNING length(payload)", (seq,))
                sizes += sum(size for (size,) in row.fetchall())
            self._set("bytes", max(self._meta("bytes") - sizes, 0))
            self._db.execute("COMMIT")

    def expire(self) -> None:
        """Apply the age limit now (the publisher calls this while it cannot send)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._enforce_limits()
            self._db.execute("COMMIT")

    def size(self) -> tuple[int, int]:
        """(entries, payload bytes) waiting."""
        with self._lock:
            count = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            return int(count), int(self._meta("bytes"))

    @property
    def dropped(self) -> int:
        with self._lock:
            return int(self._meta("dropped"))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _check(ledger: Ledger, epsilon: float, budget: float | None) -> None:
    if ledger.stopped is not None:
        raise BudgetSpent(ledger.stopped)
    spent = ledger.state.spent
    if budget is not None and spent + epsilon > budget + 1e-9:
        raise BudgetSpent(f"ε {spent:g} of {budget:g} spent")
