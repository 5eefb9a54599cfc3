"""The operator's side of a rollout over MQTT: what the fleet reports (retained agent
statuses and documents), signed documents published, and bundles as retained chunks."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edgekit.core.atomic import atomic_write
from edgekit.core.deployment import (
    FLEET_WIDE,
    AgentStatus,
    Deployment,
    agent_filter,
    chunk_topic,
    open_document,
    rollout_filter,
    seal_document,
    signed_by,
)
from edgekit.core.errors import EdgekitError, InputError
from edgekit.core.paths import edgekit_home
from edgekit.core.signing import signature_entry
from edgekit.fleet.inbox import Inbox
from edgekit.runtime.telemetry.broker import Broker

log = logging.getLogger("edgekit.fleet")
CHUNK_BYTES = 256 * 1024


@dataclass
class FleetState:
    """The latest retained agent status per node and document per group."""

    fleet: str
    agents: dict[str, AgentStatus] = field(default_factory=dict)
    documents: dict[str | None, Deployment] = field(default_factory=dict)
    """As read, unverified: for display. ``signed_document`` verifies one before it is reused."""
    envelopes: dict[str | None, bytes] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    """Malformed messages set aside, by topic kind (agent, rollout): anyone can publish."""

    def take(self, topic: str, payload: bytes) -> AgentStatus | Deployment | None:
        """Record one message on the agent or rollout topics; others are None."""
        parts = topic.split("/")
        if len(parts) != 4 or not payload:
            return None
        try:
            if parts[3] == "agent":
                status = AgentStatus.model_validate_json(payload)
                if status.node != parts[2]:
                    return None
                self.agents[status.node] = status
                return status
            if parts[2] == "rollout":
                document = Deployment.model_validate_json(_document_bytes(payload))
                self.documents[document.group] = document
                self.envelopes[document.group] = payload
                return document
        except (ValidationError, ValueError, KeyError, TypeError, RecursionError):  # "[" * 40000 recurses
            self.skipped[parts[3] if parts[3] == "agent" else "rollout"] += 1
            log.debug("skipping a malformed message on %s", topic)
        return None

    def in_scope(self, group: str | None, online: bool = True) -> list[AgentStatus]:
        return [
            s for s in self.agents.values()
            if (group is None or s.group == group) and (not online or s.phase != "offline")
        ]  # fmt: skip

    def groups(self) -> dict[str | None, list[AgentStatus]]:
        found: dict[str | None, list[AgentStatus]] = {}
        for status in self.agents.values():
            found.setdefault(status.group, []).append(status)
        return found


def _document_bytes(payload: bytes) -> bytes:
    return base64.b64decode(json.loads(payload)["document"], validate=True)


def connect(broker: Broker, fleet: str, extra: tuple[str, ...] = ()) -> Inbox:
    return Inbox(broker, [agent_filter(fleet), rollout_filter(fleet), *extra]).start()


def snapshot(inbox: Inbox, state: FleetState, quiet_s: float = 0.5, most_s: float = 3.0) -> FleetState:
    """Read the retained messages: until ``quiet_s`` passes without one, or ``most_s``."""
    started = last = time.monotonic()
    while time.monotonic() - started < most_s and time.monotonic() - last < quiet_s:
        message = inbox.get(timeout=0.05)
        if message is not None:
            state.take(message[0], message[1])
            last = time.monotonic()
    return state


def publish(inbox: Inbox, topic: str, payload: bytes, retain: bool = True) -> None:
    info = inbox.client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(timeout=30)
    if not info.is_published():
        raise EdgekitError(f"broker {inbox.broker.url} did not acknowledge {topic} within 30 s")


def publish_document(inbox: Inbox, document: Deployment, key: Ed25519PrivateKey) -> None:
    """Publish ``document`` signed, retained; the operator keeps a copy (``local_copy``)."""
    entry = signature_entry(document.canonical_bytes(), key)
    envelope = seal_document(document, entry)
    path = local_copy(document.fleet, document.group)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, envelope)
    publish(inbox, document.topic, envelope)


def local_copy(fleet: str, group: str | None) -> Path:
    """The last document this machine published for ``group``: anyone on the broker can
    overwrite the retained one with junk, and ``abort`` must still work."""
    return edgekit_home() / "fleets" / fleet / "documents" / f"{group_label(group)}.json"


def publish_chunks(inbox: Inbox, fleet: str, data: bytes, sha256: str, chunk: int = CHUNK_BYTES) -> str:
    """The bundle as retained chunks ``.../bundles/SHA/INDEX``, for devices that reach only the broker."""
    topic = chunk_topic(fleet, sha256)
    for index, offset in enumerate(range(0, len(data), chunk)):
        publish(inbox, f"{topic}/{index}", data[offset : offset + chunk])
    return topic


def next_serial(state: FleetState) -> int:
    """Above every document the fleet holds, and above the clock in ms, so two machines'
    documents keep increasing."""
    return max([int(time.time() * 1000), *(d.serial + 1 for d in state.documents.values())])


def group_label(group: str | None) -> str:
    return group or FLEET_WIDE


def signed_document(state: FleetState, group: str | None, key: Ed25519PrivateKey) -> Deployment:
    """The group's document in force, verified as signed by ``key``: anyone who can publish
    to the broker could have put one there, and ``promote`` re-signs what it reads."""
    where = f"the rollout document of group {group}" if group else "the fleet's rollout document"
    kept = local_copy(state.fleet, group)
    candidates = [state.envelopes.get(group), kept.read_bytes() if kept.is_file() else None]
    found, refused = [], []
    for payload in filter(None, candidates):
        try:
            found.append(open_document(payload, signed_by(key.public_key()), where)[0])
        except EdgekitError as exc:
            refused.append(exc)
    if not found and refused:
        raise refused[0]  # a document is there, but not one this key signed
    if not found:
        raise InputError(f"{where}: none on the broker; start a rollout with: edgekit fleet deploy")
    return max(found, key=lambda document: document.serial)
