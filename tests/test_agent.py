"""The agent refuses what it must, reports why, and keeps the active version: a real agent on
a real Mosquitto, real signed documents, real bundles over HTTP and MQTT."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from rollout_helpers import make_bundles, until

from edgekit.core.validation import updated
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None, reason="needs Mosquitto (apt-get install mosquitto)"
)
FLEET = "hub-fleet"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, publisher: Path) -> dict[int, Path]:
    return make_bundles(tmp_path_factory.mktemp("bundles"), publisher, {1: False, 2: False})


@pytest.fixture
def device(home: Path, bundles: dict[int, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    from edgekit.fleet import init_fleet
    from edgekit.rollout.fleet import connect
    from edgekit.runtime.agent import Agent, AgentConfig
    from edgekit.runtime.store import Store
    from edgekit.runtime.telemetry.broker import Broker

    init_fleet(FLEET, home / "fleets" / FLEET)
    Store().install(bundles[1])
    with LocalBroker(tmp_path / "broker") as broker:
        agent = Agent(AgentConfig(Broker.parse(broker.url), FLEET, "line-3", "hub-1", retry_s=(0.2,))).start()
        operator = connect(Broker.parse(broker.url), FLEET)
        yield {"agent": agent, "operator": operator, "broker": broker}
        operator.stop()
        agent.stop()


def _document(bundle: Path, serial: int, url: str | None = None, **changes: Any):  # type: ignore[no-untyped-def]
    from edgekit.core.deployment import BundleRef, Deployment, Source

    data = bundle.read_bytes()
    source = (
        Source(kind="http", url=url) if url else Source(kind="mqtt", topic="edgekit/x/bundles/y", chunk=4096)
    )
    model = BundleRef(name="meter", version=2, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                      sources=(source,))
    fields = {"fleet": FLEET, "group": "line-3", "rollout": f"r{serial}", "serial": serial, "issued": 0.0,
              "phase": "promoted", "previous": 1, "model": model, **changes}  # fmt: skip
    return Deployment(**fields)


def _send(device: dict[str, Any], document: Any, key: Path) -> None:
    from edgekit.core.signing import load_signing_key
    from edgekit.rollout.fleet import publish_document

    publish_document(device["operator"], document, load_signing_key(key))


def _active() -> int | None:
    from edgekit.runtime.store import Store

    return Store().active()["meter"]


def _failed_with(device: dict[str, Any], serial: int, words: str) -> None:
    agent = device["agent"]
    until(
        lambda: agent.status.serial == serial and agent.status.phase == "failed", f"document {serial} to fail"
    )
    assert words in (agent.status.reason or ""), agent.status.reason
    assert _active() == 1 and agent.status.running == 1


def test_a_document_installs_over_mqtt_chunks_and_a_replay_is_refused(
    device: dict[str, Any], bundles: dict[int, Path], publisher: Path
) -> None:
    from edgekit.rollout.fleet import publish_chunks

    data = bundles[2].read_bytes()
    topic = publish_chunks(device["operator"], FLEET, data, hashlib.sha256(data).hexdigest(), chunk=4096)
    document = _document(bundles[2], 10)
    source = updated(document.model.sources[0], topic=topic)
    _send(device, updated(document, model=updated(document.model, sources=(source,))),
          publisher)
    agent = device["agent"]
    until(lambda: agent.status.phase == "active" and agent.status.running == 2, "v2 from MQTT chunks")
    assert _active() == 2
    rolled_back = _document(bundles[2], 9, phase="rolled-back")  # older serial: a replay
    _send(device, rolled_back, publisher)
    until(lambda: agent.status.refused.get("replay") == 1, "the replay to be refused")
    assert "older than #10" in (agent.status.last_refused or "") and _active() == 2


def test_a_document_signed_by_an_unknown_key_is_refused(
    device: dict[str, Any], bundles: dict[int, Path], tmp_path: Path
) -> None:
    from edgekit.core.signing import create_publisher_key

    stranger = tmp_path / "stranger.key"
    create_publisher_key(stranger)
    agent = device["agent"]
    _send(device, _document(bundles[2], 20), stranger)
    until(lambda: agent.status.refused.get("untrusted") == 1, "an untrusted document to be refused")
    assert "does not trust" in (agent.status.last_refused or "")
    assert _active() == 1


def test_a_document_for_another_fleet_on_this_topic_is_refused(
    device: dict[str, Any], bundles: dict[int, Path], publisher: Path
) -> None:
    from edgekit.core.deployment import rollout_topic, seal_document
    from edgekit.core.signing import load_signing_key, signature_entry
    from edgekit.rollout.fleet import publish

    other = _document(bundles[2], 30, fleet="other-fleet")
    payload = seal_document(other, signature_entry(other.canonical_bytes(), load_signing_key(publisher)))
    publish(device["operator"], rollout_topic(FLEET, "line-3"), payload)
    agent = device["agent"]
    until(lambda: agent.status.refused.get("wrong_topic") == 1, "a moved document to be refused")
    other_group = _document(bundles[2], 31, group="line-4")
    _send(device, other_group, publisher)
    until(lambda: agent.refused.get("other_group") == 1, "another group's document to be ignored")
    assert _active() == 1


def test_tampered_oversized_and_too_large_for_the_disk_are_refused_and_v1_keeps_running(
    device: dict[str, Any], bundles: dict[int, Path], publisher: Path, tmp_path: Path
) -> None:
    from edgekit.rollout.bundle_server import BundleServer

    tampered = tmp_path / "tampered.ekb"
    shutil.copy(bundles[2], tampered)
    raw = bytearray(tampered.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    tampered.write_bytes(bytes(raw))
    server = BundleServer(tampered.read_bytes(), "x" * 64, "127.0.0.1:0").start()
    real = BundleServer(bundles[2].read_bytes(), "y" * 64, "127.0.0.1:0").start()
    try:
        _send(device, _document(bundles[2], 40, url=server.url()), publisher)
        _failed_with(device, 40, "sha256")
        short = _document(bundles[2], 41, url=real.url())
        short = updated(short, model=updated(short.model, size=short.model.size - 100))
        _send(device, short, publisher)
        _failed_with(device, 41, "more than")
        huge = _document(bundles[2], 42, url=real.url())
        huge = updated(huge, model=updated(huge.model, size=1 << 40))
        _send(device, huge, publisher)
        _failed_with(device, 42, "not enough disk space")
    finally:
        server.stop()
        real.stop()


def test_the_agent_status_is_retained_on_the_broker_with_the_reason(
    device: dict[str, Any], bundles: dict[int, Path], publisher: Path
) -> None:
    from edgekit.rollout.fleet import FleetState, snapshot

    _send(device, _document(bundles[2], 50, url="http://127.0.0.1:9/nothing.ekb"), publisher)
    agent = device["agent"]
    until(
        lambda: agent.status.serial == 50 and agent.status.phase == "failed", "an unreachable source to fail"
    )
    assert "retrying" in (agent.status.reason or "")
    state = FleetState(FLEET)

    def failed_on_the_broker() -> bool:
        snapshot(device["operator"], state, quiet_s=0.1)
        seen = state.agents.get(agent.status.node)
        return seen is not None and seen.phase == "failed"

    until(failed_on_the_broker, "the failed status on the broker")
    status = state.agents[agent.status.node]
    assert (
        status.running == 1
        and status.models == {"meter": 1}
        and "Connection refused" in (status.reason or "")
    )


def test_promote_re_signs_only_a_document_signed_by_its_own_key(
    device: dict[str, Any], bundles: dict[int, Path], publisher: Path, tmp_path: Path
) -> None:
    from edgekit.core.errors import SignatureError
    from edgekit.core.signing import create_publisher_key
    from edgekit.rollout.deploy import override
    from edgekit.runtime.telemetry.broker import Broker

    stranger = tmp_path / "stranger.key"
    create_publisher_key(stranger)
    _send(device, _document(bundles[2], 60, phase="canary"), stranger)
    broker = Broker.parse(device["broker"].url)
    with pytest.raises(SignatureError, match="not signed by key"):
        override(broker, FLEET, "line-3", publisher, "promoted", tmp_path / "history.jsonl")
    assert not (tmp_path / "history.jsonl").exists()
    _send(device, _document(bundles[2], 61, phase="canary"), publisher)
    until(
        lambda: device["agent"].state.serials.get("edgekit/hub-fleet/rollout/line-3") == 61,
        "our own document",
    )
    final = override(broker, FLEET, "line-3", publisher, "promoted", tmp_path / "history.jsonl")
    assert final.phase == "promoted" and final.serial > 61 and final.rollout == "r61"
