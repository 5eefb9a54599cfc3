"""The store's small files, as validated types: ``data.key`` (a version's wrapped data key)
and ``state.json`` (a model's active and highest version, MACed with the device key).

Both are parsed strictly, with the parser's nesting limit, so a corrupt or edited file is a
``StoreError`` naming it, never a Python exception from deeper down.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.core.errors import StoreError
from edgekit.runtime.keys import fingerprint

KeyFor = Callable[[str, str], bytes]
"""(fingerprint a file names, what the file is) -> that device key, or KeyProviderError."""
_NONCE = 12
_B64 = r"^[A-Za-z0-9+/]*={0,2}$"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class KeyRecord(_Record):
    device_key: str = Field(max_length=64)
    nonce: str = Field(pattern=_B64, max_length=64)
    wrapped: str = Field(pattern=_B64, max_length=128)


class VersionState(_Record):
    """``highest`` is the downgrade floor: the highest version this device accepted for
    install. It is raised before the version is written, so it is never below an
    installed version, whenever a crash comes."""

    active: int | None = Field(default=None, ge=1)
    highest: int = Field(ge=1)


class StateRecord(_Record):
    state: VersionState
    device_key: str = Field(max_length=64)
    mac: str = Field(pattern=r"^[0-9a-f]{64}$")


def wrap_key(data_key: bytes, name: str, version: int, device_key: bytes) -> bytes:
    """``data.key``: the data key, encrypted under the device key and bound to name and version."""
    nonce = os.urandom(_NONCE)
    wrapped = AESGCM(device_key).encrypt(nonce, data_key, _key_aad(name, version))
    record = KeyRecord(device_key=fingerprint(device_key), nonce=_b64(nonce), wrapped=_b64(wrapped))
    return json.dumps(record.model_dump(), sort_keys=True).encode()


def unwrap_key(raw: bytes, name: str, version: int, key_for: KeyFor) -> bytes:
    what = f"{name} v{version}"
    try:
        record = KeyRecord.model_validate_json(raw)
    except ValidationError:
        raise StoreError(f"{what}: data.key is missing or malformed; the store was tampered with") from None
    device_key = key_for(record.device_key, what)
    try:
        return AESGCM(device_key).decrypt(
            base64.b64decode(record.nonce), base64.b64decode(record.wrapped), _key_aad(name, version)
        )
    except (InvalidTag, ValueError):
        raise StoreError(f"{what}: its data key was tampered with") from None


def state_bytes(name: str, state: VersionState, device_key: bytes) -> bytes:
    body = _state_body(state)
    record = StateRecord(state=state, device_key=fingerprint(device_key), mac=_mac(device_key, name, body))
    return json.dumps(record.model_dump(), sort_keys=True).encode()


def read_state(raw: bytes, name: str, key_for: KeyFor) -> VersionState:
    try:
        record = StateRecord.model_validate_json(raw)
    except ValidationError:
        raise StoreError(f"{name}: state.json is malformed; the store was tampered with") from None
    key = key_for(record.device_key, name)
    if not hmac.compare_digest(record.mac, _mac(key, name, _state_body(record.state))):
        raise StoreError(f"{name}: state.json does not verify; the store was tampered with")
    return record.state


def _state_body(state: VersionState) -> bytes:
    return json.dumps(state.model_dump(exclude_none=True), sort_keys=True).encode()


def _key_aad(name: str, version: int) -> bytes:
    return f"edgekit/v1|data-key|{name}|{version}".encode()


def _mac(key: bytes, name: str, body: bytes) -> str:
    return hmac.new(key, b"edgekit/v1|state|" + name.encode() + b"|" + body, hashlib.sha256).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
