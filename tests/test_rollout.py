"""Over-the-air rollouts end to end: a real Mosquitto, real agents in their own processes
(each its own EDGEKIT_HOME, keys and store), real bundles and the real ``fleet deploy``."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from rollout_helpers import Device, make_bundles, make_device, until

from edgekit.fleet import open_engine
from edgekit.fleet.dashboard.rollouts import rollout_sections
from edgekit.rollout.history import read_history
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_mosquitto() is None, reason="needs Mosquitto (apt-get install mosquitto)"),
]
FLEET = "factory-7"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, publisher: Path) -> dict[str, Any]:
    from edgekit.fleet import init_fleet

    folder = tmp_path_factory.mktemp("fleet")
    return {
        "keys": init_fleet(FLEET, folder / "keys"),
        "bundles": make_bundles(folder, publisher, {1: False, 2: False, 3: True}),
        "folder": folder,
    }


def _devices(
    root: Path, fleet: dict[str, Any], publisher: Path, count: int, group: str = "line-3"
) -> list[Device]:
    return [
        Device(make_device(root / f"device-{i}", publisher, fleet["keys"], FLEET, fleet["bundles"][1]),
               f"gateway-{i:02d}", group)
        for i in range(count)
    ]  # fmt: skip


def _deploy(
    broker: LocalBroker, bundle: Path, publisher: Path, history: Path, *extra: str
) -> tuple[int, dict]:
    command = [sys.executable, "-m", "edgekit", "fleet", "deploy", str(bundle), "--broker", broker.url,
               "--fleet", FLEET, "--key", str(publisher), "--group", "line-3", "--history", str(history),
               "--json", *extra]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _online(broker: LocalBroker, count: int) -> None:
    from edgekit.rollout.fleet import FleetState, connect, snapshot
    from edgekit.runtime.telemetry.broker import Broker

    def ready() -> bool:
        inbox = connect(Broker.parse(broker.url), FLEET)
        try:
            state = snapshot(inbox, FleetState(FLEET), quiet_s=0.3)
        finally:
            inbox.stop()
        return len(state.in_scope("line-3")) >= count

    until(ready, f"{count} agents online", 90)


def test_healthy_v2_is_promoted_and_a_faulty_v3_rolled_back_on_20_devices(
    tmp_path: Path, fleet: dict[str, Any], publisher: Path
) -> None:
    history = tmp_path / "rollouts.jsonl"
    with LocalBroker(tmp_path / "broker") as broker:
        devices = [d.start(broker.url, FLEET, rate=10) for d in _devices(tmp_path, fleet, publisher, 20)]
        try:
            _online(broker, 20)
            rules = ("--canary", "10%", "--watch", "10s", "--min-calls", "60", "--settle", "60s")
            code, promoted = _deploy(broker, fleet["bundles"][2], publisher, history, *rules)
            assert code == 0 and promoted["decision"] == "promoted", promoted
            assert promoted["canaries"] == 2 and promoted["devices"] == 20
            assert promoted["numbers"]["canary"]["calls"] >= 60 and promoted["settled"]
            assert [d.active() for d in devices] == [2] * 20

            db = str(tmp_path / "fleet.sqlite")  # this one's events also go to the fleet database
            code, rolled = _deploy(broker, fleet["bundles"][3], publisher, history, *rules, "--db", db)
            assert code == 1 and rolled["decision"] == "rolled-back", rolled
            assert "error rate" in rolled["reason"] and rolled["settled"]
            assert [d.active() for d in devices] == [2] * 20
        finally:
            for device in devices:
                device.stop()
    decision = read_history(history, rolled["rollout"])
    numbers = next(e for e in decision if e["event"] == "decision")["numbers"]
    assert numbers["canary"]["error_rate"] > 0.3 and numbers["control"]["error_rate"] == 0
    assert numbers["limits"]["max_error_rate"] == 0.01
    engine = open_engine(db)
    sections = rollout_sections(engine, FLEET)  # what the dashboard's Rollouts page shows
    engine.dispose()
    assert [(s["rollout"], s["decision"]) for s in sections] == [(rolled["rollout"], "rolled-back")]
    assert [e["event"] for e in sections[0]["events"]] == ["started", "decision", "settled"]
    assert sections[0]["events"][1]["body"]["numbers"] == numbers


def test_a_broker_outage_mid_rollout_resumes_when_it_returns(
    tmp_path: Path, fleet: dict[str, Any], publisher: Path
) -> None:
    history = tmp_path / "rollouts.jsonl"
    with LocalBroker(tmp_path / "broker") as broker:
        devices = [d.start(broker.url, FLEET, rate=10) for d in _devices(tmp_path, fleet, publisher, 4)]
        try:
            _online(broker, 4)
            result: dict[str, Any] = {}
            rules = ("--canary", "50%", "--watch", "20s", "--min-calls", "40", "--settle", "60s")

            def run() -> None:
                result["outcome"] = _deploy(broker, fleet["bundles"][2], publisher, history, *rules)

            deploying = threading.Thread(target=run)
            deploying.start()
            until(lambda: read_history(history) != [], "the rollout to start")
            broker.stop()  # devices keep serving v1 offline; their telemetry waits in the outbox
            threading.Event().wait(4)
            broker.start()
            deploying.join(timeout=240)
            code, outcome = result["outcome"]
            assert code == 0 and outcome["decision"] == "promoted" and outcome["settled"], outcome
            assert [d.active() for d in devices] == [2] * 4
        finally:
            for device in devices:
                device.stop()


def test_kill_9_mid_download_or_install_leaves_a_version_and_finishes_on_restart(
    tmp_path: Path, fleet: dict[str, Any], publisher: Path
) -> None:
    from edgekit.core.deployment import BundleRef, Deployment, Source
    from edgekit.core.signing import load_signing_key
    from edgekit.rollout.bundle_server import BundleServer
    from edgekit.rollout.fleet import connect, publish_document
    from edgekit.runtime.keys import FileKeyProvider
    from edgekit.runtime.store import Store
    from edgekit.runtime.telemetry.broker import Broker

    bundle = fleet["bundles"][2]
    data = bundle.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    rng = random.Random(7)
    with LocalBroker(tmp_path / "broker") as broker:
        server = BundleServer(data, sha, "127.0.0.1:0", rate=len(data) / 1.5).start()  # 1.5 s a download
        inbox = connect(Broker.parse(broker.url), FLEET)
        document = Deployment(fleet=FLEET, group="line-3", rollout="kill-test", serial=1, issued=0,
                              phase="promoted", previous=1,
                              model=BundleRef(name="meter", version=2, sha256=sha, size=len(data),
                                              sources=(Source(kind="http", url=server.url()),)))
        publish_document(inbox, document, load_signing_key(publisher))
        inbox.stop()
        points = 50
        for point in range(points):
            device = _devices(tmp_path / f"run-{point}", fleet, publisher, 1)[0]
            device.start(broker.url, FLEET, workload=False)
            threading.Event().wait(rng.uniform(0.5, 3.5))
            device.kill()
            store = Store(device.home, FileKeyProvider(device.home / "device.key"))
            assert store.active()["meter"] in (1, 2), device.log()
            assert all(entry.problem is None for entry in store.installed())
            store.load("meter")  # every tag of the active version checks
            device.start(broker.url, FLEET, workload=False)
            until(lambda d=device: d.active() == 2, f"point {point} to finish v2", 60)
            device.stop()
        server.stop()
