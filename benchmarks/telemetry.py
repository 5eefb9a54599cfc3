"""Telemetry costs and guarantees, measured against a local Mosquitto in one run.

    python benchmarks/telemetry.py [--calls 20000] [--reports 20000] [--queued 10000]

1. Hot path: ``Model.predict`` (digits CNN, int8 TFLite, batch 1) with telemetry on and
   off, interleaved in rounds so both see the same machine state; and ``Telemetry.record``
   alone. Reported in ns per call.
2. Collector ingest: a load generator in another process publishes valid reports (QoS 1)
   as fast as it can; the collector (as ``fleet collect`` runs it: validate, deduplicate,
   write durably, then acknowledge) reports what it took per second.
3. Zero loss: the broker is down while a device queues ``--queued`` reports in its outbox;
   the broker comes back, is restarted again in the middle of the replay, and the
   collector counts what arrived: lost and duplicate reports.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "quickstart"))


def build_bundle(folder: Path) -> tuple[Path, np.ndarray]:
    from convert_quality import make_digits

    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.profiles import load_profile

    paths = make_digits(folder)
    options = ConvertOptions(
        model=paths["model"], profile=load_profile("x86-gateway"), format="tflite", precision="int8",
        output=folder / "digits.ekb", calibration=paths["calibration"],
    )
    with np.load(paths["evaluation"]) as data:
        return convert(options).output, data["x"]


def hot_path(bundle: Path, x: np.ndarray, broker_url: str, folder: Path, calls: int) -> None:
    from edgekit.runtime import Model, Telemetry

    telemetry = Telemetry(broker_url, "bench", device_id="bench-device", outbox=folder / "hot.sqlite")
    on = Model.load(bundle, telemetry=telemetry, allow_unsigned=True)
    rows = [x[i : i + 1] for i in range(len(x))]
    rounds = 20
    per_round = calls // rounds
    timings: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for name in ("off", "on"):
            # The same Model with its telemetry detached: both time the same interpreter
            # (two interpreters of one model differ by up to 15% here, more than the effect).
            on._telemetry = None if name == "off" else telemetry
            started = time.perf_counter_ns()
            for i in range(per_round):
                on.predict(rows[i % len(rows)])
            timings[name].append((time.perf_counter_ns() - started) / per_round)
    out = on.predict(rows[0])
    started = time.perf_counter_ns()
    for i in range(calls):
        telemetry.record(rows[i % len(rows)], out, 1e-4)
    record_ns = (time.perf_counter_ns() - started) / calls
    on.close()
    off_ns, on_ns = float(np.median(timings["off"])), float(np.median(timings["on"]))
    print("1. hot path, predict batch 1, median of 20 interleaved rounds")
    print(f"   telemetry off: {off_ns:8.0f} ns/call")
    print(f"   telemetry on:  {on_ns:8.0f} ns/call   (+{on_ns - off_ns:.0f} ns, {on_ns / off_ns:.3f}x)")
    print(f"   Telemetry.record alone: {record_ns:.0f} ns/call")


def _generate(url: str, reports: int, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgekit.core.telemetry import ModelRef, Privacy, Report
    from edgekit.core.validation import updated

    port = int(url.rsplit(":", 1)[1])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    node = "ab" * 16
    now = time.time()  # a collector refuses windows that are not near its clock
    base = Report(
        v=1, kind="report", node=node, epoch=1, seq=1, start=now - 60, end=now,
        model=ModelRef(name="digits", version=1, format="tflite", precision="int8"),
        inferences=100, calls=100, errors=0, latency_ms=(0, 0, 100) + (0,) * 13, classes=(10,) * 10,
        confidence=(0,) * 9 + (100,), feature_bins=((10,) * 10, (10,) * 10), inputs=None, drift=None,
        samples=0, dropped=0, privacy=Privacy(k=5, suppressed_buckets=0),
    )
    payloads = [
        updated(base, seq=seq).model_dump_json().encode() for seq in range(1, reports + 1)
    ]
    ready.wait()
    infos = [client.publish(f"edgekit/bench/{node}/report", p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()


def collect_until(collector, inbox, count: int, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Run the collector loop until ``count`` reports; returns the time of the last one."""
    deadline = time.monotonic() + timeout
    pending: list[tuple[int, int]] = []
    last = time.perf_counter()
    taken = 0
    while collector.reports + taken < count and time.monotonic() < deadline:
        message = inbox.get(0.2)
        if message is not None:
            taken += collector.handle(message[0], message[1]) == "report"
            pending.append((message[2], message[3]))
            last = time.perf_counter()
        if pending and (len(pending) >= 256 or message is None):
            collector.flush()
            inbox.ack(pending)
            pending, taken = [], 0
    collector.flush()
    inbox.ack(pending)
    return last


