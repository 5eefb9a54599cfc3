"""The encrypted, crash-safe model store under ``EDGEKIT_HOME/models``.

Layout, per model name::

    models/NAME/state.json          active and highest version, MACed with the device key
    models/NAME/VERSION/data.key    the version's random AES-256 data key, wrapped by the device key
    models/NAME/VERSION/manifest.enc, <artifact>.enc    AES-256-GCM in 1 MiB chunks
    models/NAME/VERSION/manifest.sig                     the publisher's signature, if any
    models/NAME/VERSION/engines/KEY.enc                  compiled TensorRT engines, encrypted the same way

Files are sealed in the chunked AES-GCM format of ``edgekit.runtime.sealed``: nothing can be
swapped, reordered or truncated unnoticed. A version is written to a temp
folder, fsynced, renamed into place, and the parent fsynced; state.json is switched the same
way. A file lock serializes writers, and opening the store removes leftovers of a crash.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgekit.atomic import atomic_write, fsync_dir, write_file
from edgekit.bundle import MANIFEST, SIGNATURE, Manifest, read_bundle
from edgekit.errors import KeyProviderError, StoreError
from edgekit.paths import edgekit_home
from edgekit.runtime.keys import FileKeyProvider, KeyProvider, default_provider, fingerprint
from edgekit.runtime.sealed import seal, unseal
from edgekit.signing import Trust

if TYPE_CHECKING:
    from edgekit.runtime.engines import EngineCache

_NONCE = 12


@dataclass(frozen=True)
class Installed:
    name: str
    version: int
    active: bool
    signed_by: str | None


class Store:
    def __init__(self, home: Path | None = None, keys: KeyProvider | None = None) -> None:
        self.home = home or edgekit_home()
        self.root = self.home / "models"
        self._keys = keys or default_provider()
        self._recover()

    # --- writing -------------------------------------------------------------------------

    def install(
        self, bundle: Path, *, allow_unsigned: bool = False, allow_downgrade: bool = False,
        trust: Trust | None = None,
    ) -> Installed:  # fmt: skip
        """Verify ``bundle`` (signature, then every hash), then store it encrypted and active."""
        verify = (trust or Trust(self.home / "trust")).verifier(allow_unsigned, str(bundle))
        captured: list[bytes | None] = []

        def verify_and_remember(manifest_bytes: bytes, signature: bytes | None) -> None:
            verify(manifest_bytes, signature)
            captured.append(signature)

        manifest, contents = read_bundle(bundle, verify_and_remember)
        with self.locked():
            name, version = manifest.name, manifest.version
            state = self._read_state(name)
            final = self.root / name / str(version)
            if final.exists():
                raise StoreError(f"{name} v{version} is already installed; activate it with: "
                                 f"edgekit models activate {name} {version}")  # fmt: skip
            highest = state.get("highest", 0)
            if version < highest and not allow_downgrade:
                raise StoreError(
                    f"{name} v{version} is older than v{highest}, the highest this device has installed; "
                    "pass --allow-downgrade to install it anyway"
                )
            self._write_version(final, manifest, contents, captured[0])
            self._write_state(name, {"active": version, "highest": max(highest, version)})
        return Installed(name, version, True, json.loads(captured[0])["key_id"] if captured[0] else None)

    def activate(self, name: str, version: int) -> None:
        with self.locked():
            state = self._read_state(name)
            if not (self.root / name / str(version)).is_dir():
                raise StoreError(f"{name} v{version} is not installed; see: edgekit models list")
            self._write_state(name, {**state, "active": version})

    def rollback(self, name: str) -> int:
        """Activate the newest installed version older than the active one."""
        with self.locked():
            state = self._read_state(name)
            older = [v for v in self._versions(name) if v < state.get("active", 0)]
            if not older:
                raise StoreError(f"{name} has no installed version older than v{state.get('active')}")
            self._write_state(name, {**state, "active": max(older)})
            return max(older)

    def remove(self, name: str, version: int) -> None:
        with self.locked():
            state = self._read_state(name)
            if state.get("active") == version:
                raise StoreError(f"{name} v{version} is active; activate another version first")
            target = self.root / name / str(version)
            if not target.is_dir():
                raise StoreError(f"{name} v{version} is not installed")
            trash = self.root / name / f".tmp-removing-{uuid.uuid4().hex}"
            os.replace(target, trash)  # atomic: a crash leaves a leftover that recovery deletes
            fsync_dir(target.parent)
            shutil.rmtree(trash)

    # --- reading -------------------------------------------------------------------------

    def installed(self) -> list[Installed]:
        found = []
        for folder in sorted(p for p in self.root.glob("*") if p.is_dir() and not p.name.startswith(".")):
            state = self._read_state(folder.name)
            for version in self._versions(folder.name):
                sig = folder / str(version) / SIGNATURE
                signer = json.loads(sig.read_bytes())["key_id"] if sig.exists() else None
                found.append(Installed(folder.name, version, state.get("active") == version, signer))
        return found

    def load(self, name: str, version: int | None = None) -> tuple[Manifest, dict[str, bytes]]:
        """Decrypt a version (default: the active one) into memory, checking every tag."""
        state = self._read_state(name)
        if not state:
            raise StoreError(f"no model '{name}' in the store; install one with: edgekit install BUNDLE")
        version = version or state["active"]
        folder = self.root / name / str(version)
        if not folder.is_dir():
            raise StoreError(f"{name} v{version} is not installed")
        data_key = self._unwrap(folder, name, version)
        manifest_bytes = unseal(folder / "manifest.enc", data_key, name, version, MANIFEST)
        manifest = Manifest.model_validate_json(manifest_bytes)
        # No second sha256 here: install checked every hash before encrypting, and the GCM tags,
        # bound to name, version, file and chunk, authenticate every byte under a key only
        # this device can unwrap. Hashing again would double the cost of a cold load.
        contents = {
            entry.path: unseal(folder / f"{entry.path}.enc", data_key, name, version, entry.path)
            for entry in manifest.artifacts
        }
        return manifest, contents

    def engines(self, name: str, version: int) -> EngineCache:
        """The compiled-engine cache of an installed version (see ``EngineCache``)."""
        from edgekit.runtime.engines import EngineCache

        return EngineCache(self, name, version)

    def version_folder(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def data_key(self, name: str, version: int) -> bytes:
        """An installed version's data key, unwrapped with the device key."""
        return self._unwrap(self.version_folder(name, version), name, version)

    # --- device key rotation ---------------------------------------------------------------

    def rotate_device_key(self) -> None:
        """Re-wrap every data key (and re-MAC every state) under a new device key, crash-safely."""
        if not isinstance(self._keys, FileKeyProvider):
            raise KeyProviderError(
                f"the device key comes from the '{self._keys.name}' provider; rotate it there"
            )
        with self.locked():
            self._rotate(self._keys.path)

    def _rotate(self, key_path: Path) -> None:
        from edgekit.runtime.keys import create_device_key

        next_path = key_path.with_name(key_path.name + ".next")
        if not next_path.exists():
            create_device_key(next_path)
        old, new = FileKeyProvider(key_path).device_key(), FileKeyProvider(next_path).device_key()
        for name in self._names():
            state = self._read_state(name, keys=[new, old])
            for version in self._versions(name):
                folder = self.root / name / str(version)
                data_key = self._unwrap(folder, name, version, keys=[new, old])
                self._wrap(folder / "data.key", data_key, name, version, new, replace=True)
            self._write_state(name, state, key=new)
        os.replace(next_path, key_path)
        fsync_dir(key_path.parent)

    # --- internals -------------------------------------------------------------------------

    def _device_keys(self) -> list[bytes]:
        keys = [self._keys.device_key()]
        if isinstance(self._keys, FileKeyProvider):  # a rotation cut short: both keys are live
            pending = self._keys.path.with_name(self._keys.path.name + ".next")
            if pending.exists():
                keys.append(FileKeyProvider(pending).device_key())
        return keys

    def _write_version(
        self, final: Path, manifest: Manifest, contents: dict[str, bytes], signature: bytes | None
    ) -> None:
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            data_key = AESGCM.generate_key(bit_length=256)
            name, version = manifest.name, manifest.version
            self._wrap(tmp / "data.key", data_key, name, version, self._device_keys()[0])
            write_file(
                tmp / "manifest.enc", seal(manifest.canonical_bytes(), data_key, name, version, MANIFEST)
            )
            for entry in manifest.artifacts:
                sealed = seal(contents[entry.path], data_key, name, version, entry.path)
                write_file(tmp / f"{entry.path}.enc", sealed)
            if signature is not None:
                write_file(tmp / SIGNATURE, signature)
            fsync_dir(tmp)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(
                f"could not write {final}: {exc.strerror or exc}; the store is unchanged"
            ) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _wrap(self, path: Path, data_key: bytes, name: str, version: int, device_key: bytes,
              replace: bool = False) -> None:  # fmt: skip
        nonce = os.urandom(_NONCE)
        wrapped = AESGCM(device_key).encrypt(nonce, data_key, _key_aad(name, version))
        record = {"device_key": fingerprint(device_key), "nonce": _b64(nonce), "wrapped": _b64(wrapped)}
        body = json.dumps(record, sort_keys=True).encode()
        if replace:
            atomic_write(path, body)
        else:
            write_file(path, body)

    def _unwrap(self, folder: Path, name: str, version: int, keys: list[bytes] | None = None) -> bytes:
        try:
            record = json.loads((folder / "data.key").read_bytes())
            sealed_with, nonce, wrapped = record["device_key"], record["nonce"], record["wrapped"]
        except (OSError, ValueError, KeyError, TypeError):
            raise StoreError(
                f"{name} v{version}: data.key is missing or malformed; the store was tampered with"
            ) from None
        device_key = self._key_for(sealed_with, f"{name} v{version}", keys)
        try:
            return AESGCM(device_key).decrypt(
                base64.b64decode(nonce), base64.b64decode(wrapped), _key_aad(name, version)
            )
        except (InvalidTag, ValueError):
            raise StoreError(f"{name} v{version}: its data key was tampered with") from None

    def _read_state(self, name: str, keys: list[bytes] | None = None) -> dict[str, int]:
        path = self.root / name / "state.json"
        if not path.exists():
            if self._versions(name):
                raise StoreError(f"{name}: state.json is missing; the store was tampered with")
            return {}
        try:
            record = json.loads(path.read_bytes())
            sealed_with, state, mac = record["device_key"], record["state"], record["mac"]
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"{name}: state.json is malformed; the store was tampered with") from None
        key = self._key_for(sealed_with, name, keys)
        body = json.dumps(state, sort_keys=True).encode()
        if not hmac.compare_digest(mac, _mac(key, name, body)):
            raise StoreError(f"{name}: state.json does not verify; the store was tampered with")
        return {k: int(v) for k, v in state.items()}

    def _write_state(self, name: str, state: dict[str, int], key: bytes | None = None) -> None:
        key = key or self._device_keys()[0]
        body = json.dumps(state, sort_keys=True).encode()
        record = {"state": state, "device_key": fingerprint(key), "mac": _mac(key, name, body)}
        (self.root / name).mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(self.root / name / "state.json", json.dumps(record, sort_keys=True).encode())
        except OSError as exc:
            raise StoreError(f"could not switch {name}'s active version: {exc.strerror or exc}") from exc

    def _key_for(self, sealed_with: str, what: str, keys: list[bytes] | None = None) -> bytes:
        """The device key with this fingerprint, or a clear error naming both."""
        by_id = {fingerprint(k): k for k in keys or self._device_keys()}
        if sealed_with not in by_id:
            raise KeyProviderError(
                f"{what} was sealed with device key {sealed_with}, and this device's key is "
                f"{', '.join(by_id)}: wrong {self._keys.name} key"
            )
        return by_id[sealed_with]

    def _names(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*") if p.is_dir() and not p.name.startswith("."))

    def _versions(self, name: str) -> list[int]:
        folder = self.root / name
        return sorted(int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit())

    def _recover(self) -> None:
        """Remove what a crash can leave (temp folders and files) and finish a cut-short
        rotation. Under the lock: another process's install in progress is not a leftover."""
        if not self.root.exists():
            return
        with self.locked():
            leftovers = (
                *self.root.glob("*/.tmp-*"),
                *self.root.glob("*/*.tmp"),
                *self.root.glob("*/*/engines/*.tmp"),
            )
            for leftover in leftovers:
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            if isinstance(self._keys, FileKeyProvider):
                if self._keys.path.with_name(self._keys.path.name + ".next").exists():
                    self._rotate(self._keys.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's writer lock; every write takes it (the engine cache too)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.home / "store.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _key_aad(name: str, version: int) -> bytes:
    return f"edgekit/v1|data-key|{name}|{version}".encode()


def _mac(key: bytes, name: str, body: bytes) -> str:
    return hmac.new(key, b"edgekit/v1|state|" + name.encode() + b"|" + body, hashlib.sha256).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
