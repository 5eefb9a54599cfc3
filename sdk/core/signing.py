"""Ed25519 signatures over the manifest bytes, and the device's list of trusted publishers.

The manifest records every artifact's sha256 and size, so one signature over its exact bytes
covers the whole bundle. Key ids are the first 16 hex digits of the sha256 of the raw
public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgekit.core.bundle import SignatureEntry, read_bundle, write_bundle
from edgekit.core.errors import KeyProviderError, SignatureError
from edgekit.core.manifest import Manifest
from edgekit.core.paths import edgekit_home

log = logging.getLogger("edgekit")
ALGORITHM = "ed25519"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def create_publisher_key(path: Path) -> tuple[Path, str]:
    """Write a new private key (mode 0600, refusing to overwrite) and its ``.pub`` beside it."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret(path, pem)
    public_path = path.with_suffix(".pub")
    public_path.write_bytes(public_pem(private.public_key()))
    return public_path, key_id(private.public_key())


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` (and its folder) with mode 0600 from the start; never overwrite a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyProviderError(
            f"{path} already exists; move it away first, keys are never overwritten"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_secret(path: Path, create: str) -> bytes:
    """Read a key file, refusing one that others can read; ``create`` is the command that
    makes a missing one."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyProviderError(f"{path}: no such key file; create it with: {create}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyProviderError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )
    return path.read_bytes()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """A publisher's Ed25519 private key, from ``edgekit keys init --publisher``."""
    _refuse_public_key(path)
    try:
        secret = read_secret(path, f"edgekit keys init --publisher -o {path}")
        key = serialization.load_pem_private_key(secret, password=None)
    except ValueError as exc:
        raise KeyProviderError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyProviderError(f"{path}: not an Ed25519 key; create one with: edgekit keys init --publisher")
    return key


def _refuse_public_key(path: Path) -> None:
    """A public key given where the private one is needed (``--key publisher.pub``): say so,
    and name the private key beside it, rather than ask for a public file's mode to change."""
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError:
        return  # read_secret says what is wrong with the path
    if not head.startswith(b"-----BEGIN PUBLIC KEY-----"):
        return
    beside = [f for f in sorted(path.parent.glob(f"{path.stem}.*")) if f.suffix != ".pub" and f.is_file()]
    fix = f"sign with the private key beside it: {beside[0]}" if beside else "sign with its private key"
    raise KeyProviderError(f"{path} is a public key (it verifies signatures, it cannot make them); {fix}")


def load_public_key(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyProviderError(f"{where}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyProviderError(f"{where}: not an Ed25519 public key")
    return key


def signature_entry(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    entry = {
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode(),
    }
    return json.dumps(entry, sort_keys=True).encode()


def sign_bundle(path: Path, key: Ed25519PrivateKey) -> str:
    """Sign (or re-sign) a bundle in place, atomically; return the key id."""
    manifest, contents = read_bundle(path)
    write_bundle(path, manifest, contents, signature_entry(manifest.canonical_bytes(), key))
    return key_id(key.public_key())


class Trust:
    """The publishers a device accepts: one PEM file per key under ``EDGEKIT_HOME/trust``."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or edgekit_home() / "trust"

    def keys(self) -> dict[str, Ed25519PublicKey]:
        if not self.folder.is_dir():
            return {}
        found = {}
        for file in sorted(self.folder.glob("*.pub")):
            key = load_public_key(file.read_bytes(), str(file))
            found[key_id(key)] = key
        return found

    def add(self, public_key_file: Path) -> str:
        key = load_public_key(public_key_file.read_bytes(), str(public_key_file))
        self.folder.mkdir(parents=True, exist_ok=True)
        identifier = key_id(key)
        (self.folder / f"{identifier}.pub").write_bytes(public_pem(key))
        return identifier

    def remove(self, identifier: str) -> None:
        target = self.folder / f"{identifier}.pub"
        if not target.exists():
            raise KeyProviderError(f"no trusted key {identifier}; see: edgekit trust list")
        target.unlink()

    def verifier(self, allow_unsigned: bool = False, where: str = "bundle"):  # type: ignore[no-untyped-def]
        """A ``read_bundle`` verifier: the signature must come from a trusted key."""

        def verify(manifest_bytes: bytes, signature: bytes | None) -> None:
            if signature is None:
                if not allow_unsigned:
                    raise SignatureError(
                        f"{where} is not signed; sign it with: edgekit sign {where} --key publisher.key "
                        "(or pass --allow-unsigned to accept it anyway)"
                    )
                log.warning("edgekit: %s is UNSIGNED: nothing proves who made it or that it is intact", where)
                return
            self.check(manifest_bytes, signature, where)

        return verify

    def check(self, manifest_bytes: bytes, signature: bytes, where: str) -> str:
        entry = SignatureEntry.parse(signature, where)
        identifier = entry.key_id
        try:
            blob = base64.b64decode(entry.signature, validate=True)
        except ValueError as exc:
            raise SignatureError(
                f"{where}: manifest.sig is malformed ({exc}); the bundle is tampered with"
            ) from None
        key = self.keys().get(identifier)
        if key is None:
            raise SignatureError(
                f"{where} is signed by key {identifier}, which this device does not trust; "
                "add the publisher's key with: edgekit trust add publisher.pub"
            )
        try:
            key.verify(blob, manifest_bytes)
        except InvalidSignature:
            raise SignatureError(
                f"{where}: the signature does not match the manifest; the bundle is tampered with"
            ) from None
        return identifier


def signature_status(manifest_bytes: bytes, signature: bytes | None, trust: Trust) -> dict[str, str] | None:
    """For display: who signed, and whether this machine's trust store accepts it."""
    if signature is None:
        return None
    try:
        return {"key_id": trust.check(manifest_bytes, signature, "bundle"), "status": "trusted here"}
    except SignatureError as exc:
        try:
            key = SignatureEntry.parse(signature, "bundle").key_id
        except SignatureError:
            key = "?"
        status = "not trusted here" if "does not trust" in str(exc) else "INVALID"
        return {"key_id": str(key), "status": status}


def inspect_bundle(path: Path) -> tuple[Manifest, dict[str, str] | None]:
    """A bundle's manifest, every hash checked, and who signed it (see ``signature_status``)."""
    seen: dict[str, dict[str, str] | None] = {}

    def note_signature(manifest_bytes: bytes, signature: bytes | None) -> None:
        seen["signature"] = signature_status(manifest_bytes, signature, Trust())

    manifest, _ = read_bundle(path, note_signature)
    return manifest, seen["signature"]
