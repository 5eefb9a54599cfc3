"""The deployment document: the desired state an operator publishes for a fleet or a group,
signed with a publisher key, and the agent's status message that answers it.

A document travels as a retained MQTT message on ``edgekit/FLEET/rollout/GROUP`` (GROUP is
``_fleet`` for the whole fleet). Its wire form is an envelope, ``{"document": base64 of the
canonical JSON, "signature": the signature entry}``, so the signed bytes are exactly the
bytes verified. Devices accept a document only from a key in their trust store, only for
their own fleet and group, and only with a ``serial`` above the last one they accepted on
that topic, which refuses replays of older documents.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Annotated, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.core.bundle import SignatureEntry
from edgekit.core.errors import InputError, SignatureError
from edgekit.core.signing import key_id
from edgekit.core.telemetry import FLEET_NAME, KINDS, MAX_SEQ

FLEET_WIDE = "_fleet"
"""The topic level of a document for a whole fleet (group names cannot start with '_')."""
MAX_DOCUMENT_BYTES = 64 * 1024
PHASES = ("canary", "promoted", "rolled-back", "aborted")
AGENT_PHASES = ("idle", "downloading", "installing", "active", "failed", "offline")

Node = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Group = Annotated[str, Field(pattern=FLEET_NAME)]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class DocumentError(InputError):
    """A deployment document that is malformed, unsigned, untrusted or not for this device."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Source(_Strict):
    """Where the bundle can be fetched: an HTTP(S) URL, or retained MQTT chunks."""

    kind: Literal["http", "mqtt"]
    url: str | None = Field(default=None, max_length=2048)
    topic: str | None = Field(default=None, max_length=256)
    chunk: int | None = Field(default=None, ge=1024, le=16 * 1024 * 1024)


class BundleRef(_Strict):
    name: str = Field(max_length=128)
    version: int = Field(ge=1, le=MAX_SEQ)
    sha256: Hex64
    size: int = Field(ge=1, le=1 << 40)
    sources: tuple[Source, ...] = Field(min_length=1, max_length=8)


class Canary(_Strict):
    """The canaries, as the pseudonyms they had in ``epoch``: a device checks its own
    pseudonym for that epoch, so restarts and new epochs never reshuffle them."""

    epoch: int = Field(ge=0, le=2**40)
    nodes: tuple[Node, ...] = Field(max_length=100_000)


class Deployment(_Strict):
    v: Literal[1] = 1
    kind: Literal["deployment"] = "deployment"
    fleet: str = Field(pattern=FLEET_NAME)
    group: Group | None = None
    rollout: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    serial: int = Field(ge=1, le=MAX_SEQ, description="increases with every document; older ones are replays")
    issued: float = Field(ge=0)
    phase: Literal["canary", "promoted", "rolled-back", "aborted"]
    model: BundleRef
    previous: int | None = Field(default=None, ge=1, le=MAX_SEQ, description="what the control group runs")
    canary: Canary | None = None

    @property
    def topic(self) -> str:
        return rollout_topic(self.fleet, self.group)

    def target(self, is_canary: bool) -> int | None:
        """The version a device should run under this document (None: leave it as it is)."""
        if self.phase == "promoted" or (self.phase == "canary" and is_canary):
            return self.model.version
        if self.phase in ("rolled-back", "aborted"):
            return self.previous
        return None

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


class AgentStatus(_Strict):
    """What an agent publishes, retained, on ``edgekit/FLEET/NODE/agent``."""

    v: Literal[1] = 1
    kind: Literal["agent"] = "agent"
    node: Node
    epoch: int = Field(ge=0, le=2**40)
    group: Group | None = None
    time: float = Field(ge=0)
    phase: Literal["idle", "downloading", "installing", "active", "failed", "offline"]
    models: dict[str, int] = Field(default_factory=dict, description="every active model and its version")
    model: str | None = Field(default=None, max_length=128, description="the model of the document in force")
    running: int | None = Field(default=None, ge=1, le=MAX_SEQ)
    desired: int | None = Field(default=None, ge=1, le=MAX_SEQ)
    rollout: str | None = Field(default=None, max_length=64)
    serial: int | None = Field(default=None, ge=1, le=MAX_SEQ)
    canary: bool = False
    reason: str | None = Field(default=None, max_length=1024, description="why the phase is failed")
    progress: float | None = Field(default=None, ge=0, le=1)
    refused: dict[str, int] = Field(default_factory=dict, description="documents refused, by reason")
    last_refused: str | None = Field(default=None, max_length=1024)


