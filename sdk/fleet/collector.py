"""``fleet collect``: a fleet's samples and reports, made durable before they are
acknowledged, and the loop that does it."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from edgekit.atomic import atomic_write, fsync_dir
from edgekit.errors import EdgekitError
from edgekit.fleet.drift import drift_html, drift_report
from edgekit.fleet.inbox import Inbox, Limits, subscriptions
from edgekit.fleet.keys import load_collector_key
from edgekit.fleet.messages import SKIP_REASONS, Skip, parse
from edgekit.runtime.telemetry.broker import Broker
from edgekit.runtime.telemetry.privacy import open_sample
from edgekit.runtime.telemetry.schema import MAX_PAYLOAD_BYTES

log = logging.getLogger("edgekit.fleet")

SENT_ARRAYS = ("x", "pred", "confidence")
"""What a device seals into a sample message: inputs, predicted class, confidence."""
TEXT_ARRAY = "text"
"""A text model's samples also carry the texts, de-identified on the device."""
SAMPLE_ARRAYS = (*SENT_ARRAYS, "node", "seq")
"""samples.npz: what the device sent, and the node and message sequence number it came in
(a window's samples follow its report, so ``seq`` orders them in time)."""
ACK_EVERY = 256
"""Messages taken before they are made durable and acknowledged (or every half second)."""
MAX_SEQ_STEP = 100_000
"""A node's sequence number may skip this many (messages its outbox dropped); a larger jump
is counted as an anomaly and starts a new run, not a gap of that size."""


