"""A fleet's keys: the X25519 pair that seals samples, and the pseudonym secret."""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from edgekit.core.atomic import atomic_write
from edgekit.core.errors import DataError
from edgekit.core.signing import write_secret
from edgekit.core.telemetry import check_fleet_name
from edgekit.runtime.telemetry.privacy import (
    PRIVATE_FILE,
    PUBLIC_FILE,
    SECRET_FILE,
    fleet_dir,
    load_sample_key,
)


def init_fleet(fleet: str, folder: Path | None = None) -> Path:
    """Create a fleet's keys: the X25519 key pair for samples and the pseudonym secret.

    ``fleet.key`` stays with the operator; devices get ``fleet.pub`` and ``fleet.secret``.
    """
    try:
        check_fleet_name(fleet)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    where = fleet_dir(fleet, folder)
    where.mkdir(parents=True, exist_ok=True)
    private = x25519.X25519PrivateKey.generate()
    write_secret(
        where / PRIVATE_FILE,
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    write_secret(where / SECRET_FILE, secrets.token_hex(32).encode() + b"\n")
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(where / PUBLIC_FILE, public)
    return where


def load_collector_key(fleet: str, folder: Path | None) -> x25519.X25519PrivateKey:
    """The fleet's private key, which only the operator's collectors hold."""
    return load_sample_key(fleet_dir(fleet, folder) / PRIVATE_FILE)
