"""Factory vibration monitor: gateways watch motor bearings for faults, and the fleet watch
catches the sensors that drift.

    python examples/factory_vibration/run.py [--quick] [--out build/factory_vibration]

Vibration is made in code (signals.py: shaft harmonics, noise, and impacts at the bearing
defect frequencies). A small 1-D conv net learns normal / outer race / inner race / ball;
`edgekit convert --target x86-gateway --precision auto` converts it to every ONNX precision
the profile lists, measures them here and ships the fastest that passes. Six gateways run
it, reporting to a local Mosquitto broker; two have accelerometers that drift slowly (one
loses calibration, one gains a DC bias). `edgekit fleet watch` flags those two, and only
those. Then a v2 retrained on the month's readings goes to five gateways through a canary
(`edgekit agent` on each, `edgekit fleet deploy` on the operator's side) and is promoted, and
a v3 too slow for them is rolled back automatically on its p95 latency. Exit code 1 if a
check fails.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import Checks, Machines, arguments, heading, local_broker, run  # noqa: E402
from rollout import roll_out  # noqa: E402
from signals import CLASSES, SKF_6205, Sensor, build_classifier, readings  # noqa: E402

from edgekit.core.bundle import read_manifest  # noqa: E402
from edgekit.runtime.telemetry.stats import PSI_SIGNIFICANT  # noqa: E402
from edgekit.views.console import quiet_native_output  # noqa: E402

FLEET = "factory-7"
FIELD_MIX = np.array([0.7, 0.1, 0.1, 0.1])
"""What the plant's bearings are like: mostly healthy. Calibration data follows the same mix,
so a healthy gateway's predictions match the reference."""
PER_WINDOW = 256  # readings per report: one every ~14 s for an hour, in real life


def drift_schedule(windows: int) -> dict[str, list[Sensor]]:
    """Each gateway's accelerometer, window by window."""
    steady = [Sensor()] * windows
    return {
        "press-1": steady,
        "press-2": steady,
        "line-2-pump": [Sensor(gain=1 + 0.06 * w) for w in range(windows)],  # sensitivity creeping up
        "line-2-fan": steady,
        "line-3-fan": [Sensor(bias=0.003 * w) for w in range(windows)],  # DC bias creeping in, e.g. heat
        "compressor": steady,
    }


def main() -> int:
    args = arguments(__doc__, "build/factory_vibration")
    out, checks = args.out, Checks(args.out)
    machines = Machines(out)
    rng = np.random.default_rng(0)
    epochs, windows = (8, 8) if args.quick else (20, 12)

    heading("1. make vibration data and train the fault classifier")
    orders = SKF_6205.defect_orders()
    print(
        "SKF 6205 defect frequencies, x shaft speed: " + ", ".join(f"{k} {v:.3f}" for k, v in orders.items())
    )
    y_train = rng.integers(0, len(CLASSES), 2000)
    x_train = readings(y_train, rng)
    y_eval = rng.integers(0, len(CLASSES), 400)
    np.savez(out / "eval.npz", x=readings(y_eval, rng), y=y_eval)
    np.savez(out / "calib.npz", x=readings(rng.choice(len(CLASSES), 300, p=FIELD_MIX), rng))
    with quiet_native_output():
        import keras

        keras.utils.set_random_seed(0)
        model = build_classifier()
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
        model.save(out / "bearing.keras")
    print(f"trained on {len(x_train)} readings ({epochs} epochs), {model.count_params():,} parameters")

    heading("2. convert for the factory gateway: every precision measured, the fastest that passes shipped")
    key = out / "operator" / "publisher.key"
    machines.edgekit("keys", "init", "--publisher", "-o", key)
    machines.edgekit(
        "convert", out / "bearing.keras", "--target", "x86-gateway", "--precision", "auto",
        "--calibration", out / "calib.npz", "--eval", out / "eval.npz", "--name", "bearing-faults",
        "--sign-key", key, "-o", out / "bearing.ekb",
    )
    manifest = read_manifest(out / "bearing.ekb")
    artifact = manifest.artifacts[0]
    assert artifact.metrics.accuracy is not None and artifact.selection is not None
    checks.numbers["shipped"] = f"{artifact.format} {artifact.precision}"
    checks.numbers["accuracy"] = artifact.metrics.accuracy.artifact
    checks.check(
        "the shipped model finds bearing faults",
        artifact.metrics.accuracy.artifact >= 90,
        f"top-1 {artifact.metrics.accuracy.artifact:.1f}% >= 90% ({artifact.format} {artifact.precision})",
    )
    measured = [c for c in artifact.selection.candidates if not c.problems]
    checks.check(
        "auto measured the candidates",
        artifact.selection.method == "measured-fastest" and len(measured) >= 2,
        f"{artifact.selection.method}: {len(measured)} passing candidates timed",
    )

    heading("3. image the gateways: trust the publisher, install the model, copy the fleet keys")
    machines.device("keys", "init", "--device")
    machines.device("trust", "add", key.with_suffix(".pub"))
    machines.device("install", out / "bearing.ekb")
    machines.edgekit("fleet", "init", FLEET, "--dir", out / "operator" / "fleet")
    device_fleet = machines.device_home / "fleets" / FLEET
    device_fleet.mkdir(parents=True)
    (device_fleet / "fleet.secret").write_bytes((out / "operator" / "fleet" / "fleet.secret").read_bytes())

    schedule = drift_schedule(windows)
    with local_broker(out / "broker") as broker:
        if broker is None:
            return checks.finish(telemetry=False)
        heading(f"4. six gateways, {windows} reports each; the operator watches")
        print(f"making {len(schedule) * windows * PER_WINDOW:,} readings ...", flush=True)
        traffic = {name: [_window(sensor, rng) for sensor in sensors] for name, sensors in schedule.items()}
        common = ["--broker", broker.url, "--fleet", FLEET, "--idle", "5"]
        watch_json = machines.background("fleet", "watch", *common, "--json")
        watch_table = machines.background("fleet", "watch", *common)
        time.sleep(2)  # both subscribed
        accuracy = _run_fleet(machines, broker.url, traffic)
        events = [json.loads(line) for line in watch_json.communicate(timeout=60)[0].splitlines()]
        table = watch_table.communicate(timeout=60)[0]

        heading("5. what `edgekit fleet watch` showed at the end")
        print(table)
        _fleet_checks(checks, out, schedule, events, accuracy)
        x_new = np.concatenate([x for windows_ in traffic.values() for x, _ in windows_])
        y_new = np.concatenate([labels for windows_ in traffic.values() for _, labels in windows_])
        roll_out(machines, checks, out, broker.url, key, x_new, y_new)
    return checks.finish(telemetry=True)