def rollout_topic(fleet: str, group: str | None) -> str:
    return f"edgekit/{fleet}/rollout/{group or FLEET_WIDE}"


def rollout_filter(fleet: str) -> str:
    return f"edgekit/{fleet}/rollout/+"


def agent_topic(fleet: str, node: str) -> str:
    return f"edgekit/{fleet}/{node}/agent"


def agent_filter(fleet: str) -> str:
    return f"edgekit/{fleet}/+/agent"


def chunk_topic(fleet: str, sha256: str) -> str:
    """Where a bundle's chunks are retained, one message per index below it."""
    return f"edgekit/{fleet}/bundles/{sha256}"


def check_group(group: str | None) -> str | None:
    if group is not None and (not re.match(FLEET_NAME, group) or group in KINDS):
        raise InputError(f"group {group!r}: use letters, digits, '-' and '_', not starting with '_'")
    return group


def canary_order(rollout: str, nodes: list[str]) -> list[str]:
    """Nodes in a deterministic order that depends on the rollout, so each rollout
    picks other canaries and the same rollout always picks the same."""
    return sorted(nodes, key=lambda node: hashlib.sha256(f"{rollout}|{node}".encode()).hexdigest())


def canary_count(fraction: float, devices: int) -> int:
    """At least one canary, and with two devices or more at least one in the control group."""
    if devices <= 1:
        return devices
    return min(max(1, math.ceil(fraction * devices)), devices - 1)


def seal_document(document: Deployment, signature_entry: bytes) -> bytes:
    envelope = {
        "document": base64.b64encode(document.canonical_bytes()).decode(),
        "signature": json.loads(signature_entry),
    }
    return json.dumps(envelope, sort_keys=True).encode()


Check = Callable[[bytes, bytes, str], str]
"""Verifies (signed bytes, signature entry, where) and returns the key id: ``Trust.check`` on a
device, ``signed_by`` for an operator re-signing its own document."""


def signed_by(key: Ed25519PublicKey) -> Check:
    """A ``Check`` that accepts only ``key``'s signatures."""

    def check(raw: bytes, signature: bytes, where: str) -> str:
        entry = SignatureEntry.parse(signature, where)
        try:
            if entry.key_id != key_id(key):
                raise InvalidSignature
            key.verify(base64.b64decode(entry.signature, validate=True), raw)
        except (InvalidSignature, ValueError):
            raise SignatureError(
                f"{where} is not signed by key {key_id(key)}; start a new rollout with: edgekit fleet deploy"
            ) from None
        return entry.key_id

    return check


def open_document(payload: bytes, check: Check, where: str) -> tuple[Deployment, str]:
    """The document in ``payload`` and the key id that signed it, or a DocumentError
    (SignatureError for a missing, untrusted or wrong signature)."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"{where}: {len(payload)} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit")
    try:
        envelope = json.loads(payload)
        raw = base64.b64decode(envelope["document"], validate=True)
        signature = envelope.get("signature")
        signed = json.dumps(signature, sort_keys=True).encode()
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # "[" * 40000 recurses
        raise DocumentError(f"{where}: not a deployment document ({exc})") from None
    if not isinstance(signature, dict):
        raise SignatureError(f"{where}: the deployment document is not signed")
    signer = check(raw, signed, where)
    try:
        document = Deployment.model_validate_json(raw)
    except ValidationError as exc:
        raise DocumentError(f"{where}: malformed deployment document ({exc.errors()[0]['msg']})") from None
    return document, signer
