"""Reading what devices publish: every message is classified, validated against the wire
schema under its versioning rule, or counted and skipped."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from edgekit.core.telemetry import (
    KINDS,
    LATENCY_EDGES_MS,
    MAX_PAYLOAD_BYTES,
    SAMPLE_MAGIC,
    SCHEMA_VERSION,
    Report,
    SampleHeader,
    read_message,
)
from edgekit.runtime.telemetry.privacy import split_sample
from edgekit.runtime.telemetry.stats import PSI_MODERATE, PSI_SIGNIFICANT

SKIP_REASONS = (
    "malformed", "unknown_version", "oversized", "duplicate", "undecryptable", "wrong_topic", "unprocessable",
)
"""Why a message was skipped; "unprocessable" is anything else that went wrong with one."""


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
    unknown_fields: tuple[str, ...] = ()
    """Fields a newer device added that this version ignores (see the schema's rule)."""


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
        return _sample(node, payload)
    report, unknown = _read(Report, payload)
    if report.node != node:
        raise Skip("malformed")
    return Message("report", node, report=report, unknown_fields=unknown)


def _sample(node: str, payload: bytes) -> Message:
    if not payload.startswith(SAMPLE_MAGIC):
        raise Skip("malformed")
    try:
        head, body = split_sample(payload)
    except ValueError:
        raise Skip("malformed") from None
    header, unknown = _read(SampleHeader, head)
    if header.node != node:
        raise Skip("malformed")
    return Message("sample", node, header=header, head=head, body=body, unknown_fields=unknown)


def _read(schema: Any, payload: bytes) -> Any:
    """(message, unknown fields) under the versioning rule, or Skip. The parser limits
    nesting and refuses Infinity and NaN; timestamps must be near now."""
    try:
        data = from_json(payload, allow_inf_nan=False)
    except ValueError:
        raise Skip("malformed") from None
    if isinstance(data, dict) and data.get("v") not in (None, SCHEMA_VERSION):
        raise Skip("unknown_version")
    try:
        return read_message(schema, data, now=time.time())
    except ValidationError:
        raise Skip("malformed") from None


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
