"""Telemetry end to end against a real Mosquitto: counts, samples, outages, privacy, TLS, ACLs."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_helpers import Tap, issue, make_ca

from edgekit.core.telemetry import Report, read_message
from edgekit.fleet import Collector, Inbox, init_fleet, load_collector_key, subscriptions
from edgekit.runtime import Model, Telemetry
from edgekit.runtime.telemetry.broker import Broker
from edgekit.runtime.telemetry.privacy import open_sample, pseudonym, read_sample_header
from edgekit.testing.mosquitto import BrokerTLS, LocalBroker, find_mosquitto

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto is not installed (.ci/run installs it)"
)

DEVICE = "line3-cam2"
DEAD = "mqtt://127.0.0.1:9"  # nothing listens on the discard port


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    return init_fleet("f7", tmp_path / "fleet")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    with LocalBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture(scope="module")
def bundle(converted: Any) -> Path:
    return converted("int8").output


def make_telemetry(url: str, fleet_dir: Path, tmp_path: Path, **options: Any) -> Telemetry:
    settings: dict[str, Any] = {
        "device_id": DEVICE,
        "fleet_dir": fleet_dir,
        "outbox": tmp_path / "outbox.sqlite",
        "window_s": 3600,
        "backoff_max_s": 0.3,
        "close_timeout_s": 0.1 if url == DEAD else 5.0,
        **options,
    }
    return Telemetry(url, "f7", **settings)


class Gatherer:
    """A collector with a persistent session, as `fleet collect` runs it. Mosquitto 2.0 does
    not restore shared subscriptions after a restart, so the restart tests subscribe plainly
    (`fleet collect --group none`); the others share."""

    def __init__(self, broker: LocalBroker, fleet_dir: Path, out: Path, group: str | None = "g") -> None:
        self.collector = Collector("f7", out, load_collector_key("f7", fleet_dir))
        self.inbox = Inbox(
            Broker.parse(broker.url), subscriptions("f7", ("report", "sample"), group), session="collector-1"
        ).start()
        self.order: list[int] = []

    def run(self, until: Any, timeout: float = 20.0) -> Collector:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(self.collector):
            message = self.inbox.get(0.1)
            if message is None:
                continue
            before = self.collector.reports
            kind = self.collector.handle(message[0], message[1])
            self.collector.flush()
            if kind == "report" and self.collector.reports > before:  # new, not a redelivery
                self.order.append(read_message(Report, json.loads(message[1]))[0].seq)
            self.inbox.ack([(message[2], message[3])])
        return self.collector

    def close(self) -> None:
        self.inbox.stop()


def test_every_inference_arrives_and_samples_decrypt(
    broker: LocalBroker, fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any
) -> None:
    x, _ = digits_eval
    gatherer = Gatherer(broker, fleet_dir, tmp_path / "collected")
    telemetry = make_telemetry(broker.url, fleet_dir, tmp_path, capture="low-confidence:0.999", capture_max=4)
    model = Model.load(bundle, telemetry=telemetry)
    calls = 0
    for start in range(0, 300, 7):  # batches of 1 and 6, three windows
        model.predict(x[start : start + 1])
        model.predict(x[start + 1 : start + 7])
        calls += 7
        if start in (70, 210):
            telemetry.flush()
    model.close()
    collector = gatherer.run(lambda c: c.inferences >= calls and c.sample_count >= 12)
    gatherer.close()
    assert collector.inferences == calls
    assert collector.reports == 3
    summary = collector.finish()
    assert summary["gaps"] == {} and sum(summary["skipped"].values()) == 0
    with np.load(tmp_path / "collected" / "samples.npz") as samples:
        assert samples["x"].shape == (12, *x.shape[1:])
        rows = {row.tobytes() for row in x[:300]}
        assert all(row.tobytes() in rows for row in samples["x"])  # real inputs, decrypted intact
        assert (samples["confidence"] < 0.999).all()
        reports = collector.read_reports()
        assert set(samples["node"]) == {report["node"] for report in reports}
        # four samples per window, each window's in the message right after its report
        assert sorted(samples["seq"]) == sorted(report["seq"] + 1 for report in reports for _ in range(4))


def test_broker_outage_loses_nothing_and_keeps_order(
    broker: LocalBroker, fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any
) -> None:
    x, _ = digits_eval
    gatherer = Gatherer(broker, fleet_dir, tmp_path / "collected", group=None)
    telemetry = make_telemetry(broker.url, fleet_dir, tmp_path)
    model = Model.load(bundle, telemetry=telemetry)
    seqs = []
    for i in range(30):
        if i == 10:
            broker.stop()
        if i == 20:
            broker.start()
        model.predict(x[i : i + 1])
        seqs.append(telemetry.flush())
        time.sleep(0.05)
    model.close()
    assert telemetry.status["queued"] == 0
    collector = gatherer.run(lambda c: c.reports >= 30)
    gatherer.close()
    assert collector.reports == 30 and collector.inferences == 30
    assert gatherer.order == sorted(gatherer.order) == seqs
    assert collector.state()["gaps"] == {}


DEVICE_SCRIPT = """
import sys, time
from pathlib import Path
from edgekit.runtime import Model, Telemetry
import numpy as np
url, fleet_dir, outbox, bundle, mode = sys.argv[1:6]
telemetry = Telemetry(url, "f7", device_id="line3-cam2", fleet_dir=fleet_dir, outbox=outbox,
                      window_s=3600, backoff_max_s=0.3)