class Collector:
    """Turns a fleet's reports and samples into retraining data and a drift report.

    ``out`` holds ``shards/*.npz`` (decrypted samples), ``samples.npz`` (all of them, arrays
    ``SAMPLE_ARRAYS``: usable as --calibration), ``reports.jsonl``, ``collect.json`` (counts, the
    sequence numbers seen, gaps) and ``drift.json`` / ``drift.html``. Every skipped message but a
    duplicate is set aside in ``deadletter.jsonl`` with its topic and reason. Restarting on the
    same folder carries on: shards and the seen sequence numbers are reloaded.
    """

    def __init__(self, fleet: str, out: Path, private_key: x25519.X25519PrivateKey) -> None:
        self.fleet = fleet
        self.out = out
        self.key = private_key
        (out / "shards").mkdir(parents=True, exist_ok=True)
        self.state_path = out / "collect.json"
        state = _load_state(self.state_path)
        self.shards: list[str] = state.get("shards", [])
        self.seen: dict[str, set[int]] = {n: _expand(r) for n, r in state.get("seen", {}).items()}
        self.skipped = {reason: state.get("skipped", {}).get(reason, 0) for reason in SKIP_REASONS}
        self.reports = int(state.get("reports", 0))
        self.inferences = int(state.get("inferences", 0))
        self.sample_count = int(state.get("samples", 0))
        self.unknown_fields = int(state.get("unknown_fields", 0))
        for orphan in (out / "shards").glob("*.npz"):  # written, but a crash came before collect.json
            if orphan.name not in self.shards:
                orphan.unlink()
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_reports: list[str] = []
        self._pending_inferences = 0
        self._pending_seen: dict[str, set[int]] = {}
        self._dead: list[str] = []

    def handle(self, topic: str, payload: bytes) -> str:
        """Take one message; returns what happened: report, sample, status or a skip reason.
        Never raises: whatever goes wrong with one message skips it, counted and set aside."""
        try:
            return self._take(topic, payload)
        except Skip as skip:
            reason, detail = skip.reason, ""
        except Exception as exc:  # noqa: BLE001 - one message must never stop the collection
            reason, detail = "unprocessable", f"{type(exc).__name__}: {exc}"[:300]
            log.warning(
                "edgekit: a message on %s could not be processed (%s); set aside", topic[:200], detail
            )
        self.skipped[reason] += 1
        if reason != "duplicate":
            self._dead.append(_dead_letter(topic, payload, reason, detail))
        return reason

    def _take(self, topic: str, payload: bytes) -> str:
        message = parse(self.fleet, topic, payload)
        if message.kind == "status":
            return "status"
        seq = message.report.seq if message.report else message.header.seq  # type: ignore[union-attr]
        if seq in self.seen.get(message.node, ()) or seq in self._pending_seen.get(message.node, ()):
            raise Skip("duplicate")
        if message.report is not None:
            self._pending_reports.append(message.report.model_dump_json())
            self._pending_inferences += message.report.inferences
        else:
            self._pending.append(self._open(message.head, message.body, message.node, seq))
        self._pending_seen.setdefault(message.node, set()).add(seq)
        self.unknown_fields += len(message.unknown_fields)
        return message.kind

    def _open(self, head: bytes, body: bytes, node: str, seq: int) -> dict[str, np.ndarray]:
        """A sample's arrays, decrypted, with the node and sequence number it came in."""
        try:
            arrays = open_sample(head, body, self.key)
        except ValueError:
            raise Skip("undecryptable") from None
        if not set(SENT_ARRAYS) <= set(arrays):
            raise Skip("malformed")
        count = len(arrays["x"])
        text = arrays.get(TEXT_ARRAY)
        if text is not None and (text.dtype.kind != "U" or text.shape != (count,)):
            raise Skip("malformed")
        return {
            **{name: arrays[name] for name in SENT_ARRAYS},
            **({TEXT_ARRAY: text} if text is not None else {}),
            "node": np.full(count, node),
            "seq": np.full(count, seq, np.int64),
        }

    def flush(self) -> None:
        """Make everything taken so far durable: shard, reports, then collect.json."""
        if self._pending:
            name = f"samples-{len(self.shards) + 1:05d}.npz"
            buffer = io.BytesIO()
            np.savez(buffer, **_merge(self._pending))
            atomic_write(self.out / "shards" / name, buffer.getvalue())
            self.sample_count += sum(len(a["x"]) for a in self._pending)
            self.shards.append(name)
        if self._pending_reports:
            _append_lines(self.out / "reports.jsonl", self._pending_reports)
            self.reports += len(self._pending_reports)
            self.inferences += self._pending_inferences
        if self._dead:
            _append_lines(self.out / "deadletter.jsonl", self._dead)
        for node, seqs in self._pending_seen.items():
            self.seen.setdefault(node, set()).update(seqs)
        self._pending, self._pending_reports, self._pending_seen, self._dead = [], [], {}, []
        self._pending_inferences = 0
        atomic_write(self.state_path, json.dumps(self.state(), indent=2).encode())

    def state(self) -> dict[str, Any]:
        runs = {node: _runs(seqs) for node, seqs in self.seen.items()}
        return {
            "fleet": self.fleet,
            "reports": self.reports,
            "inferences": self.inferences,
            "samples": self.sample_count,
            "shards": self.shards,
            "skipped": self.skipped,
            "unknown_fields": self.unknown_fields,
            "seen": {node: _ranges(seqs) for node, seqs in sorted(self.seen.items())},
            "gaps": {node: gaps for node, found in runs.items() if (gaps := _gaps(found))},
            "seq_jumps": {node: len(found) - 1 for node, found in runs.items() if len(found) > 1},
        }

    def read_reports(self) -> list[dict[str, Any]]:
        """Every report collected, deduplicated (a crash between writes may repeat a line)."""
        path = self.out / "reports.jsonl"
        if not path.exists():
            return []
        unique: dict[tuple[str, int], dict[str, Any]] = {}
        for line in path.read_text(errors="replace").splitlines():
            try:
                report = json.loads(line)
                unique[(report["node"], report["seq"])] = report
            except (ValueError, KeyError, TypeError):
                continue  # blank, or a line a crash cut short: its message was never acknowledged
        return sorted(unique.values(), key=lambda r: (r["node"], r["seq"]))

    def finish(self) -> dict[str, Any]:
        """Flush, merge the shards into samples.npz, and write the drift report."""
        self.flush()
        if self.shards:
            parts = [np.load(self.out / "shards" / name, allow_pickle=False) for name in self.shards]
            buffer = io.BytesIO()
            np.savez(buffer, **_merge(parts))
            atomic_write(self.out / "samples.npz", buffer.getvalue())
        drift = drift_report(self.fleet, self.read_reports())
        atomic_write(self.out / "drift.json", json.dumps(drift, indent=2).encode())
        atomic_write(self.out / "drift.html", drift_html(drift).encode())
        fsync_dir(self.out)
        return {**self.state(), "drift": drift["fleet"], "out": str(self.out)}


