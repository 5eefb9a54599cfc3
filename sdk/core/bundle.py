"""The ``.ekb`` bundle: one zip holding ``manifest.json``, the artifacts, and later ``manifest.sig``.

The manifest records every artifact's sha256 and size, so one signature over the manifest
bytes covers the whole bundle. Readers check every hash before an artifact is used.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from edgekit.core.archive import Archive
from edgekit.core.atomic import fsync_dir
from edgekit.core.errors import BundleError, SignatureError
from edgekit.core.manifest import FORMAT_VERSION, Manifest, Strict
from edgekit.core.profiles import load_profile, shipped_profile_ids

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 4096


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(
    path: Path, manifest: Manifest, artifacts: dict[str, bytes], signature: bytes | None = None
) -> None:
    """Write the bundle atomically: a temp file in the same folder, fsync, rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror}; choose another -o") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(MANIFEST, manifest.canonical_bytes())
                if signature is not None:
                    archive.writestr(SIGNATURE, signature)
                for name, _, _ in manifest.files:
                    archive.writestr(name, artifacts[name])
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise BundleError(
            f"cannot write {path}: {exc.strerror}; free some disk space or choose another -o "
            "(any earlier bundle there is unchanged)"
        ) from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class SignatureEntry(Strict):
    """``manifest.sig``: who signed the manifest bytes, and the Ed25519 signature."""

    algorithm: Literal["ed25519"]
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(max_length=128)

    @classmethod
    def parse(cls, data: bytes, where: str) -> SignatureEntry:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise SignatureError(
                f"{where}: manifest.sig is malformed ({_first(exc)}); the bundle is tampered with"
            ) from None


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Validate manifest bytes (the parser limits nesting), format version first."""
    try:
        header = _Header.model_validate_json(data)
    except ValidationError as exc:
        raise BundleError(
            f"{where}: {MANIFEST} is unreadable ({_first(exc)}); the bundle is corrupt"
        ) from None
    if header.format_version != FORMAT_VERSION:
        if isinstance(header.format_version, int) and header.format_version > FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format {header.format_version} is newer than this edgekit reads "
                f"({FORMAT_VERSION}); upgrade edgekit"
            )
        raise BundleError(f"{where}: unknown bundle format {header.format_version!r}")
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{where}: invalid manifest at '{key}': {first['msg']}") from None


class _Header(BaseModel):
    format_version: Any = None


def _first(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"])


def read_manifest(path: Path) -> Manifest:
    """A bundle's manifest, for display on the build side (nothing is verified)."""
    with Archive(path) as archive:
        return parse_manifest(_manifest_bytes(archive), str(path))


Verifier = Callable[[bytes, "bytes | None"], None]
"""Checks the exact manifest bytes against the signature entry (None when absent); raises."""


def read_bundle(
    path: Path, verify: Verifier | None = None, max_bytes: int | None = None, data: bytes | None = None
) -> tuple[Manifest, dict[str, bytes]]:
    """Read a bundle in the order docs/security.md states: the archive's entries, the
    signature over the raw manifest bytes (with ``verify``), the manifest, then every
    artifact's size and hash, all before any artifact byte is returned.

    Artifacts are capped at ``max_bytes`` in all; without it, an unsigned bundle that
    ``verify`` accepts (``allow_unsigned``) at its profile's storage budget. Reading without
    ``verify`` (the build side: sign, inspect a fresh output) is not capped. With ``data``,
    the bundle is read from those bytes in memory and ``path`` only names it."""
    with Archive(path, io.BytesIO(data) if data is not None else None) as archive:
        manifest_bytes = _manifest_bytes(archive)
        signature = None
        if SIGNATURE in archive.names:
            signature = archive.read(SIGNATURE, MAX_SIGNATURE_BYTES, "a signature")
        if verify is not None:
            verify(manifest_bytes, signature)
        manifest = parse_manifest(manifest_bytes, str(path))
        _check_listed(path, manifest, archive.names)
        unverified = verify is not None and signature is None  # a device accepting an unsigned bundle
        cap = max_bytes if max_bytes is not None else (storage_budget(manifest) if unverified else None)
        total = sum(size for _, _, size in manifest.files)
        if cap is not None and total > cap:
            raise BundleError(
                f"{path}: its artifacts are {total} bytes, over the {cap}-byte limit "
                f"({'given' if max_bytes is not None else 'the storage budget of ' + manifest.target.id}); "
                "sign the bundle or raise the limit (--max-size)"
            )
        return manifest, {
            name: _entry(path, archive, name, digest, size) for name, digest, size in manifest.files
        }


def storage_budget(manifest: Manifest) -> int:
    """The model storage budget of the bundle's device profile: the one edgekit ships under
    its id when there is one (an unsigned manifest can claim any budget), else its own."""
    profile = manifest.target
    if profile.id in shipped_profile_ids():
        profile = load_profile(profile.id)
    return int(profile.budget.model_storage_mb * (1 << 20))


def _manifest_bytes(archive: Archive) -> bytes:
    if MANIFEST not in archive.names:
        raise BundleError(f"{archive.path}: not an edgekit bundle (no {MANIFEST})")
    return archive.read(MANIFEST, MAX_MANIFEST_BYTES, "a manifest")


def _entry(path: Path, archive: Archive, name: str, digest: str, size: int) -> bytes:
    # The declared size is compared before reading, and no read inflates past it.
    if archive.size(name) != size:
        raise BundleError(
            f"{path}: {name} is {archive.size(name)} bytes, the manifest says "
            f"{size}; the bundle is corrupt or tampered with"
        )
    data = archive.read(name, size, "this entry")
    if sha256(data) != digest:
        raise BundleError(
            f"{path}: {name} does not match its sha256 in the manifest; "
            "the bundle is corrupt or tampered with"
        )
    return data


def _check_listed(path: Path, manifest: Manifest, names: set[str]) -> None:
    expected = {MANIFEST} | {name for name, _, _ in manifest.files}
    extra = names - expected - {SIGNATURE}
    missing = expected - names
    if extra:
        raise BundleError(f"{path}: unexpected entries {sorted(extra)}; the bundle is tampered with")
    if missing:
        raise BundleError(f"{path}: missing entries {sorted(missing)}; the bundle is incomplete")
