"""The example's last step: a retrained v2 rolled out to the gateways through canaries and
promoted, then a v3 that is too slow for them, rolled back automatically on its p95.

Each gateway is its own process with its own EDGEKIT_HOME (device key, trusted publisher,
fleet secret, encrypted store): ``edgekit agent`` in a thread, and the gateway's
application, classifying readings with the store's active version and reporting telemetry.

    python examples/factory_vibration/rollout.py --gateway NAME --broker URL   (one gateway)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import Checks, Machines, heading  # noqa: E402
from signals import CLASSES, LENGTH, readings  # noqa: E402

FLEET = "factory-7"
GROUP = "plant-1"
RULES = (
    "--canary",
    "10%",
    "--watch",
    "15s",
    "--min-calls",
    "50",
    "--max-p95-ms",
    "10",
    "--max-drift",
    "1.0",
    "--settle",
    "60s",
)
"""--max-drift 1.0: a window here holds about 40 readings, and the PSI of one gateway over so few swings
by several tenths from window to window; a real calibration fault (step 4) scores 5 and more."""


def build_slow_classifier():  # type: ignore[no-untyped-def]
    """A v3 someone made "better" with wide convolutions at full resolution: 2.3 G
    multiply-adds a reading, far too slow for a gateway."""
    import keras

    return keras.Sequential(
        [
            keras.Input((LENGTH, 1), name="vibration"),
            keras.layers.Conv1D(192, 31, padding="same", activation="relu"),
            keras.layers.Conv1D(192, 31, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ],
        name="bearing_faults",
    )


def roll_out(
    machines: Machines, checks: Checks, out: Path, broker_url: str, key: Path, x: Any, y: Any
) -> None:
    import keras

    heading("6. retrain v2 on this month's readings, roll it out through canaries; then a too-slow v3")
    model = keras.models.load_model(out / "bearing.keras")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(out / "bearing-v2.keras")
    slow = build_slow_classifier()
    slow.compile("adam", "sparse_categorical_crossentropy")
    slow.fit(x[:32], y[:32], epochs=1, batch_size=32, verbose=0)
    slow.save(out / "bearing-v3.keras")
    # the calibration readings follow the plant's mix, so they are the drift reference;
    # v3's maker skipped the eval
    for version, checked in ((2, ("--eval", out / "eval.npz")), (3, ())):
        machines.edgekit(
            "convert", out / f"bearing-v{version}.keras", "--target", "x86-gateway", "--format", "onnx",
            "--precision", "fp32", "--name", "bearing-faults", "--model-version", str(version),
            "--calibration", out / "calib.npz", *checked, "--sign-key", key,
            "-o", out / f"bearing-v{version}.ekb",
        )
    gateways = [
        _gateway_home(out, name, key) for name in ("press-1", "press-2", "lathe-1", "lathe-2", "mill-1")
    ]
    processes = [_start(home, broker_url) for home in gateways]
    try:
        _wait_online(broker_url, len(gateways))
        history = out / "operator" / "rollouts.jsonl"
        common = (
            "--broker",
            broker_url,
            "--fleet",
            FLEET,
            "--group",
            GROUP,
            "--key",
            key,
            "--history",
            history,
        )
        promoted = _deploy(machines, out / "bearing-v2.ekb", common)
        slow_one = _deploy(machines, out / "bearing-v3.ekb", common)
        status = machines.edgekit(
            "fleet", "rollout", "status", "--broker", broker_url, "--fleet", FLEET, "--json"
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    checks.numbers["rollout_v2"] = promoted
    checks.numbers["rollout_v3"] = slow_one
    everywhere = promoted["settled"] and promoted["running"] == {"2": 5}
    checks.check("the retrained v2 is promoted to every gateway",
                 promoted["decision"] == "promoted" and everywhere,
                 f"{promoted['decision']}: {promoted['reason']}; running {promoted['running']}")
    canary = slow_one["numbers"]["canary"]
    checks.check("the slow v3 is rolled back on its p95",
                 slow_one["decision"] == "rolled-back" and "p95" in slow_one["reason"]
                 and slow_one["running"] == {"2": 5},
                 f"{slow_one['reason']}; canary p95 {canary['p95_ms']} ms; "
                 f"running {slow_one['running']}")
    row = status[0]
    checks.check("rollout status agrees", row["phase"] == "rolled-back" and row["healthy"] == 5, f"{row}")


def _deploy(machines: Machines, bundle: Path, common: tuple[Any, ...]) -> dict[str, Any]:
    import json
    import shlex

    command = ["edgekit", "fleet", "deploy", str(bundle), *map(str, common), *RULES, "--json"]
    print(f"[operator]$ {shlex.join(command)}", flush=True)
    env = {**os.environ, "EDGEKIT_HOME": str(machines.operator_home)}
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    if not done.stdout:
        raise SystemExit(f"example stopped: fleet deploy exited {done.returncode} with no outcome")
    return dict(json.loads(done.stdout))


def _gateway_home(out: Path, name: str, key: Path) -> Path:
    """What imaging a gateway does: a device key, the trusted publisher, the fleet secret, v1."""
    from edgekit.core.signing import Trust
    from edgekit.runtime.keys import FileKeyProvider, create_device_key
    from edgekit.runtime.store import Store

    home = out / "gateways" / name
    home.mkdir(parents=True)
    create_device_key(home / "device.key")
    Trust(home / "trust").add(key.with_suffix(".pub"))
    (home / "fleets" / FLEET).mkdir(parents=True)
    for file in ("fleet.secret", "fleet.pub"):
        (home / "fleets" / FLEET / file).write_bytes((out / "operator" / "fleet" / file).read_bytes())
    Store(home, FileKeyProvider(home / "device.key")).install(
        out / "bearing.ekb", trust=Trust(home / "trust")
    )
    return home


def _start(home: Path, broker_url: str) -> subprocess.Popen[bytes]:
    log = open(home / "gateway.log", "ab")  # the process owns it
    command = [sys.executable, __file__, "--gateway", home.name, "--broker", broker_url]
    return subprocess.Popen(command, env={**os.environ, "EDGEKIT_HOME": str(home)}, stdout=log, stderr=log)


def _wait_online(broker_url: str, count: int) -> None:
    from edgekit.rollout.fleet import FleetState, connect, snapshot
    from edgekit.runtime.telemetry.broker import Broker

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        inbox = connect(Broker.parse(broker_url), FLEET)
        try:
            online = len(snapshot(inbox, FleetState(FLEET), quiet_s=0.3).in_scope(GROUP))
            print(f"{online} of {count} gateway agents online", flush=True)
            if online >= count:
                print(f"{count} gateway agents online", flush=True)
                return
        finally:
            inbox.stop()
    raise SystemExit("example stopped: the gateway agents did not come online within 120 s")


def gateway(name: str, broker_url: str) -> None:
    """One gateway: the agent, and the application classifying 20 readings a second."""
    import signal

    from edgekit.runtime import Model, Telemetry
    from edgekit.runtime.agent import Agent, AgentConfig
    from edgekit.runtime.store import Store
    from edgekit.runtime.telemetry.broker import Broker

    halt = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: halt.set())
    agent = Agent(AgentConfig(Broker.parse(broker_url), FLEET, GROUP, name, heartbeat_s=5.0)).start()
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    batch = readings(rng.choice(len(CLASSES), 200, p=[0.7, 0.1, 0.1, 0.1]), rng)
    while Store().active().get("bearing-faults") is None:  # the first install
        if halt.wait(0.1):
            agent.stop()
            return
    # The application follows what the agent installs: each version gets a Telemetry of its own.
    model = Model.follow("bearing-faults", threads=1, telemetry=lambda: Telemetry(
        broker_url, FLEET, device_id=name, window_s=2.0, k_anonymity=1))  # fmt: skip
    for step in range(10**9):
        if halt.wait(0.05):
            break
        model.predict(batch[step % len(batch)][np.newaxis])
    model.close()
    agent.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--broker", required=True)
    arguments = parser.parse_args()
    gateway(arguments.gateway, arguments.broker)
