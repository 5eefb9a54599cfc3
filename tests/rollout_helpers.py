"""Simulated devices for rollout tests: each a process with its own EDGEKIT_HOME, device key,
trust store and fleet keys, running the real agent and a workload that predicts with the
store's active version and reports telemetry through the real broker.

Run as a script, it is one device: ``python tests/rollout_helpers.py --broker URL --fleet F
--device-id D [--group G] [--rate 20]`` with EDGEKIT_HOME set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def classifier(seed: int, faulty: bool = False):  # type: ignore[no-untyped-def]
    """x [N, 4] in [0, 1) -> softmax over 3 classes. ``faulty`` also gathers a row indexed by
    floor(5 * max(x)): out of range when max(x) >= 0.8, so ONNX Runtime raises on most real
    inputs while zeros (the agent's smoke check) pass."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"])]
    initializers = [weights]
    if faulty:
        initializers += [
            numpy_helper.from_array(np.zeros((4, 3), np.float32), "rows"),
            numpy_helper.from_array(np.array(5.0, np.float32), "five"),
        ]
        nodes += [
            helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
            helper.make_node("Mul", ["peak", "five"], ["scaled"]),
            helper.make_node("Floor", ["scaled"], ["floored"]),
            helper.make_node("Cast", ["floored"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["rows", "index"], ["row"], axis=0),
            helper.make_node("Add", ["logits", "row"], ["biased"]),
        ]
    nodes.append(helper.make_node("Softmax", ["biased" if faulty else "logits"], ["probs"], axis=-1))
    graph = helper.make_graph(
        nodes, "meter", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])], initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def make_bundles(folder: Path, publisher: Path, versions: dict[int, bool]) -> dict[int, Path]:
    """meter vN bundles (ONNX fp32, signed); ``versions`` maps each version to ``faulty``."""
    import onnx

    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.profiles import load_profile

    out = {}
    for version, faulty in versions.items():
        source = folder / f"meter-v{version}.onnx"
        onnx.save(classifier(version, faulty), source)
        out[version] = convert(ConvertOptions(
            model=source, profile=load_profile("x86-gateway"), output=folder / f"meter-v{version}.ekb",
            format="onnx", precision="fp32", name="meter", version=version, sign_key=publisher,
        )).output
    return out


def make_device(home: Path, publisher: Path, fleet_keys: Path, fleet: str, first: Path | None) -> Path:
    """A device's EDGEKIT_HOME: device key, trusted publisher, fleet keys, ``first`` installed."""
    from edgekit.core.signing import Trust
    from edgekit.runtime.keys import FileKeyProvider, create_device_key
    from edgekit.runtime.store import Store

    home.mkdir(parents=True)
    create_device_key(home / "device.key")
    Trust(home / "trust").add(publisher.with_suffix(".pub"))
    keys = home / "fleets" / fleet
    keys.mkdir(parents=True)
    for name in ("fleet.secret", "fleet.pub"):
        shutil.copy(fleet_keys / name, keys / name)
    if first is not None:
        Store(home, FileKeyProvider(home / "device.key")).install(first, trust=Trust(home / "trust"))
    return home


@dataclass
class Device:
    home: Path
    device_id: str
    group: str | None
    process: subprocess.Popen[bytes] | None = None

    def start(
        self, broker: str, fleet: str, rate: float = 20.0, workload: bool = True, heartbeat_s: float = 30.0
    ) -> Device:
        command = [sys.executable, str(HERE / "rollout_helpers.py"), "--broker", broker, "--fleet", fleet,
                   "--device-id", self.device_id, "--rate", str(rate), "--heartbeat", str(heartbeat_s)]  # fmt: skip
        if self.group:
            command += ["--group", self.group]
        if not workload:
            command.append("--no-workload")
        log = open(self.home / "device.log", "ab")  # the process owns it
        self.process = subprocess.Popen(command, env={**os.environ, "EDGEKIT_HOME": str(self.home)},
                                        stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def active(self) -> int | None:
        from edgekit.runtime.keys import FileKeyProvider
        from edgekit.runtime.store import Store

        return Store(self.home, FileKeyProvider(self.home / "device.key")).active().get("meter")

    def log(self) -> str:
        path = self.home / "device.log"
        return path.read_text(errors="replace") if path.exists() else ""


def until(condition: Callable[[], bool], what: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _workload(fleet: str, broker: str, device_id: str, rate: float, halt: threading.Event) -> None:
    """Predict ``rate`` times a second with the active version, reloading when it changes."""
    from edgekit.runtime import Model, Telemetry
    from edgekit.runtime.store import Store

    telemetry = None
    rng = np.random.default_rng(abs(hash(device_id)) % 2**32)
    model, loaded = None, None
    while not halt.wait(1.0 / rate):
        active = Store().active().get("meter")
        if active is None:
            continue
        if active != loaded:
            if model is not None:
                model.close()
                telemetry.close()
            telemetry = Telemetry(broker, fleet, device_id=device_id, window_s=1.0, k_anonymity=1)
            model, loaded = Model.load("meter", telemetry=telemetry), active
        try:
            model.predict(rng.random((1, 4), dtype=np.float32))
        except Exception:  # counted by telemetry as an error, as an application would see it
            pass
    if telemetry is not None:
        telemetry.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--broker", "--fleet", "--device-id"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--group")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--no-workload", action="store_true")
    args = parser.parse_args()
    import signal

    from edgekit.runtime.agent import Agent, AgentConfig
    from edgekit.runtime.telemetry.broker import Broker

    halt = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: halt.set())
    agent = Agent(AgentConfig(Broker.parse(args.broker), args.fleet, args.group, args.device_id,
                              heartbeat_s=args.heartbeat, retry_s=(0.5, 1.0, 2.0))).start()
    worker = None
    if not args.no_workload:
        worker = threading.Thread(
            target=_workload, args=(args.fleet, args.broker, args.device_id, args.rate, halt)
        )
        worker.start()
    halt.wait()
    if worker is not None:
        worker.join(timeout=10)
    agent.stop()


if __name__ == "__main__":
    main()
