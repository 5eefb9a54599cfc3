"""``fleet export``: the database's samples as ``samples.npz`` (what ``convert --calibration``
and ``--eval`` take), its reports, drift report and skipped messages as files."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from edgekit.core.atomic import atomic_write, fsync_dir
from edgekit.core.errors import EdgekitError
from edgekit.fleet.database import tables
from edgekit.fleet.drift import drift_html, drift_report
from edgekit.fleet.queries import fleets, read_reports
from edgekit.runtime.telemetry.privacy import open_sample, split_sample

SENT_ARRAYS = ("x", "pred", "confidence")
"""What a device seals into a sample message: inputs, predicted class, confidence."""
TEXT_ARRAY = "text"
"""A text model's samples also carry the texts, de-identified on the device."""
GENERATED_ARRAY = "generated"
"""A decoder's samples carry the prompt as ``text`` and what it generated, both de-identified;
``pred`` is the index of the stop reason (``core.telemetry.STOP_REASONS``), ``x`` is empty."""
TEXTS = (TEXT_ARRAY, GENERATED_ARRAY)
SAMPLE_ARRAYS = (*SENT_ARRAYS, "node", "seq")
"""samples.npz: what the device sent, and the node and message sequence number it came in
(a window's samples follow its report, so ``seq`` orders them in time). With labels, ``y``."""


def open_message(sealed: bytes, key: x25519.X25519PrivateKey) -> dict[str, np.ndarray]:
    """A stored sample message's arrays, decrypted here, in the operator's process."""
    head, body = split_sample(sealed)
    return open_sample(head, body, key)


def sample_arrays(
    engine: Any, fleet: str, key: x25519.X25519PrivateKey, labelled: bool = False
) -> dict[str, np.ndarray] | None:
    """Every sample of ``fleet`` in arrival order (only labelled ones with ``labelled``), with
    ``y`` when each of them has a label; None when there is none."""
    import sqlalchemy as sa

    table = tables()
    samples, rows = table["samples"], table["sample_rows"]
    labels: dict[tuple[str, int, int], dict[int, int | None]] = {}
    with engine.connect() as connection:
        for node, epoch, seq, idx, label in connection.execute(
            sa.select(rows.c.node, rows.c.epoch, rows.c.seq, rows.c.idx, rows.c.label)
        ):
            labels.setdefault((node, epoch, seq), {})[idx] = label
        messages = connection.execute(
            sa.select(samples.c.node, samples.c.epoch, samples.c.seq, samples.c.sealed)
            .where(samples.c.fleet == fleet)
            .order_by(samples.c.received, samples.c.node, samples.c.seq)
        ).all()
    parts = []
    for node, epoch, seq, sealed in messages:
        arrays = open_message(bytes(sealed), key)
        found = labels.get((node, epoch, seq), {})
        y = np.array([-1 if found.get(i) is None else found[i] for i in range(len(arrays["x"]))], np.int64)
        keep = y >= 0 if labelled else np.ones(len(y), bool)
        part = {name: arrays[name][keep] for name in (*SENT_ARRAYS, *TEXTS) if name in arrays}
        parts.append(
            {
                **part,
                "node": np.full(int(keep.sum()), node),
                "seq": np.full(int(keep.sum()), seq),
                "y": y[keep],
            }
        )
    if not parts or not sum(len(p["x"]) for p in parts):
        return None
    merged = _merge(parts)
    if (merged["y"] < 0).any():
        del merged["y"]
    return merged


def _merge(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    texts = tuple(name for name in TEXTS if all(name in part for part in parts))
    return {name: np.concatenate([part[name] for part in parts]) for name in (*SAMPLE_ARRAYS, "y", *texts)}


def export(
    engine: Any,
    fleet: str,
    out: Path,
    key: x25519.X25519PrivateKey,
    summary: dict[str, Any],
    labelled: bool = False,
) -> list[str]:
    """Write samples.npz, reports.jsonl, drift.json, drift.html, deadletter.jsonl and
    collect.json (``summary``) into ``out``; returns the names written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    arrays = sample_arrays(engine, fleet, key, labelled)
    if arrays is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        atomic_write(out / "samples.npz", buffer.getvalue())
        written.append("samples.npz")
        if GENERATED_ARRAY in arrays:
            atomic_write(out / "generations.jsonl", _generations(arrays).encode())
            written.append("generations.jsonl")
    reports = read_reports(engine, fleet)
    atomic_write(out / "reports.jsonl", "".join(json.dumps(r) + "\n" for r in reports).encode())
    drift = drift_report(fleet, reports)
    atomic_write(out / "drift.json", json.dumps(drift, indent=2).encode())
    atomic_write(out / "drift.html", drift_html(drift).encode())
    atomic_write(out / "deadletter.jsonl", _dead_letters(engine, fleet).encode())
    atomic_write(out / "collect.json", json.dumps(summary, indent=2).encode())
    fsync_dir(out)
    return [*written, "reports.jsonl", "drift.json", "drift.html", "deadletter.jsonl", "collect.json"]


def _generations(arrays: dict[str, np.ndarray]) -> str:
    """A decoder's captured generations as JSONL: ``text`` (prompt and generation, what
    ``convert --eval`` and retraining read), and each part with its stop reason and confidence."""
    from edgekit.core.telemetry import STOP_REASONS

    lines = []
    for prompt, made, reason, confidence, node in zip(
        arrays[TEXT_ARRAY], arrays[GENERATED_ARRAY], arrays["pred"], arrays["confidence"], arrays["node"],
        strict=True,
    ):  # fmt: skip
        stop = STOP_REASONS[reason] if 0 <= reason < len(STOP_REASONS) else "unknown"
        line = {"text": f"{prompt} {made}", "prompt": str(prompt), "generated": str(made),
                "stop_reason": stop, "confidence": round(float(confidence), 4),
                "node": str(node)}  # fmt: skip
        lines.append(json.dumps(line) + "\n")
    return "".join(lines)


def _dead_letters(engine: Any, fleet: str) -> str:
    import sqlalchemy as sa

    skipped = tables()["skipped"]
    lines = []
    with engine.connect() as connection:
        for topic, reason, detail, size, payload in connection.execute(
            sa.select(skipped.c.topic, skipped.c.reason, skipped.c.detail, skipped.c.bytes, skipped.c.payload)
            .where(skipped.c.fleet == fleet)
            .order_by(skipped.c.id)
        ):
            entry = {
                "topic": topic,
                "reason": reason,
                "detail": detail,
                "bytes": size,
                "payload": base64.b64encode(payload).decode(),
                "truncated": len(payload) < size,
            }
            lines.append(json.dumps(entry) + "\n")
    return "".join(lines)


def check_fleet_known(engine: Any, fleet: str) -> None:
    """Refuse an export of a fleet the database holds nothing of, naming the ones it holds."""
    held_fleets = fleets(engine)
    if fleet not in held_fleets:
        held = ", ".join(held_fleets) or "none yet"
        raise EdgekitError(f"the database has no reports from fleet {fleet!r} (fleets there: {held})")
