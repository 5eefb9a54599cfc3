"""Smart-home meter reader: a camera hub reads the digit wheels of a water meter.

    python examples/smart_home_meter/run.py [--quick] [--out build/smart_home_meter]

The whole loop, on scikit-learn's digits as the meter camera sees them (meter.py):
train the reader, convert it to int8 TFLite for a Raspberry Pi 4, sign it, install it
encrypted on the hub, and read meters with telemetry to a local Mosquitto broker. Months
later condensation fogs the meter window: accuracy falls, the drift score rises, and the
hub sends its low-confidence readings home (encrypted to the fleet key). The operator
collects them, labels them, fine-tunes, converts v2 calibrated on them, and installs it:
accuracy comes back and the drift score falls. Exit code 1 if a check fails.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.runtime.telemetry.stats import PSI_SIGNIFICANT
from edgekit.views.console import quiet_native_output

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import Checks, Machines, arguments, heading, local_broker, run  # noqa: E402
from meter import FOGGED, INSTALLED, build_reader, camera, digits  # noqa: E402

FLEET = "meters"
CONFIDENT = 0.9
"""The hub sends home every reading the model is less sure of than this."""


def read(model: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the hub does all day, one digit wheel at a time: the digits and the confidences."""
    scores = np.concatenate([model.predict(image[np.newaxis]) for image in images])
    return scores.argmax(axis=1), scores.max(axis=1)


def load(name: str, telemetry: Any = None) -> Any:
    from edgekit.runtime import Model

    with quiet_native_output():  # LiteRT's one-line INFO about its CPU delegate
        return Model.load(name, telemetry=telemetry)


def train(x: np.ndarray, y: np.ndarray, epochs: int, save: Path, start: Path | None = None) -> None:
    """Train (or fine-tune ``start``) and save; TensorFlow's start-up chatter is hidden."""
    with quiet_native_output():
        import keras

        keras.utils.set_random_seed(0)
        if start is None:
            model = build_reader()
            model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        else:
            model = keras.models.load_model(start)
        model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
        model.save(save)


