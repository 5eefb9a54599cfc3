"""The telemetry wire versioning rule (see edgekit.core.telemetry), both ways:
a newer device that only adds optional fields is read by an older collector, which ignores
and counts them; a change of meaning bumps the version, and older collectors skip it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from edgekit.core.telemetry import (
    SCHEMA_VERSION,
    ModelRef,
    Privacy,
    Report,
    SampleHeader,
    read_message,
)
from edgekit.fleet import Collector, FleetView, Skip, parse
from edgekit.runtime.telemetry.privacy import seal_sample

NOW = time.time()
NODE = "ab" * 16
TOPIC = f"edgekit/f7/{NODE}/report"


def _report(seq: int = 1) -> dict:
    return Report(
        v=SCHEMA_VERSION, kind="report", node=NODE, epoch=1, seq=seq, start=NOW - 2.0, end=NOW,
        model=ModelRef(name="m", version=1, format="onnx", precision="fp32"),
        inferences=4, calls=4, errors=0, latency_ms=(4,) + (0,) * 15, classes=None, confidence=None,
        feature_bins=None, inputs=None, drift=None, samples=0, dropped=0, privacy=Privacy(k=5, suppressed_buckets=0),
    ).model_dump(mode="json")


def _newer(report: dict) -> bytes:
    """What a device one minor release ahead sends: the same report plus optional fields."""
    return json.dumps({**report, "battery": 0.8, "model": {**report["model"], "quantizer": "qdq"}}).encode()


def test_an_older_collector_reads_a_newer_device_and_counts_the_unknown_fields(tmp_path: Path) -> None:
    message = parse("f7", TOPIC, _newer(_report()))
    assert message.report is not None and message.report.inferences == 4
    assert sorted(message.unknown_fields) == ["battery", "model.quantizer"]
    collector = Collector("f7", tmp_path, x25519.X25519PrivateKey.generate())
    assert collector.handle(TOPIC, _newer(_report(seq=1))) == "report"
    collector.finish()
    state = json.loads((tmp_path / "collect.json").read_text())
    assert state["reports"] == 1 and state["unknown_fields"] == 2
    assert "battery" not in (tmp_path / "reports.jsonl").read_text()
    view = FleetView("f7")
    assert view.handle(TOPIC, _newer(_report()))["event"] == "report"  # type: ignore[index]
    assert view.unknown_fields == 2 and view.skipped["malformed"] == 0


def test_a_newer_collector_reads_an_older_device() -> None:
    class NewerReport(Report):  # the next minor version: one more field, optional as the rule demands
        battery: float | None = None

    report, unknown = read_message(NewerReport, _report())
    assert report.battery is None and unknown == ()


def test_a_breaking_change_bumps_the_version_and_older_collectors_skip_it() -> None:
    with pytest.raises(Skip) as skipped:
        parse("f7", TOPIC, json.dumps({**_report(), "v": SCHEMA_VERSION + 1}).encode())
    assert skipped.value.reason == "unknown_version"
    broken = _report()
    del broken["inferences"]  # a field removed without a version bump is not readable: malformed
    with pytest.raises(Skip) as skipped:
        parse("f7", TOPIC, json.dumps(broken).encode())
    assert skipped.value.reason == "malformed"


def test_sample_headers_follow_the_same_rule() -> None:
    key = x25519.X25519PrivateKey.generate()
    header = SampleHeader(
        v=SCHEMA_VERSION, kind="sample", node=NODE, epoch=1, seq=2,
        model=ModelRef(name="m", version=1, format="onnx", precision="fp32"), count=1,
    )
    import numpy as np

    sealed = seal_sample(header, {"x": np.zeros((1, 2), np.float32)}, key.public_key())
    assert parse("f7", f"edgekit/f7/{NODE}/sample", sealed).header == header
    newer = SampleHeader.model_construct(**{**dict(header), "v": SCHEMA_VERSION + 1})  # a newer sender's, unvalidated here
    with pytest.raises(Skip) as skipped:
        parse(
            "f7", f"edgekit/f7/{NODE}/sample", seal_sample(newer, {"x": np.zeros((1, 2))}, key.public_key())
        )
    assert skipped.value.reason == "unknown_version"


def test_devices_still_build_only_what_the_schema_allows() -> None:
    with pytest.raises(ValueError, match="device_id"):
        Report.model_validate({**_report(), "device_id": "line3-cam2"})
