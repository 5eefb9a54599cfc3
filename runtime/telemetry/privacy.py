"""Anonymization before anything leaves the process: epoch pseudonyms, k-suppression,
differential privacy through OpenDP, and samples sealed to the fleet's X25519 key (RFC 9180 HPKE).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from edgekit.core.archive import load_npz
from edgekit.core.errors import InputError, MissingDependencyError
from edgekit.core.paths import edgekit_home
from edgekit.core.telemetry import MAX_PAYLOAD_BYTES, SAMPLE_MAGIC, SampleHeader

SECRET_FILE = "fleet.secret"
PUBLIC_FILE = "fleet.pub"
PRIVATE_FILE = "fleet.key"
MAX_SAMPLE_BYTES = 16 * MAX_PAYLOAD_BYTES
"""Most a sample's arrays may take once decrypted and inflated (a device sends them stored)."""
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)


class FleetKeyError(InputError):
    """A fleet secret or key is missing or unreadable."""


def fleet_dir(fleet: str, folder: Path | None = None) -> Path:
    """Where a fleet's keys live: ``folder``, or EDGEKIT_HOME/fleets/<fleet>."""
    return folder if folder is not None else edgekit_home() / "fleets" / fleet


def pseudonym(secret: bytes, device_id: str, epoch: int) -> str:
    """HMAC-SHA256(fleet secret, epoch and device id), 128 bits in hex. Without the secret a
    pseudonym reveals nothing; pseudonyms of two epochs cannot be linked."""
    message = f"edgekit-node-v1|{epoch}|{device_id}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


def epoch_at(epoch_s: float, now: float | None = None) -> int:
    """The pseudonym epoch at ``now``: the device's telemetry and its agent must agree on it."""
    return int((now if now is not None else time.time()) // epoch_s)


def machine_id() -> str:
    """The default device id: systemd's machine id, else the host name."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return os.uname().nodename


@dataclass(frozen=True)
class DeviceFleetKeys:
    """What a device holds: the pseudonym secret and, for samples, the fleet's public key."""

    secret: bytes
    public_key: x25519.X25519PublicKey | None

    @classmethod
    def load(cls, fleet: str, folder: Path | None, need_public: bool) -> DeviceFleetKeys:
        where = fleet_dir(fleet, folder)
        hint = f"copy {SECRET_FILE} and {PUBLIC_FILE} from `edgekit fleet init {fleet}` into {where}"
        try:
            secret = bytes.fromhex((where / SECRET_FILE).read_text().strip())
        except (OSError, ValueError) as exc:
            raise FleetKeyError(f"no readable fleet secret at {where / SECRET_FILE}: {hint}") from exc
        if len(secret) < 16:
            raise FleetKeyError(f"fleet secret {where / SECRET_FILE} is too short: {hint}")
        public = None
        if need_public:
            public = load_public_key(where / PUBLIC_FILE, hint)
        return cls(secret, public)


def load_public_key(path: Path, hint: str) -> x25519.X25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise FleetKeyError(f"no readable fleet public key at {path}: {hint}") from exc
    if not isinstance(key, x25519.X25519PublicKey):
        raise FleetKeyError(f"{path} is not an X25519 public key: {hint}")
    return key


def load_sample_key(path: Path) -> x25519.X25519PrivateKey:
    """The fleet's X25519 private key, which opens sealed samples (operator side only)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise FleetKeyError(
            f"no readable fleet private key at {path}: run `edgekit fleet init` or pass --fleet-dir"
        ) from exc
    if not isinstance(key, x25519.X25519PrivateKey):
        raise FleetKeyError(f"{path} is not an X25519 private key")
    return key


def seal_sample(header: SampleHeader, arrays: dict[str, np.ndarray], key: x25519.X25519PublicKey) -> bytes:
    """MAGIC, header length, header JSON, then HPKE(X25519, HKDF-SHA256, AES-128-GCM) of an
    .npz, with the header as HPKE info so that it cannot be swapped onto another body."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    head = header.model_dump_json().encode()
    return SAMPLE_MAGIC + struct.pack(">H", len(head)) + head + _SUITE.encrypt(buffer.getvalue(), key, head)


def split_sample(message: bytes) -> tuple[bytes, bytes]:
    """(header bytes, ciphertext); ValueError when the framing is wrong."""
    if not message.startswith(SAMPLE_MAGIC) or len(message) < 6:
        raise ValueError("not an edgekit sample")
    (length,) = struct.unpack(">H", message[4:6])
    return message[6 : 6 + length], message[6 + length :]


def read_sample_header(message: bytes) -> tuple[SampleHeader, bytes, bytes]:
    """(header, header bytes, ciphertext), strictly: ValueError when the framing is wrong."""
    head, body = split_sample(message)
    return SampleHeader.model_validate_json(head), head, body


def open_sample(head: bytes, body: bytes, key: x25519.X25519PrivateKey) -> dict[str, np.ndarray]:
    """Decrypt and parse; raises ValueError (wrong key, tampered header or body)."""

    try:
        plain = _SUITE.decrypt(body, key, head)
    except Exception as exc:  # cryptography raises InvalidTag and others
        raise ValueError("sample does not decrypt with this fleet key") from exc
    return load_npz(plain, MAX_SAMPLE_BYTES, "sample")


def suppress(counts: np.ndarray, k: int) -> int:
    """Zero every bucket below ``k`` in place; returns how many non-empty buckets went."""
    small = (counts > 0) & (counts < k)
    counts[small] = 0
    return int(small.sum())


class Noise:
    """Discrete Laplace noise on integer count vectors, from OpenDP.

    OpenDP samples the integer (geometric) mechanism exactly, with no floating-point
    Laplace sampling and so none of its known attacks (Mironov 2012). ``epsilon`` is what
    OpenDP's own privacy map says one release costs at L1 sensitivity ``sensitivity``.
    """

    def __init__(self, epsilon: float, sensitivity: int) -> None:
        try:
            import opendp.prelude as dp
        except ImportError as exc:
            raise MissingDependencyError("opendp", "dp", "differential privacy (dp_epsilon)") from exc
        dp.enable_features("contrib")
        self._measurement: Any = dp.m.make_laplace(
            dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), scale=sensitivity / epsilon
        )
        self.sensitivity = sensitivity
        self.epsilon = float(self._measurement.map(sensitivity))

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        noisy = self._measurement([int(c) for c in counts.ravel()])
        return np.clip(np.asarray(noisy, dtype=np.int64), 0, None).reshape(counts.shape)