def main() -> int:
    args = arguments(__doc__, "build/smart_home_meter")
    out, checks = args.out, Checks(args.out)
    machines = Machines(out)
    rng = np.random.default_rng(0)
    x, y = digits()
    order = rng.permutation(len(x))
    # training, the hub's first weeks, its fogged months, and a test set nobody trains on
    train_ix, week_ix, fog_ix, test_ix = np.split(order, [900, 1150, 1500])
    epochs, tune_epochs = (10, 8) if args.quick else (25, 15)

    heading(f"1. train the reader on installed-camera digits ({epochs} epochs)")
    x_train = np.concatenate([camera(x[train_ix], INSTALLED, rng) for _ in range(3)])
    y_train = np.tile(y[train_ix], 3)
    train(x_train, y_train, epochs, out / "meter_v1.keras")
    np.savez(out / "calib.npz", x=x_train[:300])
    test_installed, test_fogged = camera(x[test_ix], INSTALLED, rng), camera(x[test_ix], FOGGED, rng)
    np.savez(out / "eval.npz", x=test_installed, y=y[test_ix])
    week_images = camera(x[week_ix], INSTALLED, rng)
    print(f"{len(x_train)} training images; held out: {len(test_ix)} digits")

    heading("2. convert to int8 TFLite for a Raspberry Pi 4, signed")
    key = out / "operator" / "publisher.key"
    machines.edgekit("keys", "init", "--publisher", "-o", key)
    machines.edgekit(
        "convert", out / "meter_v1.keras", "--target", "raspberry-pi-4", "--precision", "int8",
        "--calibration", out / "calib.npz", "--eval", out / "eval.npz", "--name", "meter",
        "--sign-key", key, "-o", out / "meter-v1.ekb",
    )

    heading("3. the hub: trust the publisher, install v1 into the encrypted store")
    machines.device("keys", "init", "--device")
    machines.device("trust", "add", key.with_suffix(".pub"))
    machines.device("install", out / "meter-v1.ekb")
    machines.edgekit("fleet", "init", FLEET, "--dir", out / "operator" / "fleet")
    device_fleet = machines.device_home / "fleets" / FLEET
    device_fleet.mkdir(parents=True)
    for name in ("fleet.pub", "fleet.secret"):  # what the operator copies to each hub
        shutil.copy(out / "operator" / "fleet" / name, device_fleet / name)

    fog_images = camera(x[fog_ix], FOGGED, rng)
    with local_broker(out / "broker") as broker:
        collect = _collector(machines, broker, out)
        if broker:  # the collector subscribes first, so the broker keeps the fleet's messages for it
            collect("--duration", "0.5", "--json")

        heading("4. read meters: first with the camera as installed, then fogged (one report each)")
        with machines.on_device():
            from edgekit.runtime import Telemetry

            telemetry = (
                Telemetry(
                    broker.url,
                    FLEET,
                    device_id="hub-kitchen",
                    window_s=3600,
                    capture=f"low-confidence:{CONFIDENT}",
                    capture_max=512,
                    capture_max_bytes=1 << 20,
                )
                if broker
                else None
            )
            model = load("meter", telemetry)
            print(f"loaded {model.info.name} v{model.info.version} on {model.info.engine}")
            digits_installed, confidence_installed = read(model, week_images)
            if telemetry:
                telemetry.flush()
            digits_fogged, confidence_fogged = read(model, fog_images)
            model.close()
        v1_installed = float(np.mean(digits_installed == y[week_ix]))
        v1_fogged = float(np.mean(digits_fogged == y[fog_ix]))
        print(f"v1: {v1_installed:.1%} of installed-camera readings right, {v1_fogged:.1%} through the fog")

        heading("5. the operator collects the fleet's reports and low-confidence readings")
        if broker:
            collect("--idle", "3")
            samples, recent = _since_drift(out / "collected")
        else:
            print("no broker: taking the readings the hub would have sent, by the same rule, here")
            week, fogged = confidence_installed < CONFIDENT, confidence_fogged < CONFIDENT
            samples = np.concatenate([week_images[week], fog_images[fogged]])
            recent = np.repeat([False, True], [week.sum(), fogged.sum()])

        heading("6. label them, fine-tune, convert v2 calibrated on what the hub sees now, install")
        # A person reads each image at a labelling tool; here the simulation's ground truth does.
        shown = zip([*week_images, *fog_images], [*y[week_ix], *y[fog_ix]], strict=True)
        truth = {image.tobytes(): label for image, label in shown}
        labels = np.array([truth[s.tobytes()] for s in samples])
        held_back = np.flatnonzero(recent)[::3]  # a third of the fogged readings checks v2
        tune = np.setdiff1d(np.arange(len(samples)), held_back)
        print(
            f"{len(samples)} readings labelled ({recent.sum()} since the drift began): "
            f"{len(tune)} to fine-tune on, {len(held_back)} to check v2"
        )
        train(
            np.concatenate([x_train, np.repeat(samples[tune], 4, axis=0)]),
            np.concatenate([y_train, np.repeat(labels[tune], 4)]),
            tune_epochs,
            out / "meter_v2.keras",
            start=out / "meter_v1.keras",
        )
        np.savez(out / "field.npz", x=samples[recent])
        np.savez(out / "eval_v2.npz", x=samples[held_back], y=labels[held_back])
        machines.edgekit(
            "convert", out / "meter_v2.keras", "--target", "raspberry-pi-4", "--precision", "int8",
            "--calibration", out / "field.npz", "--eval", out / "eval_v2.npz", "--force", "--name", "meter",
            "--model-version", "2", "--sign-key", key, "-o", out / "meter-v2.ekb",
        )
        machines.device("install", out / "meter-v2.ekb")

        heading("7. v2 reads the fogged meter")
        with machines.on_device():
            telemetry = (
                Telemetry(broker.url, FLEET, device_id="hub-kitchen", window_s=3600) if broker else None
            )
            model = load("meter", telemetry)
            v2_fogged = float(np.mean(read(model, test_fogged)[0] == y[test_ix]))
            model.close()
            v2_installed = float(np.mean(read(load("meter"), test_installed)[0] == y[test_ix]))
        print(f"v{model.info.version}: {v2_fogged:.1%} through the fog, {v2_installed:.1%} installed-camera")
        if broker:
            collect("--idle", "3")

    checks.numbers = {
        "v1_installed_accuracy": v1_installed,
        "v1_fogged_accuracy": v1_fogged,
        "v2_fogged_accuracy": v2_fogged,
        "v2_installed_accuracy": v2_installed,
        "samples": len(samples),
    }
    checks.check("v1 reads the installed camera", v1_installed >= 0.85, f"{v1_installed:.1%} >= 85%")
    checks.check("fog hurts v1", v1_fogged <= v1_installed - 0.15, f"{v1_fogged:.1%} vs {v1_installed:.1%}")
    checks.check("v2 reads through the fog", v2_fogged >= max(0.75, v1_fogged + 0.15), f"{v2_fogged:.1%}")
    checks.check("v2 still reads the installed camera", v2_installed >= 0.8, f"{v2_installed:.1%} >= 80%")
    if broker is not None:
        _drift_checks(checks, out / "collected", len(samples))
    return checks.finish(telemetry=broker is not None)


def _collector(machines: Machines, broker: Any, out: Path) -> Any:
    def collect(*flags: str) -> Any:
        return machines.edgekit(
            "fleet", "collect", "--broker", broker.url, "--fleet", FLEET, "--group", "none",
            "--fleet-dir", out / "operator" / "fleet", "--out", out / "collected", *flags,
        )

    return collect


def _since_drift(collected: Path) -> tuple[np.ndarray, np.ndarray]:
    """All collected samples, and which arrived after the first report that showed drift."""
    reports = [json.loads(line) for line in (collected / "reports.jsonl").read_text().splitlines()]
    drifted = [r["seq"] for r in reports if r["drift"] and r["drift"]["score"] >= PSI_SIGNIFICANT]
    with np.load(collected / "samples.npz") as samples:
        return samples["x"], samples["seq"] > min(drifted, default=0)


def _drift_checks(checks: Checks, collected: Path, samples: int) -> None:
    drift = json.loads((collected / "drift.json").read_text())
    (series,) = drift["nodes"].values()  # one hub
    scores = [window["score"] for window in series]
    print("\ndrift score per report (PSI against each version's reference; > 0.25 is drift):")
    for label, score in zip(("v1, camera as installed", "v1, fogged", "v2, fogged"), scores, strict=False):
        print(f"  {label:<24} {score:.3f}")
    checks.numbers["drift_scores"] = scores
    checks.check("three reports collected", len(scores) == 3, f"{len(scores)} reports")
    if len(scores) == 3:
        checks.check("no drift as installed", scores[0] < 0.25, f"{scores[0]:.3f} < 0.25")
        checks.check("fog flagged as drift", scores[1] >= 0.25, f"{scores[1]:.3f} >= 0.25")
        checks.check("v2 calibrated on the fog: drift gone", scores[2] < 0.25, f"{scores[2]:.3f} < 0.25")
    checks.check("low-confidence readings came home", samples >= 50, f"{samples} samples >= 50")


if __name__ == "__main__":
    run(main)