def _window(sensor: Sensor, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.choice(len(CLASSES), PER_WINDOW, p=FIELD_MIX)
    return readings(labels, rng, sensor), labels


def _run_fleet(machines: Machines, url: str, traffic: dict[str, list[Any]]) -> dict[str, list[float]]:
    """Each gateway in its own thread: read, classify one reading at a time, report each window."""
    from edgekit.runtime import Model, Telemetry

    accuracy: dict[str, list[float]] = {name: [] for name in traffic}

    def gateway(name: str) -> None:
        telemetry = Telemetry(
            url, FLEET, device_id=name, window_s=3600,
            outbox=machines.device_home / "telemetry" / f"{name}.sqlite",
        )
        model = Model.load("bearing-faults", threads=1, telemetry=telemetry)
        for x, labels in traffic[name]:
            found = np.array([int(np.argmax(model.predict(reading[np.newaxis]))) for reading in x])
            telemetry.flush()
            accuracy[name].append(float(np.mean(found == labels)))
            time.sleep(0.2)
        model.close()

    with machines.on_device():
        threads = [threading.Thread(target=gateway, args=(name,)) for name in traffic]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return accuracy


def _fleet_checks(
    checks: Checks,
    out: Path,
    schedule: dict[str, list[Sensor]],
    events: list[dict[str, Any]],
    accuracy: dict[str, list[float]],
) -> None:
    from edgekit.runtime.telemetry.privacy import DeviceFleetKeys, pseudonym

    # The operator holds fleet.secret too, so it can tell which pseudonym is which gateway.
    secret = DeviceFleetKeys.load(FLEET, out / "operator" / "fleet", need_public=False).secret
    epoch = int(time.time() // 86400)
    names = {pseudonym(secret, name, e): name for name in schedule for e in (epoch - 1, epoch)}
    series: dict[str, list[float]] = {name: [] for name in schedule}
    for event in sorted((e for e in events if e["event"] == "report"), key=lambda e: e["end"]):
        series[names[event["node"]]].append(event["drift"])
    print("drift score per report, as watch --json saw it (> 0.25 is drift), and accuracy first/last:")
    for name, scores in series.items():
        flagged = next((i for i, s in enumerate(scores) if s >= PSI_SIGNIFICANT), None)
        verdict = "steady" if flagged is None else f"DRIFT from report {flagged + 1}"
        print(
            f"  {name:<12} {' '.join(f'{s:.2f}' for s in scores)}  {verdict:<19} "
            f"{accuracy[name][0]:.0%} -> {accuracy[name][-1]:.0%}"
        )
    drifting = {name for name, sensors in schedule.items() if sensors[-1] != Sensor()}
    flagged_now = {name for name, scores in series.items() if scores and scores[-1] >= PSI_SIGNIFICANT}
    ever = {name for name, scores in series.items() if max(scores, default=0) >= PSI_SIGNIFICANT}
    windows = len(next(iter(schedule.values())))
    checks.numbers["drift"] = series
    checks.numbers["accuracy_per_window"] = accuracy
    checks.check(
        "every report arrived",
        all(len(scores) == windows for scores in series.values()),
        f"{sum(map(len, series.values()))} of {len(schedule) * windows}",
    )
    checks.check("the drifting sensors are flagged", flagged_now == drifting, f"{sorted(flagged_now)}")
    checks.check(
        "no healthy gateway is ever flagged", not (ever - drifting), f"{sorted(ever - drifting) or 'none'}"
    )
    checks.check(
        "drift is caught as it grows, not from the start",
        all(series[name][0] < PSI_SIGNIFICANT for name in drifting),
        ", ".join(f"{name} {series[name][0]:.2f} first" for name in sorted(drifting)),
    )


if __name__ == "__main__":
    run(main)
