"""``fleet collect``: a fleet's reports, samples and statuses, committed to the fleet database
before they are acknowledged, and the loop that does it."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import x25519

from edgekit.core.errors import EdgekitError
from edgekit.core.telemetry import MAX_PAYLOAD_BYTES
from edgekit.fleet.database import (
    DatabaseUnavailable,
    add_counts,
    insert_new,
    open_engine,
    tables,
    unavailable_as_error,
)
from edgekit.fleet.drift import drift_report
from edgekit.fleet.export import SENT_ARRAYS, TEXTS, export
from edgekit.fleet.inbox import Inbox, Limits, subscriptions
from edgekit.fleet.keys import load_collector_key
from edgekit.fleet.messages import SKIP_REASONS, Skip, parse
from edgekit.fleet.queries import KEY, fleet_state, read_reports, report_columns
from edgekit.fleet.sessions import SessionSlot
from edgekit.runtime.telemetry.broker import Broker
from edgekit.runtime.telemetry.privacy import open_sample

log = logging.getLogger("edgekit.fleet")

ACK_EVERY = 256
"""Messages taken before they are committed and acknowledged (or every half second)."""


class Collector:
    """Writes a fleet's reports, samples and statuses into the fleet database.

    Every message is classified and validated (see ``parse``), then held until ``flush``
    commits the batch; a caller acknowledges the messages to the broker only after that. A
    sample is checked to decrypt with the fleet key, and stored sealed, as it came, with its
    predictions and confidences in ``sample_rows`` for labelling. Every skipped message but a
    duplicate is set aside in the ``skipped`` table with its topic and reason.

    ``db`` is a SQLite path or a postgresql:// URL; without it, ``out/fleet.sqlite``. With
    ``out``, ``finish`` exports there what ``fleet export`` does. The counts on the object are
    this collector's; ``state()`` is the whole database's.
    """

    def __init__(
        self, fleet: str, out: Path | None, private_key: x25519.X25519PrivateKey, db: str | None = None
    ) -> None:
        if db is None and out is None:
            raise EdgekitError("give a database (--db) or an output folder (--out)")
        self.fleet = fleet
        self.out = out
        self.key = private_key
        self.engine = open_engine(db or str(Path(out or ".") / "fleet.sqlite"))
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.reports = self.inferences = self.sample_count = self.unknown_fields = 0
        self._pending: dict[str, list[dict[str, Any]]] = {
            "reports": [],
            "samples": [],
            "rows": [],
            "statuses": [],
        }
        self._keys: set[tuple[str, int, int]] = set()
        self._dead: list[dict[str, Any]] = []
        self._skips: Counter[str] = Counter()
        self._unknown = 0

    def handle(self, topic: str, payload: bytes) -> str:
        """Take one message; returns what happened: report, sample, status or a skip reason.
        Never raises: whatever goes wrong with one message skips it, counted and set aside.
        A message already in the database is found a duplicate at ``flush``."""
        try:
            return self._take(topic, payload)
        except Skip as skip:
            reason, detail = skip.reason, ""
        except Exception as exc:  # one message must never stop the collection
            reason, detail = "unprocessable", f"{type(exc).__name__}: {exc}"[:300]
            log.warning(
                "edgekit: a message on %s could not be processed (%s); set aside", topic[:200], detail
            )
        self._skips[reason] += 1
        if reason != "duplicate":
            self._dead.append(_dead_letter(self.fleet, topic, payload, reason, detail))
        return reason

    def _take(self, topic: str, payload: bytes) -> str:
        message = parse(self.fleet, topic, payload)
        now = time.time()
        if message.kind == "status":
            self._pending["statuses"].append(
                {"node": message.node, "at": now, "fleet": self.fleet, "status": message.status}
            )
            return "status"
        header = message.report or message.header
        assert header is not None
        key = (message.node, header.epoch, header.seq)
        if key in self._keys:
            raise Skip("duplicate")
        common = {"node": key[0], "epoch": key[1], "seq": key[2], "fleet": self.fleet,
                  "model": header.model.name, "version": header.model.version}  # fmt: skip
        if message.report is not None:
            self._pending["reports"].append({**common, **report_columns(message.report)})
        else:
            rows = self._rows(message.head, message.body)
            self._pending["samples"].append({**common, "count": len(rows), "sealed": payload})
            self._pending["rows"] += [{"node": key[0], "epoch": key[1], "seq": key[2], "idx": i, **row}
                                      for i, row in enumerate(rows)]  # fmt: skip
        self._keys.add(key)
        self._unknown += len(message.unknown_fields)
        return message.kind

    def _rows(self, head: bytes, body: bytes) -> list[dict[str, Any]]:
        """Each sample's prediction and confidence; Skip unless the arrays decrypt and agree."""
        try:
            arrays = open_sample(head, body, self.key)
        except ValueError:
            raise Skip("undecryptable") from None
        if not set(SENT_ARRAYS) <= set(arrays):
            raise Skip("malformed")
        count = len(arrays["x"])
        for text in (arrays.get(name) for name in TEXTS):
            if text is not None and (text.dtype.kind != "U" or text.shape != (count,)):
                raise Skip("malformed")
        pred, confidence = arrays["pred"].reshape(-1), arrays["confidence"].reshape(-1)
        if len(pred) != count or len(confidence) != count:
            raise Skip("malformed")
        return [{"pred": int(p), "confidence": float(c)} for p, c in zip(pred, confidence, strict=True)]

    def flush(self) -> None:
        """Commit everything taken so far in one transaction; what was already there is
        counted as a duplicate. Only after this returns may the messages be acknowledged.
        Raises DatabaseUnavailable with everything still held, to retry."""
        with unavailable_as_error(self.engine):
            reports, samples, duplicates = self._commit()
        pending = self._pending
        self._skips["duplicate"] += duplicates
        self.reports += len(reports)
        self.inferences += sum(r["inferences"] for r in pending["reports"] if _key(r) in reports)
        self.sample_count += sum(s["count"] for s in pending["samples"] if _key(s) in samples)
        self.unknown_fields += self._unknown
        for reason, count in self._skips.items():
            self.skipped[reason] += count
        self._pending = {name: [] for name in pending}
        self._keys, self._dead, self._skips, self._unknown = set(), [], Counter(), 0

    def _commit(self) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]], int]:
        """One transaction: the new rows, and the counts; nothing held changes here."""
        table = tables()
        pending = self._pending
        committed = time.time()  # "received": when the fleet had it for good, not when it came
        for row in (*pending["reports"], *pending["samples"]):
            row["received"] = committed
        with self.engine.begin() as connection:
            reports = insert_new(connection, table["reports"], pending["reports"], KEY)
            samples = insert_new(connection, table["samples"], pending["samples"], KEY)
            rows = [row for row in pending["rows"] if (row["node"], row["epoch"], row["seq"]) in samples]
            if rows:
                connection.execute(table["sample_rows"].insert(), rows)
            insert_new(
                connection, table["statuses"], _changes(connection, pending["statuses"]), ("node", "at")
            )
            if self._dead:
                connection.execute(table["skipped"].insert(), self._dead)
            duplicates = len(pending["reports"]) + len(pending["samples"]) - len(reports) - len(samples)
            counts = {**self._skips, "duplicate": self._skips["duplicate"] + duplicates}
            add_counts(connection, self.fleet, {**counts, "unknown_fields": self._unknown})
        return reports, samples, duplicates

    def state(self) -> dict[str, Any]:
        """The database's totals for this fleet: reports, inferences, samples, skipped
        messages by reason, and per node the sequence numbers missing and the jumps."""
        return fleet_state(self.engine, self.fleet)

    def read_reports(self) -> list[dict[str, Any]]:
        """Every report collected, as the wire schema has it, in (node, seq) order."""
        return read_reports(self.engine, self.fleet)

    def finish(self) -> dict[str, Any]:
        """Flush; with ``out``, export there (samples.npz, reports.jsonl, drift.json/.html,
        collect.json, deadletter.jsonl). Returns the database's state with the drift summary."""
        self.flush()
        drift = drift_report(self.fleet, self.read_reports())
        mine = {
            "reports": self.reports,
            "samples": self.sample_count,
            "duplicates": self.skipped["duplicate"],
        }
        summary = {**self.state(), "drift": drift["fleet"], "collected": mine, "db": _shown(self.engine),
                   "out": None if self.out is None else str(self.out)}  # fmt: skip
        if self.out is not None:
            export(self.engine, self.fleet, self.out, self.key, summary)
        self.engine.dispose()
        return summary