model = Model.load(bundle, telemetry=telemetry)
if mode == "report":
    x = np.zeros((1, 8, 8, 1), np.float32)
    for i in range(25):
        model.predict(x)
        telemetry.flush()
    print("queued", flush=True)
    time.sleep(60)
else:
    model.close(); print(telemetry.status["queued"], flush=True)
"""


def test_kill_9_during_an_outage_replays_after_restart(
    broker: LocalBroker, fleet_dir: Path, bundle: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    gatherer = Gatherer(broker, fleet_dir, tmp_path / "collected", group=None)
    broker.stop()
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    args = [broker.url, str(fleet_dir), str(tmp_path / "outbox.sqlite"), str(bundle)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    device = subprocess.Popen([sys.executable, str(script), *args, "report"], stdout=subprocess.PIPE, env=env)
    assert device.stdout is not None and device.stdout.readline().strip() == b"queued"
    device.kill()  # SIGKILL with 25 reports on disk and the broker down
    device.wait()
    broker.start()
    done = subprocess.run(
        [sys.executable, str(script), *args, "drain"], capture_output=True, env=env, timeout=120, check=True
    )
    assert done.stdout.strip() == b"0"
    collector = gatherer.run(lambda c: c.reports >= 25)
    gatherer.close()
    assert collector.reports == 25, broker.log()[-4000:]
    assert collector.inferences == 25
    assert collector.state()["gaps"] == {}


def test_status_is_retained_online_and_the_will_says_offline(
    broker: LocalBroker, fleet_dir: Path, bundle: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    tap = Tap(broker.url, "edgekit/f7/#")
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    args = [broker.url, str(fleet_dir), str(tmp_path / "outbox.sqlite"), str(bundle), "report"]
    device = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE)
    status = tap.wait_for(lambda m: sum(t.endswith("/report") for t, _ in m) >= 25, timeout=60)
    assert (status[0][0].endswith("/status"), status[0][1]) == (True, b"online")
    device.kill()  # no clean goodbye: the broker sends the last will
    messages = tap.wait_for(lambda m: m[-1][1] == b"offline")
    tap.close()
    assert messages[-1] == (status[0][0], b"offline")
    report_topic = next(t for t, _ in messages if t.endswith("/report"))
    assert 7 * 86400 - 60 <= (tap.expiry[report_topic] or 0) <= 7 * 86400  # MQTT 5 message expiry
    late = Tap(broker.url, "edgekit/f7/+/status")  # retained: a late subscriber sees it at once
    assert late.wait_for(lambda m: bool(m), timeout=3) == [(status[0][0], b"offline")]
    late.close()


def test_replayed_messages_are_dropped_by_sequence_number(
    broker: LocalBroker, fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any
) -> None:
    x, _ = digits_eval
    tap = Tap(broker.url, "edgekit/f7/+/report")
    telemetry = make_telemetry(broker.url, fleet_dir, tmp_path)
    model = Model.load(bundle, telemetry=telemetry)
    for i in range(3):
        model.predict(x[i : i + 1])
        telemetry.flush()
    model.close()
    captured = tap.wait_for(lambda m: len(m) >= 3)
    tap.close()
    collector = Collector("f7", tmp_path / "collected", load_collector_key("f7", fleet_dir))
    for topic, payload in captured + captured[1:]:  # a broker redelivery after a lost PUBACK
        collector.handle(topic, payload)
    collector.flush()
    assert collector.reports == 3 and collector.skipped["duplicate"] == 2
    restarted = Collector("f7", tmp_path / "collected", load_collector_key("f7", fleet_dir))
    assert restarted.handle(*captured[0]) == "report"  # new to this process...
    restarted.flush()
    assert restarted.reports == 0 and restarted.skipped["duplicate"] == 1  # ...but already in the database
    assert restarted.state()["reports"] == 3 and restarted.state()["skipped"]["duplicate"] == 3


def test_full_outbox_drops_the_oldest_and_says_so(
    fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any
) -> None:
    from edgekit.runtime.telemetry.outbox import Outbox

    x, _ = digits_eval
    telemetry = make_telemetry(DEAD, fleet_dir, tmp_path, outbox_max_bytes=3000)
    model = Model.load(bundle, telemetry=telemetry)
    for i in range(12):
        model.predict(x[i : i + 1])
        telemetry.flush()
    assert "cannot reach broker" in (telemetry.status["last_error"] or "")
    model.close(), telemetry.close()
    outbox = Outbox(tmp_path / "outbox.sqlite", 3000, 3600)
    entries = outbox.pending(0, 100)
    reports = [Report.model_validate_json(e.payload) for e in entries]
    assert outbox.size()[1] <= 3000
    kept = [r.seq for r in reports]
    assert kept == list(range(kept[0], 13)) and kept[0] > 1  # the oldest went
    assert outbox.dropped == kept[0] - 1
    counts = [r.dropped for r in reports]
    assert counts == sorted(counts) and 0 < counts[-1] <= outbox.dropped  # the next report says so


def test_broker_down_never_reaches_predict(
    fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any
) -> None:
    x, _ = digits_eval
    telemetry = make_telemetry(DEAD, fleet_dir, tmp_path, window_s=0.05)
    model = Model.load(bundle, telemetry=telemetry)
    for i in range(200):
        assert model.predict(x[i : i + 1]).shape == (1, 10)
    model.close()
    assert telemetry.status["queued"] >= 1 and telemetry.status["sent"] == 0


def test_device_id_never_leaves_and_pseudonyms_rotate(
    broker: LocalBroker, fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any
) -> None:
    x, _ = digits_eval
    tap = Tap(broker.url)
    telemetry = make_telemetry(
        broker.url, fleet_dir, tmp_path, epoch_s=0.4, capture="random:1", capture_max=2
    )
    model = Model.load(bundle, telemetry=telemetry)
    for i in range(6):
        model.predict(x[i * 5 : i * 5 + 5])
        telemetry.flush()
        time.sleep(0.25)
    model.close()
    messages = tap.wait_for(lambda m: len([t for t, _ in m if t.endswith("/report")]) >= 6)
    tap.close()
    secret = bytes.fromhex((fleet_dir / "fleet.secret").read_text())
    for topic, payload in messages:
        assert DEVICE.encode() not in payload and DEVICE not in topic
    nodes = {topic.split("/")[2] for topic, _ in messages}
    assert len(nodes) >= 2  # a new epoch, a new pseudonym
    reports = [Report.model_validate_json(p) for t, p in messages if t.endswith("/report")]
    assert all(r.node == pseudonym(secret, DEVICE, r.epoch) for r in reports)
    samples = [p for t, p in messages if t.endswith("/sample")]
    assert samples
    stranger = load_collector_key("f7", init_fleet("f7", tmp_path / "other-fleet"))
    for payload in samples:
        assert x[:30].tobytes()[:64] not in payload  # no input bytes in clear
        _, head, body = read_sample_header(payload)
        with pytest.raises(ValueError, match="does not decrypt"):
            open_sample(head, body, stranger)
        assert open_sample(head, body, load_collector_key("f7", fleet_dir))["x"].shape[1:] == (8, 8, 1)


def test_k_suppression_hides_small_buckets(
    fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any
) -> None:
    x, _ = digits_eval
    telemetry = make_telemetry(DEAD, fleet_dir, tmp_path, k_anonymity=5)
    model = Model.load(bundle, telemetry=telemetry)
    model.predict(x[:3])
    telemetry.flush()
    model.close()
    from edgekit.runtime.telemetry.outbox import Outbox

    report = Report.model_validate_json(
        Outbox(tmp_path / "outbox.sqlite", 1 << 20, 3600).pending(0, 1)[0].payload
    )
    assert report.inferences == 3
    assert report.inputs is None  # per-feature min and max of 3 samples would describe them
    assert report.classes is not None and sum(report.classes) == 0
    assert sum(report.latency_ms) == 0 and report.privacy.suppressed_buckets >= 2


def test_privacy_budget_stops_releases_and_survives_restart(
    fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any, home: Path
) -> None:
    from edgekit.runtime.telemetry.outbox import Outbox

    x, _ = digits_eval
    released = []
    for _run in range(2):
        telemetry = make_telemetry(DEAD, fleet_dir, tmp_path, dp_epsilon=1.0, dp_budget=3.0, k_anonymity=1)
        model = Model.load(bundle, telemetry=telemetry)
        for i in range(4):
            model.predict(x[i * 40 : i * 40 + 40])
            released.append(telemetry.flush())
        model.close()
    assert [seq is not None for seq in released] == [True] * 3 + [False] * 5
    outbox = Outbox(tmp_path / "outbox.sqlite", 1 << 20, 3600)
    witness = outbox.witness()
    assert witness is not None and witness.spent == pytest.approx(3.0) and witness.releases == 3
    reports = [Report.model_validate_json(e.payload) for e in outbox.pending(0, 100)]
    assert len(reports) == 3 and all(r.inputs is None for r in reports)
    assert reports[-1].privacy.dp_spent == pytest.approx(3.0)
    noisy = [r.inferences for r in reports] + [c for r in reports for c in (r.classes or ())]
    assert noisy[:3] != [40, 40, 40] or sum(noisy[3:]) != 120  # OpenDP's noise is there


def test_drift_scores_separate_shifted_inputs(
    fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any
) -> None:
    from edgekit.runtime.telemetry.outbox import Outbox

    x, _ = digits_eval
    telemetry = make_telemetry(DEAD, fleet_dir, tmp_path, k_anonymity=1)
    model = Model.load(bundle, telemetry=telemetry)
    model.predict(x)
    telemetry.flush()
    model.predict(np.clip(x * 0.4 + 6.0, 0, 16))  # a washed-out meter camera
    telemetry.flush()
    model.close()
    first, second = (
        Report.model_validate_json(e.payload)
        for e in Outbox(tmp_path / "outbox.sqlite", 1 << 20, 3600).pending(0, 2)
    )
    assert first.drift is not None and second.drift is not None
    assert first.drift.score < 0.1 < 0.25 < second.drift.score


def test_hot_path_memory_stays_flat(fleet_dir: Path, bundle: Path, tmp_path: Path, digits_eval: Any) -> None:
    x, _ = digits_eval
    telemetry = make_telemetry(DEAD, fleet_dir, tmp_path)
    model = Model.load(bundle, telemetry=telemetry)
    outputs = model.predict(x[:1])
    for _ in range(600):
        telemetry.record(x[:1], outputs, 1e-4)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(5000):
        telemetry.record(x[:1], outputs, 1e-4)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    model.close()
    assert grown < 64 * 1024  # 5000 calls: bounded buffers, nothing kept per call


def test_tls_with_client_certificates(
    tmp_path: Path, fleet_dir: Path, bundle: Path, digits_eval: Any
) -> None:
    x, _ = digits_eval
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, ca_key, ca_cert = make_ca(certs, "fleet-ca")
    server_cert, server_key = issue(certs, "broker", ca_key, ca_cert, server=True)
    client_cert, client_key = issue(certs, "device", ca_key, ca_cert, server=False)
    rogue_ca, rogue_key, rogue_cert = make_ca(certs, "rogue-ca")
    rogue_client, rogue_client_key = issue(certs, "rogue-device", rogue_key, rogue_cert, server=False)
    tls = BrokerTLS(ca=ca, cert=server_cert, key=server_key)
    with LocalBroker(tmp_path / "tls-broker", tls=tls) as broker:
        cases = {
            "good": (ca, client_cert, client_key),
            "wrong-ca": (rogue_ca, client_cert, client_key),
            "rogue-client": (ca, rogue_client, rogue_client_key),
        }
        results = {}
        for name, (trust, cert, key) in cases.items():
            telemetry = make_telemetry(
                broker.url, fleet_dir, tmp_path / name, tls_ca=trust, tls_cert=cert, tls_key=key
            )
            model = Model.load(bundle, telemetry=telemetry)
            model.predict(x[:2])
            telemetry.close(timeout=2)
            results[name] = telemetry.status
    # the broker answered over TLS: nobody subscribes here, so the report waits on disk for a collector
    assert results["good"]["queued"] == 1 and "no collector is subscribed" in results["good"]["last_error"]
    assert (
        results["wrong-ca"]["sent"] == 0 and "certificate verify failed" in results["wrong-ca"]["last_error"]
    )
    assert results["rogue-client"]["sent"] == 0 and results["rogue-client"]["queued"] == 1
    assert results["rogue-client"]["last_error"]


def test_acl_keeps_a_device_off_another_devices_topic(
    tmp_path: Path, fleet_dir: Path, bundle: Path, digits_eval: Any
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    x, _ = digits_eval
    acl = "pattern write edgekit/+/%c/#\npattern read edgekit/#\n"
    with LocalBroker(tmp_path / "acl-broker", acl=acl) as broker:
        tap = Tap(broker.url, "edgekit/f7/+/report")
        telemetry = make_telemetry(broker.url, fleet_dir, tmp_path)
        model = Model.load(bundle, telemetry=telemetry)
        model.predict(x[:1])
        model.close()
        assert telemetry.status["sent"] == 1  # its own pseudonym's topic: allowed
        own = telemetry.node()
        other = pseudonym(telemetry.keys.secret, "line4-cam1", telemetry.epoch())
        acks: list[Any] = []
        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=own, protocol=mqtt.MQTTv5)
        device.on_publish = lambda c, u, mid, reason, p: acks.append(reason)
        device.connect("127.0.0.1", broker.port)
        device.loop_start()
        device.publish(f"edgekit/f7/{other}/report", b"forged", qos=1)
        deadline = time.monotonic() + 5
        while not acks and time.monotonic() < deadline:
            time.sleep(0.05)
        device.loop_stop()
        messages = tap.wait_for(lambda m: False, timeout=0.5)
        tap.close()
    assert acks and acks[0].is_failure and "authorized" in str(acks[0]).lower()
    assert [t.split("/")[2] for t, _ in messages] == [own]


def test_collector_counts_and_skips_bad_messages(
    broker: LocalBroker, fleet_dir: Path, tmp_path: Path
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    gatherer = Gatherer(broker, fleet_dir, tmp_path / "collected")
    node = "0" * 32
    good = json.loads(_report_json(node, seq=1))
    bad = {
        "garbage": b"\x00\xffnot json",
        "newer": json.dumps({**good, "seq": 2, "device_id": "line3-cam2"}).encode(),
        "version": json.dumps({**good, "v": 2}).encode(),
        "huge": b"{" + b" " * 300_000 + b"}",
        "sample": b"EKS1\x00\x05{}xyz",
    }
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    for name, payload in bad.items():
        kind = "sample" if name == "sample" else "report"
        sender.publish(f"edgekit/f7/{node}/{kind}", payload, qos=1).wait_for_publish(5)
    sender.publish(f"edgekit/f7/{node}/report", json.dumps(good).encode(), qos=1).wait_for_publish(5)
    sender.loop_stop()
    # MQTT keeps order within a topic only: the sample may arrive after the last report
    collector = gatherer.run(lambda c: c.reports >= 2 and sum(c.skipped.values()) >= 4)
    gatherer.close()
    assert collector.reports == 2  # a field this version does not know is ignored and counted...
    assert collector.unknown_fields == 1
    assert "line3-cam2" not in json.dumps(collector.read_reports())  # ...and never stored
    assert collector.skipped["malformed"] == 2  # garbage, a broken sample
    assert collector.skipped["unknown_version"] == 1 and collector.skipped["oversized"] == 1


def _report_json(node: str, seq: int) -> str:
    from edgekit.core.telemetry import ModelRef, Privacy

    return Report(
        v=1, kind="report", node=node, epoch=1, seq=seq, start=time.time() - 1.0, end=time.time(),
        model=ModelRef(name="digits", version=1, format="tflite", precision="int8"),
        inferences=5, calls=5, errors=0, latency_ms=(5,) + (0,) * 15, classes=None, confidence=None,
        feature_bins=None, inputs=None, drift=None, samples=0, dropped=0, privacy=Privacy(k=5, suppressed_buckets=0),
    ).model_dump_json()


def test_missing_fleet_secret_is_one_clear_error(tmp_path: Path) -> None:
    from edgekit.runtime.telemetry.privacy import FleetKeyError

    with pytest.raises(FleetKeyError, match="fleet init f7"):
        Telemetry("mqtt://127.0.0.1:1883", "f7", fleet_dir=tmp_path / "nothing", outbox=tmp_path / "o.sqlite")


def test_config_file_and_bad_settings(tmp_path: Path, fleet_dir: Path) -> None:
    from edgekit.runtime.telemetry.broker import BrokerError
    from edgekit.runtime.telemetry.device import TelemetryConfigError

    config = tmp_path / "telemetry.toml"
    config.write_text(
        f'[telemetry]\nbroker = "mqtt://127.0.0.1:1883"\nfleet = "f7"\nfleet_dir = "{fleet_dir}"\n'
        f'outbox = "{tmp_path / "o.sqlite"}"\nwindow_s = 30\ncapture = "random:0.1"\n'
    )
    telemetry = Telemetry.from_file(config)
    assert telemetry.window_s == 30 and telemetry.capture.value == 0.1
    config.write_text(config.read_text() + "colour = 3\n")
    with pytest.raises(TelemetryConfigError, match="colour"):
        Telemetry.from_file(config)
    with pytest.raises(BrokerError, match="mqtt://host:1883"):
        Telemetry("http://x", "f7", fleet_dir=fleet_dir)
    with pytest.raises(TelemetryConfigError, match="capture"):
        Telemetry("mqtt://x", "f7", fleet_dir=fleet_dir, capture="sometimes")
    with pytest.raises(TelemetryConfigError, match="fleet name"):
        Telemetry("mqtt://x", "f 7", fleet_dir=fleet_dir)
    shutil.rmtree(fleet_dir)


def test_a_two_output_detector_reports_its_scores_output(
    broker: LocalBroker, fleet_dir: Path, tmp_path: Path
) -> None:
    """Telemetry reports the manifest's primary output (the detector's scores, not its boxes)
    and bins the float image input; the int64 ids input is passed through."""
    import onnx_graphs

    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.profiles import load_profile

    model_path = onnx_graphs.save(onnx_graphs.image_and_ids(), tmp_path / "fusion.onnx")
    data = onnx_graphs.image_and_ids_data(60)
    np.savez(tmp_path / "calib.npz", **data)
    result = convert(ConvertOptions(model=model_path, profile=load_profile("x86-gateway"), precision="fp32",
                                    output=tmp_path / "fusion.ekb", calibration=tmp_path / "calib.npz"))
    assert result.manifest.primary_output == "scores" and result.manifest.reference is not None
    assert result.manifest.reference.input == "image"
    gatherer = Gatherer(broker, fleet_dir, tmp_path / "collected")
    telemetry = make_telemetry(broker.url, fleet_dir, tmp_path, k_anonymity=1)  # exact counts
    model = Model.load(result.output, telemetry=telemetry, allow_unsigned=True)
    for start in range(0, 60, 6):
        model.predict({name: array[start : start + 6] for name, array in data.items()})
    model.close()
    collector = gatherer.run(lambda c: c.reports >= 1)
    gatherer.close()
    report = collector.read_reports()[0]
    assert report["inferences"] == 60 and len(report["classes"]) == 3 and sum(report["classes"]) == 60
    assert report["drift"] is not None and collector.reports == 1
