"""The device key, which wraps every installed model version's data key.

Providers, in the order ``default_provider`` tries them:
- ``EDGEKIT_KEY_PROVIDER=NAME``: a plug-in, the entry point NAME in the group
  ``edgekit.key_providers`` (for a TPM or a secure element), called with no arguments;
- ``EDGEKIT_DEVICE_KEY``: the key itself, base64, from the environment;
- the file ``EDGEKIT_HOME/device.key`` (base64), refused if group or others can read it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from edgekit.core.errors import KeyProviderError
from edgekit.core.paths import edgekit_home
from edgekit.core.signing import read_secret, write_secret

DEVICE_KEY_BYTES = 32
ENV_KEY = "EDGEKIT_DEVICE_KEY"
ENV_PROVIDER = "EDGEKIT_KEY_PROVIDER"
ENTRY_POINT_GROUP = "edgekit.key_providers"


class KeyProvider(Protocol):
    """What a key plug-in implements. ``device_key`` returns the 32-byte key."""

    name: str

    def device_key(self) -> bytes: ...


class FileKeyProvider:
    name = "file"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or edgekit_home() / "device.key"

    def device_key(self) -> bytes:
        return _decode(read_secret(self.path, "edgekit keys init --device"), str(self.path))


class EnvKeyProvider:
    name = "env"

    def device_key(self) -> bytes:
        return _decode(os.environ[ENV_KEY].encode(), f"${ENV_KEY}")


def default_provider() -> KeyProvider:
    plugin = os.environ.get(ENV_PROVIDER)
    if plugin:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == plugin]
        if not found:
            raise KeyProviderError(
                f"no key provider plug-in '{plugin}' (entry point group {ENTRY_POINT_GROUP}); "
                f"install it or unset {ENV_PROVIDER}"
            )
        provider: KeyProvider = found[0].load()()
        return provider
    if os.environ.get(ENV_KEY):
        return EnvKeyProvider()
    return FileKeyProvider()


def create_device_key(path: Path | None = None) -> Path:
    path = path or edgekit_home() / "device.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret(path, base64.b64encode(os.urandom(DEVICE_KEY_BYTES)) + b"\n")
    return path


def fingerprint(key: bytes) -> str:
    """Which key sealed something, without revealing the key: an HMAC, not a plain hash."""
    return hmac.new(key, b"edgekit device key id", hashlib.sha256).hexdigest()[:16]


def _decode(data: bytes, where: str) -> bytes:
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != DEVICE_KEY_BYTES:
        raise KeyProviderError(f"{where}: not a base64 {DEVICE_KEY_BYTES}-byte key; create one with: "
                               "edgekit keys init --device")
    return key