def _changes(connection: Any, statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The statuses that change a node's last one: a retained status delivered again at each
    reconnect is not history."""
    import sqlalchemy as sa

    table = tables()["statuses"]
    last: dict[str, str | None] = {}
    changed = []
    for status in statuses:
        node = status["node"]
        if node not in last:
            query = sa.select(table.c.status).where(table.c.node == node).order_by(table.c.at.desc()).limit(1)
            last[node] = connection.execute(query).scalar()
        if last[node] != status["status"]:
            changed.append(status)
            last[node] = status["status"]
    return changed


def _key(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["node"], row["epoch"], row["seq"]


def _shown(engine: Any) -> str:
    return str(engine.url.render_as_string(hide_password=True))


def _dead_letter(fleet: str, topic: str, payload: bytes, reason: str, detail: str) -> dict[str, Any]:
    return {"fleet": fleet, "at": time.time(), "topic": topic[:1024], "reason": reason, "detail": detail,
            "bytes": len(payload), "payload": payload[:MAX_PAYLOAD_BYTES]}  # fmt: skip


@dataclass(frozen=True)
class CollectConfig:
    """Where ``fleet collect`` reads from and writes to, and when it stops."""

    broker: Broker
    fleet: str
    out: Path | None = None
    db: str | None = None
    """SQLite path or postgresql:// URL; default OUT/fleet.sqlite."""
    fleet_dir: Path | None = None
    group: str = "edgekit-collectors"
    """Shared-subscription group; "none" subscribes plainly."""
    session: str | None = None
    """Persistent session id; default: a slot of this host's own (see ``SessionSlot``)."""
    limits: Limits = Limits()
    max_samples: int | None = None

    def claim_session(self) -> SessionSlot:
        return SessionSlot(self.session) if self.session else SessionSlot.claim(self.fleet, self.group)


def collect(config: CollectConfig, progress: Callable[[Collector], None] | None = None) -> dict[str, Any]:
    """Collect until the limits, Ctrl-C or ``max_samples``; returns the summary.

    Every message is made durable first and acknowledged after, so a crash loses nothing:
    what was not acknowledged is delivered again, and sequence numbers drop the repeats.
    ``progress`` is called after each acknowledgement.
    """
    key = load_collector_key(config.fleet, config.fleet_dir)
    collector = Collector(config.fleet, config.out, key, config.db)
    shared = None if config.group == "none" else config.group
    topics = subscriptions(config.fleet, ("report", "sample", "status"), shared)
    slot = config.claim_session()
    inbox = Inbox(config.broker, topics, slot.session_id)
    try:
        inbox.start()
        unacked: list[tuple[int, int]] = []
        try:
            with _sigterm_stops():
                _take(collector, inbox, config, unacked, progress or (lambda _: None))
        except KeyboardInterrupt:
            pass
        finally:
            try:
                summary = {**collector.finish(), "session": slot.session_id}  # raises if the database is
                inbox.ack(unacked)  # down: nothing is acknowledged
            finally:
                inbox.stop()
    finally:
        slot.release()
    return summary


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM (systemd's stop, docker stop) ends a collection as Ctrl-C does: what was taken
    is committed and acknowledged, and the summary printed."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _take(
    collector: Collector, inbox: Inbox, config: CollectConfig, unacked: list[tuple[int, int]],
    progress: Callable[[Collector], None],
) -> None:
    started = last = flushed = time.monotonic()
    outage = Outage()
    while not config.limits.reached(started, last):
        if config.max_samples is not None and collector.sample_count >= config.max_samples:
            return
        message = inbox.get(0.1)
        if message is not None:
            last = time.monotonic()
            collector.handle(message[0], message[1])
            unacked.append((message[2], message[3]))
        due = len(unacked) >= ACK_EVERY or time.monotonic() - flushed > 0.5 or message is None
        if unacked and due and outage.ready():
            try:
                collector.flush()  # durable first, then acknowledged
            except DatabaseUnavailable as exc:
                outage.failed(str(exc))
                continue
            outage.cleared()
            inbox.ack(unacked)
            unacked.clear()
            flushed = time.monotonic()
            progress(collector)


class Outage:
    """Capped backoff while the database is unreachable or full, with one warning when it
    goes and one when it is back; messages keep waiting unacknowledged meanwhile."""

    def __init__(self, most_s: float = 5.0) -> None:
        self.most_s, self.delay, self.next_try = most_s, 0.25, 0.0
        self.since: float | None = None

    def ready(self) -> bool:
        return time.monotonic() >= self.next_try

    def failed(self, reason: str) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("edgekit: %s", reason)
        self.next_try = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.most_s)

    def cleared(self) -> None:
        if self.since is not None:
            log.warning(
                "edgekit: the fleet database is back after %.1f s; carrying on", time.monotonic() - self.since
            )
        self.since, self.delay = None, 0.25
