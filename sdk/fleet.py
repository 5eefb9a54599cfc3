"""The operator's side of telemetry: fleet keys, a live view, and the retraining collector.

Both ``watch`` and ``collect`` read the same topics; every message is validated against
the schema in ``edgekit.runtime.telemetry.schema``, and anything else is counted and skipped.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from pydantic import ValidationError

from edgekit.atomic import atomic_write, fsync_dir
from edgekit.errors import DataError, EdgekitError
from edgekit.runtime.telemetry.broker import Broker
from edgekit.runtime.telemetry.privacy import (
    PRIVATE_FILE,
    PUBLIC_FILE,
    SECRET_FILE,
    fleet_dir,
    load_sample_key,
    open_sample,
    read_sample_header,
)
from edgekit.runtime.telemetry.schema import (
    LATENCY_EDGES_MS,
    MAX_PAYLOAD_BYTES,
    SAMPLE_MAGIC,
    SCHEMA_VERSION,
    Report,
    SampleHeader,
    check_fleet_name,
    fleet_filter,
)
from edgekit.runtime.telemetry.stats import PSI_MODERATE, PSI_SIGNIFICANT
from edgekit.signing import write_secret

log = logging.getLogger("edgekit.fleet")
KINDS = ("report", "sample", "status")
SENT_ARRAYS = ("x", "pred", "confidence")
"""What a device seals into a sample message: inputs, predicted class, confidence."""
SAMPLE_ARRAYS = (*SENT_ARRAYS, "node", "seq")
"""samples.npz: what the device sent, and the node and message sequence number it came in
(a window's samples follow its report, so ``seq`` orders them in time)."""
SKIP_REASONS = ("malformed", "unknown_version", "oversized", "duplicate", "undecryptable", "wrong_topic")


def init_fleet(fleet: str, folder: Path | None = None) -> Path:
    """Create a fleet's keys: the X25519 key pair for samples and the pseudonym secret.

    ``fleet.key`` stays with the operator; devices get ``fleet.pub`` and ``fleet.secret``.
    """
    try:
        check_fleet_name(fleet)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    where = fleet_dir(fleet, folder)
    where.mkdir(parents=True, exist_ok=True)
    private = x25519.X25519PrivateKey.generate()
    write_secret(
        where / PRIVATE_FILE,
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    write_secret(where / SECRET_FILE, secrets.token_hex(32).encode() + b"\n")
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(where / PUBLIC_FILE, public)
    return where


class Skip(Exception):
    """A message that is counted and skipped; ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    kind: str
    node: str
    report: Report | None = None
    header: SampleHeader | None = None
    head: bytes = b""
    body: bytes = b""
    status: str = ""


def parse(fleet: str, topic: str, payload: bytes) -> Message:
    """Classify one MQTT message, or raise Skip."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "edgekit" or parts[1] != fleet or parts[3] not in KINDS:
        raise Skip("wrong_topic")
    node, kind = parts[2], parts[3]
    if kind == "status":
        return Message("status", node, status=payload.decode(errors="replace")[:16])
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Skip("oversized")
    if kind == "sample":
        if not payload.startswith(SAMPLE_MAGIC):
            raise Skip("malformed")
        try:
            header, head, body = read_sample_header(payload)
        except (ValueError, ValidationError):
            length = int.from_bytes(payload[4:6], "big")
            raise Skip(_version_or_malformed(payload[6 : 6 + length])) from None
        if header.node != node:
            raise Skip("malformed")
        return Message("sample", node, header=header, head=head, body=body)
    try:
        report = Report.model_validate_json(payload)
    except ValidationError:
        raise Skip(_version_or_malformed(payload)) from None
    if report.node != node:
        raise Skip("malformed")
    return Message("report", node, report=report)


def _version_or_malformed(payload: bytes) -> str:
    try:
        version = json.loads(payload).get("v")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return "malformed"
    return "unknown_version" if version not in (None, SCHEMA_VERSION) else "malformed"


def percentile_ms(counts: Iterable[int], q: float) -> float | None:
    """Upper edge of the latency bucket holding quantile ``q`` (the last edge for the overflow)."""
    values = list(counts)
    total = sum(values)
    if total <= 0:
        return None
    running = 0
    for index, count in enumerate(values):
        running += count
        if running >= q * total:
            return LATENCY_EDGES_MS[min(index, len(LATENCY_EDGES_MS) - 1)]
    return LATENCY_EDGES_MS[-1]


def drift_level(score: float | None) -> str:
    if score is None:
        return "-"
    if score >= PSI_SIGNIFICANT:
        return "drift"
    return "shift" if score >= PSI_MODERATE else "ok"


def summarize(report: Report) -> dict[str, Any]:
    """The numbers an operator reads off one report."""
    seconds = max(report.end - report.start, 1e-6)
    return {
        "node": report.node,
        "seq": report.seq,
        "model": f"{report.model.name} v{report.model.version} {report.model.precision}",
        "end": report.end,
        "inferences": report.inferences,
        "rate": round(report.inferences / seconds, 2),
        "p50_ms": percentile_ms(report.latency_ms, 0.5),
        "p95_ms": percentile_ms(report.latency_ms, 0.95),
        "error_rate": round(report.errors / report.calls, 4) if report.calls else 0.0,
        "drift": report.drift.score if report.drift else None,
        "input_psi": report.drift.input_psi if report.drift else None,
        "output_psi": report.drift.output_psi if report.drift else None,
        "dropped": report.dropped,
        "samples": report.samples,
    }


class Inbox:
    """A subscriber whose messages wait in a queue for the caller's thread. With
    ``session`` it keeps a persistent MQTT 5 session, so messages queue at the broker
    while it is away, and it acknowledges each one only when ``ack`` is called."""

    def __init__(self, broker: Broker, subscriptions: list[str], session: str | None = None) -> None:
        self.broker = broker
        self.subscriptions = subscriptions
        self.queue: queue.Queue[tuple[str, bytes, int, int]] = queue.Queue()
        client = broker.client(session or f"edgekit-watch-{secrets.token_hex(4)}")
        client.manual_ack_set(session is not None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self.session = session
        self.connected = False
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._network, name="edgekit-inbox", daemon=True)

    def start(self, timeout: float = 10.0) -> Inbox:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 7 * 86400 if self.session else 0
        try:
            self.client.connect(
                self.broker.host, self.broker.port, clean_start=self.session is None, properties=properties
            )
        except Exception as exc:
            raise EdgekitError(
                f"cannot reach broker {self.broker.url}: {exc}; check the address, port and TLS files"
            ) from exc
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.connected:
            self.stop()
            raise EdgekitError(f"broker {self.broker.url} did not accept the connection within {timeout:g} s")
        return self

    def _network(self) -> None:
        """paho's network loop, reconnecting with capped backoff whatever went wrong."""
        delay, attempt = 0.1, time.monotonic()
        while not self._halt.is_set():
            try:
                up = self.client.loop(timeout=0.1) == 0  # also reads a pending CONNACK
                if self.connected:
                    delay = 0.1
                    continue
                if up and time.monotonic() - attempt < 5:
                    continue  # connected at the socket, waiting for the broker's answer
                self._halt.wait(delay)
                attempt = time.monotonic()
                self.client.reconnect()
            except Exception as exc:  # refused, reset, TLS: keep trying
                log.debug("reconnecting to %s: %s", self.broker.url, exc)
                delay = min(delay * 2, 2.0)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected = False

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("broker %s refused the connection: %s", self.broker.url, reason)
            return
        for subscription in self.subscriptions:
            client.subscribe(subscription, qos=1)
        self.connected = True

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.queue.put((message.topic, bytes(message.payload), message.mid, message.qos))

    def get(self, timeout: float) -> tuple[str, bytes, int, int] | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def ack(self, mids: list[tuple[int, int]]) -> None:
        for mid, qos in mids:
            self.client.ack(mid, qos)

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.client.disconnect()


@dataclass
class NodeState:
    node: str
    status: str = "?"
    last: dict[str, Any] = field(default_factory=dict)
    reports: int = 0


class FleetView:
    """What ``fleet watch`` shows: the latest numbers per node, and what was skipped."""

    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self.nodes: dict[str, NodeState] = {}
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self._seen: dict[str, set[int]] = {}

    def handle(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """Apply one message; returns the event line for ``--json``, or None if skipped."""
        try:
            message = parse(self.fleet, topic, payload)
        except Skip as skip:
            self.skipped[skip.reason] += 1
            return None
        state = self.nodes.setdefault(message.node, NodeState(message.node))
        if message.kind == "status":
            if not message.status:  # cleared when a pseudonym's epoch ended
                self.nodes.pop(message.node, None)
                return {"event": "gone", "node": message.node}
            state.status = message.status
            return {"event": "status", "node": message.node, "status": message.status}
        if message.kind == "sample":
            return None
        assert message.report is not None
        seen = self._seen.setdefault(message.node, set())
        if message.report.seq in seen:
            self.skipped["duplicate"] += 1
            return None
        seen.add(message.report.seq)
        state.reports += 1
        if state.status == "?":
            state.status = "online"
        if not state.last or message.report.end >= state.last["end"]:
            state.last = summarize(message.report)
        return {"event": "report", **summarize(message.report)}

    def table(self) -> Any:
        from rich.table import Table

        online = sum(1 for s in self.nodes.values() if s.status == "online")
        skipped = sum(self.skipped.values())
        table = Table(
            title=f"fleet {self.fleet}: {online} online, {len(self.nodes) - online} offline"
            + (f", {skipped} messages skipped" if skipped else ""),
            title_justify="left",
        )
        table.add_column("node", no_wrap=True, min_width=12)  # a pseudonym's first 12 hex digits
        for column in ("status", "model", "inf/s", "p50 ms", "p95 ms", "errors", "drift", "dropped"):
            table.add_column(column, justify="left" if column in ("status", "model") else "right")
        for state in sorted(self.nodes.values(), key=lambda s: s.node):
            last = state.last
            drift = last.get("drift")
            drift_text = "-" if drift is None else f"{drift:.2f} {drift_level(drift)}"
            style = (
                "red"
                if drift_level(drift) == "drift"
                else ("yellow" if drift_level(drift) == "shift" else "")
            )
            table.add_row(
                state.node[:12],
                state.status,
                last.get("model", "-"),
                _fmt(last.get("rate")),
                _fmt(last.get("p50_ms")),
                _fmt(last.get("p95_ms")),
                "-" if not last else f"{100 * last['error_rate']:.1f}%",
                drift_text,
                str(last.get("dropped", "-")),
                style=style,
            )
        return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


class Collector:
    """Turns a fleet's reports and samples into retraining data and a drift report.

    ``out`` holds ``shards/*.npz`` (decrypted samples), ``samples.npz`` (all of them, arrays
    ``SAMPLE_ARRAYS``: usable as --calibration), ``reports.jsonl``, ``collect.json`` (counts, the
    sequence numbers seen, gaps) and ``drift.json`` / ``drift.html``. Restarting on the same
    folder carries on: shards and the seen sequence numbers are reloaded.
    """

    def __init__(self, fleet: str, out: Path, private_key: x25519.X25519PrivateKey) -> None:
        self.fleet = fleet
        self.out = out
        self.key = private_key
        (out / "shards").mkdir(parents=True, exist_ok=True)
        self.state_path = out / "collect.json"
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.shards: list[str] = state.get("shards", [])
        self.seen: dict[str, set[int]] = {n: _expand(r) for n, r in state.get("seen", {}).items()}
        self.skipped = {reason: state.get("skipped", {}).get(reason, 0) for reason in SKIP_REASONS}
        self.reports = int(state.get("reports", 0))
        self.inferences = int(state.get("inferences", 0))
        self.sample_count = int(state.get("samples", 0))
        for orphan in (out / "shards").glob("*.npz"):  # written, but a crash came before collect.json
            if orphan.name not in self.shards:
                orphan.unlink()
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_reports: list[str] = []
        self._pending_seen: dict[str, set[int]] = {}

    def handle(self, topic: str, payload: bytes) -> str:
        """Take one message; returns what happened: report, sample, status or a skip reason."""
        try:
            message = parse(self.fleet, topic, payload)
            if message.kind == "status":
                return "status"
            seq = message.report.seq if message.report else message.header.seq  # type: ignore[union-attr]
            if seq in self.seen.get(message.node, ()) or seq in self._pending_seen.get(message.node, ()):
                raise Skip("duplicate")
            if message.kind == "sample":
                try:
                    arrays = open_sample(message.head, message.body, self.key)
                except ValueError:
                    raise Skip("undecryptable") from None
                if not set(SENT_ARRAYS) <= set(arrays):
                    raise Skip("malformed")
                count = len(arrays["x"])
                arrays = {name: arrays[name] for name in SENT_ARRAYS}
                arrays["node"] = np.full(count, message.node)
                arrays["seq"] = np.full(count, seq, np.int64)
                self._pending.append(arrays)
            else:
                assert message.report is not None
                self._pending_reports.append(message.report.model_dump_json())
            self._pending_seen.setdefault(message.node, set()).add(seq)
            return message.kind
        except Skip as skip:
            self.skipped[skip.reason] += 1
            return skip.reason

    @property
    def dirty(self) -> bool:
        return bool(self._pending or self._pending_reports or self._pending_seen)

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
            with open(self.out / "reports.jsonl", "a") as handle:
                for line in self._pending_reports:
                    handle.write(line + "\n")
                    report = json.loads(line)
                    self.reports += 1
                    self.inferences += report["inferences"]
                handle.flush()
                os.fsync(handle.fileno())
        for node, seqs in self._pending_seen.items():
            self.seen.setdefault(node, set()).update(seqs)
        self._pending, self._pending_reports, self._pending_seen = [], [], {}
        atomic_write(self.state_path, json.dumps(self.state(), indent=2).encode())

    def state(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "reports": self.reports,
            "inferences": self.inferences,
            "samples": self.sample_count,
            "shards": self.shards,
            "skipped": self.skipped,
            "seen": {node: _ranges(seqs) for node, seqs in sorted(self.seen.items())},
            "gaps": {node: gaps for node, seqs in self.seen.items() if (gaps := _gaps(seqs))},
        }

    def read_reports(self) -> list[dict[str, Any]]:
        """Every report collected, deduplicated (a crash between writes may repeat a line)."""
        path = self.out / "reports.jsonl"
        if not path.exists():
            return []
        unique: dict[tuple[str, int], dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                report = json.loads(line)
                unique[(report["node"], report["seq"])] = report
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
    return {name: np.concatenate([part[name] for part in parts]) for name in SAMPLE_ARRAYS}


def drift_report(fleet: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    nodes: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        if report.get("drift") is None:
            continue
        nodes.setdefault(report["node"], []).append(
            {
                "end": report["end"],
                "inferences": report["inferences"],
                "score": report["drift"]["score"],
                "input_psi": report["drift"]["input_psi"],
                "output_psi": report["drift"]["output_psi"],
            }
        )
    latest = {node: series[-1]["score"] for node, series in nodes.items() if series}
    flagged = sorted(node for node, score in latest.items() if score >= PSI_SIGNIFICANT)
    return {
        "fleet": {
            "name": fleet,
            "nodes": len(nodes),
            "windows": sum(len(s) for s in nodes.values()),
            "max_score": max(latest.values(), default=None),
            "drifting_nodes": flagged,
            "thresholds": {"shift": PSI_MODERATE, "drift": PSI_SIGNIFICANT},
        },
        "nodes": nodes,
    }


def drift_html(drift: dict[str, Any]) -> str:
    """A small self-contained page: drift score per node over time, with the thresholds."""
    image = ""
    if drift["nodes"]:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            image = "<p>Install matplotlib (pip install 'edgekit[fleet]') for the plot.</p>"
        else:
            figure, axis = plt.subplots(figsize=(8, 3.5), dpi=110)
            start = min(point["end"] for series in drift["nodes"].values() for point in series)
            for node, series in sorted(drift["nodes"].items()):
                axis.plot(
                    [(p["end"] - start) / 60 for p in series],
                    [p["score"] for p in series],
                    marker=".",
                    label=node[:8],
                )
            axis.axhline(PSI_MODERATE, color="orange", linestyle="--", linewidth=1, label="shift (0.1)")
            axis.axhline(PSI_SIGNIFICANT, color="red", linestyle="--", linewidth=1, label="drift (0.25)")
            axis.set_xlabel("minutes since the first report")
            axis.set_ylabel("drift score (PSI)")
            axis.legend(fontsize="small", ncols=2)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png")
            plt.close(figure)
            encoded = base64.b64encode(buffer.getvalue()).decode()
            image = f'<img alt="drift score per node" src="data:image/png;base64,{encoded}">'
    fleet = drift["fleet"]
    rows = "".join(
        f"<tr><td><code>{node[:12]}</code></td><td>{len(series)}</td><td>{series[-1]['score']:.3f}</td>"
        f"<td>{drift_level(series[-1]['score'])}</td></tr>"
        for node, series in sorted(drift["nodes"].items())
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekit drift: {fleet["name"]}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}
td,th{{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}}</style>
</head><body>
<h1>Drift in fleet {fleet["name"]}</h1>
<p>{fleet["nodes"]} nodes, {fleet["windows"]} windows. Population stability index of each window's
inputs and predictions against the bundle's reference statistics: below {PSI_MODERATE} stable,
{PSI_MODERATE}-{PSI_SIGNIFICANT} a shift, above {PSI_SIGNIFICANT} drift.
Drifting now: {", ".join(f"<code>{n[:12]}</code>" for n in fleet["drifting_nodes"]) or "none"}.</p>
{image}
<table><tr><th>node</th><th>windows</th><th>latest score</th><th>reading</th></tr>{rows}</table>
</body></html>
"""


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


def _gaps(seqs: set[int]) -> int:
    return (max(seqs) - min(seqs) + 1 - len(seqs)) if seqs else 0


def load_collector_key(fleet: str, folder: Path | None) -> x25519.X25519PrivateKey:
    return load_sample_key(fleet_dir(fleet, folder) / PRIVATE_FILE)


def subscriptions(fleet: str, kinds: tuple[str, ...], group: str | None = None) -> list[str]:
    """Topic filters for ``kinds``; with ``group``, MQTT 5 shared subscriptions, so several
    collectors in one group split the messages between them."""
    filters = [fleet_filter(fleet, kind) for kind in kinds]
    return [f"$share/{group}/{f}" for f in filters] if group else filters