def ingest(broker_url: str, folder: Path, reports: int) -> None:
    from edgekit.fleet import Collector, Inbox, init_fleet, load_collector_key, subscriptions
    from edgekit.runtime.telemetry.broker import Broker

    keys = init_fleet("bench", folder / "fleet")
    collector = Collector("bench", folder / "ingest", load_collector_key("bench", keys))
    inbox = Inbox(
        Broker.parse(broker_url), subscriptions("bench", ("report",), "bench"), "bench-ingest"
    ).start()
    ready = multiprocessing.Event()
    generator = multiprocessing.Process(target=_generate, args=(broker_url, reports, ready))
    generator.start()
    time.sleep(2)  # let the generator build its payloads
    ready.set()
    started = time.perf_counter()
    last = collect_until(collector, inbox, reports, timeout=600)
    generator.join()
    inbox.stop()
    rate = collector.reports / (last - started)
    print(
        f"2. collector ingest: {collector.reports} of {reports} reports "
        f"in {last - started:.1f} s: {rate:,.0f} reports/s"
    )


def zero_loss(bundle: Path, x: np.ndarray, broker, folder: Path, queued: int) -> None:  # type: ignore[no-untyped-def]
    from edgekit.fleet import Collector, Inbox, load_collector_key, subscriptions
    from edgekit.runtime import Model, Telemetry
    from edgekit.runtime.telemetry.broker import Broker

    collector = Collector("bench", folder / "replay", load_collector_key("bench", folder / "fleet"))
    inbox = Inbox(Broker.parse(broker.url), subscriptions("bench", ("report",)), "bench-replay").start()
    broker.stop()
    telemetry = Telemetry(
        broker.url, "bench", device_id="bench-device", fleet_dir=folder / "fleet",
        outbox=folder / "replay.sqlite", window_s=3600, backoff_max_s=1.0, close_timeout_s=600,
    )
    model = Model.load(bundle, telemetry=telemetry, allow_unsigned=True)
    started = time.perf_counter()
    for i in range(queued):
        model.predict(x[i % len(x)][None])
        telemetry.flush()
    queue_s = time.perf_counter() - started
    entries, size = telemetry.outbox.size()
    print(
        f"3. {entries} reports queued on disk ({size / 1e6:.1f} MB) in {queue_s:.1f} s with the broker down"
    )
    broker.start()
    started = time.perf_counter()
    while telemetry.outbox.size()[0] > queued // 2 and time.perf_counter() - started < 300:
        time.sleep(0.05)
    broker.restart()  # in the middle of the replay
    print(f"   broker restarted with {telemetry.outbox.size()[0]} reports still queued")
    model.close()
    last = collect_until(collector, inbox, queued, timeout=300)
    inbox.stop()
    seen = collector.state()
    lost = queued - collector.reports
    print(
        f"   replayed in {last - started:.1f} s: {collector.reports} of {queued} arrived, {lost} lost, "
        f"{collector.skipped['duplicate']} duplicates dropped, gaps {seen['gaps'] or 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--reports", type=int, default=20000)
    parser.add_argument("--queued", type=int, default=10000)
    args = parser.parse_args()
    from edgekit.testing.mosquitto import LocalBroker

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["EDGEKIT_HOME"] = str(folder / "home")
        bundle, x = build_bundle(folder)
        with LocalBroker(folder / "broker") as broker:
            from edgekit.fleet import init_fleet

            init_fleet("bench")
            hot_path(bundle, x, broker.url, folder, args.calls)
            ingest(broker.url, folder, args.reports)
            zero_loss(bundle, x, broker, folder, args.queued)


if __name__ == "__main__":
    main()
