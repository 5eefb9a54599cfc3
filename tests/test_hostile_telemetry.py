"""Poison telemetry, as a compromised device or broker would send it: messages that used to
crash `fleet collect` for good, and reports with impossible numbers. Every message ends
collected, or skipped, counted, set aside and acknowledged."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import x25519

from edgekit.cli import main
from edgekit.core.telemetry import (
    SAMPLE_MAGIC,
    SCHEMA_VERSION,
    ModelRef,
    Privacy,
    Report,
    SampleHeader,
)
from edgekit.core.validation import updated
from edgekit.fleet import Collector, FleetView, init_fleet, load_collector_key
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto

NODE = "cd" * 16
REPORT = f"edgekit/f7/{NODE}/report"
SAMPLE = f"edgekit/f7/{NODE}/sample"
POISON = b"[" * 100_000


def report(seq: int = 1, **fields: Any) -> dict[str, Any]:
    now = time.time()
    good = Report(
        v=SCHEMA_VERSION, kind="report", node=NODE, epoch=1, seq=1, start=now - 60, end=now,
        model=ModelRef(name="m", version=1, format="onnx", precision="fp32"),
        inferences=4, calls=4, errors=0, latency_ms=(4,) + (0,) * 15, classes=None, confidence=None,
        feature_bins=None, inputs=None, drift=None, samples=0, dropped=0, privacy=Privacy(k=5, suppressed_buckets=0),
    ).model_dump(mode="json")
    return {**good, "seq": seq, **fields}


def encoded(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()  # Python writes Infinity and NaN, as an attacker may


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (.ci/run installs it)")
def test_poison_messages_are_set_aside_acknowledged_and_never_stop_collect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    assert CliRunner().invoke(main, ["fleet", "init", "f7"]).exit_code == 0
    out = tmp_path / "collected"
    with LocalBroker(tmp_path / "broker") as broker:
        collect = ["fleet", "collect", "--broker", broker.url, "--fleet", "f7", "--out", str(out), "--json"]
        assert CliRunner().invoke(main, [*collect, "--duration", "0.3"]).exit_code == 0  # the session exists
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        for topic, payload in (
            (REPORT, POISON),
            (SAMPLE, b"EKS1\x00\x02[[" + POISON),
            (REPORT, encoded(report())),
        ):
            sender.publish(topic, payload, qos=1).wait_for_publish(5)
        sender.loop_stop()
        first = CliRunner().invoke(main, [*collect, "--idle", "2"])
        again = CliRunner().invoke(main, [*collect, "--idle", "1"])  # a restart gets nothing twice
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    summary, later = json.loads(first.output), json.loads(again.output)
    assert summary["reports"] == 1 and summary["skipped"]["malformed"] == 2
    assert later["reports"] == 1 and later["skipped"] == summary["skipped"]
    dead = [json.loads(line) for line in (out / "deadletter.jsonl").read_text().splitlines()]
    assert sorted((d["topic"], d["reason"]) for d in dead) == [(REPORT, "malformed"), (SAMPLE, "malformed")]
    assert base64.b64decode(next(d for d in dead if d["topic"] == REPORT)["payload"]) == POISON


def test_anything_that_goes_wrong_with_one_message_is_unprocessable_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = Collector("f7", tmp_path, x25519.X25519PrivateKey.generate())
    view = FleetView("f7")

    def broken(*args: object) -> None:
        raise RuntimeError("a bug no test foresaw")

    monkeypatch.setattr("edgekit.fleet.collector.parse", broken)
    monkeypatch.setattr("edgekit.fleet.view.parse", broken)
    assert collector.handle(REPORT, encoded(report())) == "unprocessable"
    assert view.handle(REPORT, encoded(report())) is None and view.skipped["unprocessable"] == 1
    monkeypatch.undo()
    assert collector.handle(REPORT, encoded(report(seq=2))) == "report"
    collector.finish()
    dead = json.loads((tmp_path / "deadletter.jsonl").read_text())
    assert dead["reason"] == "unprocessable" and "a bug no test foresaw" in dead["detail"]
    assert json.loads((tmp_path / "collect.json").read_text())["skipped"]["unprocessable"] == 1


def test_a_sample_whose_arrays_claim_more_than_they_hold_is_refused(tmp_path: Path) -> None:
    fleet = init_fleet("f7", tmp_path / "fleet")
    key = load_collector_key("f7", fleet)
    header = SampleHeader(v=1, kind="sample", node=NODE, epoch=1, seq=1,
                          model=ModelRef(name="m", version=1, format="onnx", precision="fp32"), count=1)
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        npy, {"descr": "<f4", "fortran_order": False, "shape": (4_000_000_000,)}
    )
    lying = npy.getvalue() + bytes(16)  # 16 GB claimed, 16 bytes sent
    honest = io.BytesIO()
    np.save(honest, np.arange(4, dtype=np.float32))
    for arrays in ({"x.npy": lying}, {"x.npy": b"\x93NUMPY garbage"}, {"x.npy": honest.getvalue()}):
        plain = io.BytesIO()
        with zipfile.ZipFile(plain, "w") as archive:
            for name, data in arrays.items():
                archive.writestr(name, data)
        sealed = _seal_raw(header, plain.getvalue(), key.public_key())
        collector = Collector("f7", tmp_path / "out", key)
        expected = "malformed" if arrays["x.npy"] is honest.getvalue() else "undecryptable"
        assert collector.handle(SAMPLE, sealed) == expected  # honest arrays, but no pred/confidence


def test_a_decoders_impossible_report_or_sample_is_malformed(tmp_path: Path) -> None:
    from edgekit.core.telemetry import GenerationStats
    from edgekit.runtime.telemetry.privacy import seal_sample

    fleet = init_fleet("f7", tmp_path / "fleet")
    key = load_collector_key("f7", fleet)
    collector = Collector("f7", tmp_path / "out", key)
    good = GenerationStats(generations=2, ttft_ms=(2,) + (0,) * 15, tokens_per_s=(0, 2) + (0,) * 10,
                           prompt_tokens=(0, 2) + (0,) * 11, new_tokens=(0, 2) + (0,) * 11,
                           stop_reasons=(2, 0, 0, 0, 0)).model_dump(mode="json")  # fmt: skip
    impossible = {
        "a histogram short of a bucket": {"ttft_ms": [2] + [0] * 14},
        "a negative stop count": {"stop_reasons": [3, -1, 0, 0, 0]},
        "10^30 generations": {"generations": 10**30},
        "a stop reason too many": {"stop_reasons": [2, 0, 0, 0, 0, 0]},
        "text where counts go": {"new_tokens": "set kitchen to 19 degrees"},
    }
    for case, fields in impossible.items():
        bad = report(10, generation={**good, **fields})
        assert collector.handle(REPORT, encoded(bad)) == "malformed", case
    assert collector.handle(REPORT, encoded(report(1, generation=good))) == "report"
    header = SampleHeader(v=1, kind="sample", node=NODE, epoch=1, seq=2,
                          model=ModelRef(name="m", version=1, format="onnx", precision="fp32"), count=2)
    arrays = {"x": np.zeros((2, 0), np.float32), "pred": np.zeros(2, np.int64),
              "confidence": np.ones(2, np.float32), "text": np.array(["a =>", "b =>"])}  # fmt: skip
    for generated in (np.array(["one"]), np.array([1.0, 2.0]), np.array([["a", "b"]])):
        sealed = seal_sample(header, {**arrays, "generated": generated}, key.public_key())
        assert collector.handle(SAMPLE, sealed) == "malformed", generated
    fine = seal_sample(updated(header, seq=3), {**arrays, "generated": np.array(["x", "y"])}, key.public_key())
    assert collector.handle(SAMPLE, fine) == "sample"
    summary = collector.finish()
    assert summary["skipped"]["malformed"] == len(impossible) + 3 and summary["samples"] == 2


def _seal_raw(header: SampleHeader, plain: bytes, public: x25519.X25519PublicKey) -> bytes:
    """seal_sample's framing around bytes of a compromised device's choosing."""
    from edgekit.runtime.telemetry.privacy import _SUITE

    head = header.model_dump_json().encode()
    return SAMPLE_MAGIC + struct.pack(">H", len(head)) + head + _SUITE.encrypt(plain, public, head)


def test_impossible_numbers_are_skipped_and_a_jump_is_an_anomaly_not_a_gap(tmp_path: Path) -> None:
    collector = Collector("f7", tmp_path, x25519.X25519PrivateKey.generate())
    now = time.time()
    drift = {"input_psi": 0.1, "output_psi": None, "score": float("inf")}
    impossible = {
        "infinite score": {"drift": drift},
        "NaN start": {"start": float("nan")},
        "10^30 inferences": {"inferences": 10**30},
        "negative calls": {"calls": -1},
        "negative errors": {"errors": -5},
        "negative bucket": {"latency_ms": [-1] + [0] * 15},
        "start -1e308": {"start": -1e308},
        "seq 2^62": {"seq": 2**62},
        "two months old": {"start": now - 61 * 86400, "end": now - 60 * 86400},
        "two days ahead": {"start": now + 2 * 86400, "end": now + 2 * 86400 + 60},
        "ends before it starts": {"start": now, "end": now - 60},
    }
    for case, fields in impossible.items():
        assert collector.handle(REPORT, encoded({**report(10), **fields})) == "malformed", case
    for seq in (1, 2, 4, 500_000, 500_001):
        assert collector.handle(REPORT, encoded(report(seq=seq))) == "report"
    summary = collector.finish()
    assert summary["inferences"] == 20 and summary["skipped"]["malformed"] == len(impossible)
    assert summary["gaps"] == {NODE: 1} and summary["seq_jumps"] == {NODE: 1}
    assert json.loads((tmp_path / "drift.json").read_text())["fleet"]["nodes"] == 0
    view = FleetView("f7")
    event = view.handle(REPORT, encoded(report(drift={**drift, "score": 0.3})))
    json.dumps(event, allow_nan=False)  # what watch --json prints is JSON
    assert view.handle(REPORT, encoded(report(seq=2, drift=drift))) is None


def test_a_device_with_a_wrong_clock_still_builds_its_report() -> None:
    """Boards without a battery-backed clock start in 1970; the device never checks its own
    time (the collector does), so reporting never fails there."""
    assert Report.model_validate(report(start=1.0, end=86400.0 * 30)).start == 1.0