def _merge(parts: list[Any]) -> dict[str, Any]:
    texts = all(TEXT_ARRAY in part for part in parts)
    names = (*SAMPLE_ARRAYS, TEXT_ARRAY) if texts else SAMPLE_ARRAYS
    return {name: np.concatenate([part[name] for part in parts]) for name in names}


def _ranges(seqs: set[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for seq in sorted(seqs):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1][1] = seq
        else:
            ranges.append([seq, seq])
    return ranges


def _expand(ranges: list[list[int]]) -> set[int]:
    return {seq for start, end in ranges for seq in range(start, end + 1)}


def _runs(seqs: set[int]) -> list[list[int]]:
    """Sorted sequence numbers split where one jumps by more than MAX_SEQ_STEP."""
    runs: list[list[int]] = []
    for seq in sorted(seqs):
        if runs and seq - runs[-1][-1] <= MAX_SEQ_STEP:
            runs[-1].append(seq)
        else:
            runs.append([seq])
    return runs


def _gaps(runs: list[list[int]]) -> int:
    """Sequence numbers missing inside the runs (a jump between runs is not a gap)."""
    return sum(run[-1] - run[0] + 1 - len(run) for run in runs)


def _load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise ValueError("not an object")
        return state
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgekitError(
            f"{path} is corrupt ({exc}); move it away to start a new collection there"
        ) from None


def _dead_letter(topic: str, payload: bytes, reason: str, detail: str) -> str:
    kept = payload[:MAX_PAYLOAD_BYTES]
    entry = {"topic": topic[:1024], "reason": reason, "detail": detail, "bytes": len(payload),
             "payload": base64.b64encode(kept).decode(), "truncated": len(kept) < len(payload)}  # fmt: skip
    return json.dumps(entry)


def _append_lines(path: Path, lines: list[str]) -> None:
    with open(path, "a") as handle:
        for line in lines:
            handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class CollectConfig:
    """Where ``fleet collect`` reads from and writes to, and when it stops."""

    broker: Broker
    fleet: str
    out: Path
    fleet_dir: Path | None = None
    group: str = "edgekit-collectors"
    """Shared-subscription group; "none" subscribes plainly."""
    session: str | None = None
    limits: Limits = Limits()
    max_samples: int | None = None

    @property
    def session_id(self) -> str:
        return self.session or f"edgekit-collect-{self.fleet}-{self.group}-{socket.gethostname()}"


def collect(config: CollectConfig, progress: Callable[[Collector], None] | None = None) -> dict[str, Any]:
    """Collect until the limits, Ctrl-C or ``max_samples``; returns the summary.

    Every message is made durable first and acknowledged after, so a crash loses nothing:
    what was not acknowledged is delivered again, and sequence numbers drop the repeats.
    ``progress`` is called after each acknowledgement.
    """
    collector = Collector(config.fleet, config.out, load_collector_key(config.fleet, config.fleet_dir))
    shared = None if config.group == "none" else config.group
    inbox = Inbox(config.broker, subscriptions(config.fleet, ("report", "sample"), shared), config.session_id)
    inbox.start()
    unacked: list[tuple[int, int]] = []
    try:
        _take(collector, inbox, config, unacked, progress or (lambda _: None))
    except KeyboardInterrupt:
        pass
    finally:
        summary = collector.finish()
        inbox.ack(unacked)
        inbox.stop()
    return summary


def _take(
    collector: Collector, inbox: Inbox, config: CollectConfig, unacked: list[tuple[int, int]],
    progress: Callable[[Collector], None],
) -> None:  # fmt: skip
    started = last = flushed = time.monotonic()
    while not config.limits.reached(started, last):
        if config.max_samples is not None and collector.sample_count >= config.max_samples:
            return
        message = inbox.get(0.1)
        if message is not None:
            last = time.monotonic()
            collector.handle(message[0], message[1])
            unacked.append((message[2], message[3]))
        if unacked and (len(unacked) >= ACK_EVERY or time.monotonic() - flushed > 0.5 or message is None):
            collector.flush()  # durable first, then acknowledged
            inbox.ack(unacked)
            unacked.clear()
            flushed = time.monotonic()
            progress(collector)
