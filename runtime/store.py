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

import contextlib
import dataclasses
import difflib
import errno
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgekit.core.atomic import atomic_write, fsync_dir, write_file
from edgekit.core.bundle import (
    MANIFEST,
    MAX_SIGNATURE_BYTES,
    SIGNATURE,
    SignatureEntry,
    parse_manifest,
    read_bundle,
)
from edgekit.core.errors import EdgekitError, KeyProviderError, StoreError
from edgekit.core.manifest import Manifest
from edgekit.core.paths import edgekit_home
from edgekit.core.signing import Trust
from edgekit.core.validation import ascii_int, updated
from edgekit.runtime.keys import FileKeyProvider, KeyProvider, default_provider, fingerprint
from edgekit.runtime.sealed import seal, unseal
from edgekit.runtime.store_records import VersionState, read_state, state_bytes, unwrap_key, wrap_key

if TYPE_CHECKING:
    from edgekit.runtime.engines import EngineCache

log = logging.getLogger("edgekit")


@dataclass(frozen=True)
class Installed:
    name: str
    version: int
    active: bool
    signed_by: str | None
    problem: str | None = None
    """Why this version cannot be trusted as listed (a corrupt record), or None."""
    warning: str | None = None
    """Installed, but something the user should know (a GPU bundle on a machine without one)."""
    artifacts: str | None = None
    """What it runs, "tflite int8, onnx fp16"; None where the manifest could not be read."""
    target: str | None = None
    """The device profile it was made for."""
    installed_at: float | None = None
    """When it was installed (seconds since the epoch)."""


def _gpu_missing(manifest: Manifest) -> str | None:
    """A warning when the bundle was made for a GPU profile and no engine of its artifacts
    can use a GPU here: it runs, on the CPU, far slower than its profile's numbers."""
    from edgekit.runtime.backends import backend_for

    profile = manifest.profile.get("id", "?")
    accelerator = manifest.profile.get("accelerator", {}).get("kind", "none")
    if accelerator == "none":
        return None
    for entry in manifest.artifacts:
        try:
            if backend_for(entry.format).runs_on_gpu():
                return None
        except Exception:  # an engine that is not installed here cannot run anything on a GPU
            continue
    return (
        f"{manifest.name} was made for {profile}, a {accelerator.upper()} GPU profile, and no engine here "
        "can use a GPU (ONNX Runtime without the CUDA or TensorRT provider): it will run on the CPU"
    )


class Store:
    def __init__(self, home: Path | None = None, keys: KeyProvider | None = None) -> None:
        self.home = home or edgekit_home()
        self.root = self.home / "models"
        self._keys = keys or default_provider()
        self._recover()

    # --- writing -------------------------------------------------------------------------

    def install(
        self, bundle: Path, *, allow_unsigned: bool = False, allow_downgrade: bool = False,
        trust: Trust | None = None, max_bytes: int | None = None, data: bytes | None = None,
    ) -> Installed:
        """Verify ``bundle`` (signature, then every hash), then store it encrypted and active.
        With ``data`` the bundle comes from memory (an agent's download), named by ``bundle``.

        ``highest`` is raised first, then the version written, then activated: a crash
        between any two steps leaves a state that is consistent and that ``install`` finishes."""
        verify = (trust or Trust(self.home / "trust")).verifier(allow_unsigned, str(bundle))
        captured: list[bytes | None] = []

        def verify_and_remember(manifest_bytes: bytes, signature: bytes | None) -> None:
            verify(manifest_bytes, signature)
            captured.append(signature)

        manifest, contents = read_bundle(bundle, verify_and_remember, max_bytes, data)
        with self.locked():
            name, version = manifest.name, manifest.version
            state = self._read_state(name)
            final = self.root / name / str(version)
            if final.exists():
                raise StoreError(self._already_installed(manifest, state))
            highest = state.highest if state else 0
            if version < highest and not allow_downgrade:
                raise StoreError(
                    f"{name} v{version} is older than v{highest}, the highest this device has installed; "
                    "pass --allow-downgrade to install it anyway"
                )
            floor = VersionState(active=state.active if state else None, highest=max(highest, version))
            if floor != state:
                self._write_state(name, floor, then="the store is unchanged")
            self._write_version(final, manifest, contents, captured[0])
            self._write_state(name, VersionState(active=version, highest=floor.highest))
        signer = SignatureEntry.parse(captured[0], str(bundle)).key_id if captured[0] else None
        return Installed(name, version, True, signer, warning=_gpu_missing(manifest))

    def _already_installed(self, manifest: Manifest, state: VersionState | None) -> str:
        """What to say when ``manifest``'s name and version are installed: the same bundle
        (active or not), or another one under the same name and version (one model converted
        for two targets, say)."""
        name, version = manifest.name, manifest.version
        folder = self.root / name / str(version)
        sealed = unseal(folder / "manifest.enc", self._unwrap(folder, name, version), name, version, MANIFEST)
        installed = parse_manifest(sealed, f"{name} v{version}")
        if installed.canonical_bytes() != manifest.canonical_bytes():
            target = installed.profile.get("id", "another target")
            return (
                f"{name} v{version} is already installed from another bundle (made for {target}); convert "
                f"this one with another --version (or --name), or remove that one first: "
                f"edgekit models remove {name} {version}"
            )
        if state is not None and state.active == version:
            return f"{name} v{version} is already installed from this bundle, and active"
        activate = f"edgekit models activate {name} {version}"
        return f"{name} v{version} is already installed; activate it with: {activate}"

    def activate(self, name: str, version: int) -> None:
        with self.locked():
            state = self._read_state(name)
            if state is None or not (self.root / name / str(version)).is_dir():
                raise StoreError(f"{name} v{version} is not installed; see: edgekit models list")
            self._write_state(name, updated(state, active=version))

    def rollback(self, name: str) -> int:
        """Activate the newest installed version older than the active one."""
        with self.locked():
            active = (state := self._read_state(name)) and state.active
            older = [v for v in self._versions(name) if v < (active or 0)]
            if state is None or not older:
                raise StoreError(f"{name} has no installed version older than v{active}")
            self._write_state(name, updated(state, active=max(older)))
            return max(older)

    def remove(self, name: str, version: int) -> None:
        with self.locked():
            state = self._read_state(name)
            if state is not None and state.active == version:
                raise StoreError(f"{name} v{version} is active; activate another version first")
            target = self.root / name / str(version)
            if not target.is_dir():
                raise StoreError(f"{name} v{version} is not installed")
            trash = self.root / name / f".tmp-removing-{uuid.uuid4().hex}"
            os.replace(target, trash)  # atomic: a crash leaves a leftover that recovery deletes
            fsync_dir(target.parent)
            shutil.rmtree(trash)

    # --- reading -------------------------------------------------------------------------

    def _names_hint(self, name: str) -> str:
        """The installed name ``name`` may have meant, else every installed name."""
        names = self._names()
        close = difflib.get_close_matches(name, names, n=1)
        if close:
            return f" Did you mean '{close[0]}'?"
        return f" Installed: {', '.join(names)}." if names else ""

    def installed(self) -> list[Installed]:
        """Every installed version; one whose records are corrupt is listed with its
        ``problem``, and the others as usual."""
        with self.locked(shared=True):
            return [entry for name in self._names() for entry in self._listing(name)]

    def active(self) -> dict[str, int | None]:
        """Each model's active version (None where none is, or its record is unreadable):
        cheap enough to poll, for a server that follows activations."""
        with self.locked(shared=True):
            found: dict[str, int | None] = {}
            for name in self._names():
                try:
                    state = self._read_state(name)
                except EdgekitError:
                    state = None
                found[name] = state.active if state else None
            return found

    def _listing(self, name: str) -> list[Installed]:
        try:
            state, problem = self._read_state(name), None
        except EdgekitError as exc:
            state, problem = None, str(exc)
        found = []
        for version in self._versions(name):
            signer, bad_signature = self._signer(name, version)
            folder = self.root / name / str(version)
            entry = Installed(name, version, state is not None and state.active == version, signer,
                              problem or bad_signature, installed_at=folder.stat().st_mtime)  # fmt: skip
            found.append(self._described(entry, folder))
        return found

    def _described(self, entry: Installed, folder: Path) -> Installed:
        """``entry`` with what its manifest says it runs and was made for, where this device
        can read it (its key there, its records sound)."""
        try:
            data_key = self._unwrap(folder, entry.name, entry.version)
            sealed = unseal(folder / "manifest.enc", data_key, entry.name, entry.version, MANIFEST)
            manifest = parse_manifest(sealed, f"{entry.name} v{entry.version}")
        except (EdgekitError, OSError):
            return entry
        runs = ", ".join(f"{a.format} {a.precision}" for a in manifest.artifacts)
        return dataclasses.replace(entry, artifacts=runs, target=str(manifest.profile.get("id", "?")))

    def _signer(self, name: str, version: int) -> tuple[str | None, str | None]:
        path = self.root / name / str(version) / SIGNATURE
        if not path.exists():
            return None, None
        try:
            with open(path, "rb") as handle:  # at most what a bundle may carry, and one byte more
                raw = handle.read(MAX_SIGNATURE_BYTES + 1)
            return SignatureEntry.parse(raw, f"{name} v{version}").key_id, None
        except EdgekitError as exc:
            return None, str(exc)

    def load(self, name: str, version: int | None = None) -> tuple[Manifest, dict[str, bytes]]:
        """Decrypt a version (default: the active one) into memory, checking every tag."""
        with self.locked(shared=True):
            return self._load(name, version)

    def _load(self, name: str, version: int | None) -> tuple[Manifest, dict[str, bytes]]:
        state = self._read_state(name)
        if state is None:
            raise StoreError(f"no model '{name}' in the store.{self._names_hint(name)} "
                             "Install one with: edgekit install BUNDLE")
        version = version or state.active
        if version is None:
            raise StoreError(f"{name} has no active version; activate one with: edgekit models activate")
        folder = self.root / name / str(version)
        if not folder.is_dir():
            raise StoreError(f"{name} v{version} is not installed")
        data_key = self._unwrap(folder, name, version)
        manifest_bytes = unseal(folder / "manifest.enc", data_key, name, version, MANIFEST)
        manifest = parse_manifest(manifest_bytes, f"{name} v{version}")
        # No second sha256 here: install checked every hash before encrypting, and the GCM tags,
        # bound to name, version, file and chunk, authenticate every byte under a key only
        # this device can unwrap. Hashing again would double the cost of a cold load.
        contents = {
            file: unseal(folder / f"{file}.enc", data_key, name, version, file)
            for file, _, _ in manifest.files
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
        from edgekit.runtime.telemetry.ledger import LEDGER_DIR, reseal

        next_path = key_path.with_name(key_path.name + ".next")
        if not next_path.exists():
            create_device_key(next_path)
        old, new = FileKeyProvider(key_path).device_key(), FileKeyProvider(next_path).device_key()
        for name in self._names():
            state = self._read_state(name, keys=[new, old])
            for version in self._versions(name):
                folder = self.root / name / str(version)
                data_key = self._unwrap(folder, name, version, keys=[new, old])
                atomic_write(folder / "data.key", wrap_key(data_key, name, version, new))
            if state is not None:
                self._write_state(name, state, key=new)
        reseal((self.home / LEDGER_DIR), old, new)
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
            write_file(tmp / "data.key", wrap_key(data_key, name, version, self._device_keys()[0]))
            write_file(
                tmp / "manifest.enc", seal(manifest.canonical_bytes(), data_key, name, version, MANIFEST)
            )
            for file, _, _ in manifest.files:
                write_file(tmp / f"{file}.enc", seal(contents[file], data_key, name, version, file))
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

    def _unwrap(self, folder: Path, name: str, version: int, keys: list[bytes] | None = None) -> bytes:
        try:
            raw = (folder / "data.key").read_bytes()
        except OSError:
            raise StoreError(
                f"{name} v{version}: data.key is missing or malformed; the store was tampered with"
            ) from None
        return unwrap_key(raw, name, version, lambda seal, what: self._key_for(seal, what, keys))

    def _read_state(self, name: str, keys: list[bytes] | None = None) -> VersionState | None:
        path = self.root / name / "state.json"
        if not path.exists():
            if self._versions(name):
                raise StoreError(f"{name}: state.json is missing; the store was tampered with")
            return None
        raw = path.read_bytes()
        return read_state(raw, name, lambda seal, what: self._key_for(seal, what, keys))

    def _write_state(
        self, name: str, state: VersionState, key: bytes | None = None, then: str = "its state is as before"
    ) -> None:
        key = key or self._device_keys()[0]
        try:
            (self.root / name).mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / name / "state.json", state_bytes(name, state, key))
        except OSError as exc:
            raise StoreError(f"could not update {name}'s state: {exc.strerror or exc}; {then}") from exc

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
        found = (ascii_int(p.name) for p in folder.glob("*") if p.is_dir())
        return sorted(v for v in found if v)  # a stray '²' or '007' folder is no version

    def _recover(self) -> None:
        """Remove what a crash can leave (temp folders and files) and finish a cut-short
        rotation. Under the lock: another process's install in progress is not a leftover.
        A read-only store is left as it is, with a note."""
        if not self.root.exists():
            return
        if not os.access(self.root, os.W_OK) or _read_only(self.home):
            log.info("edgekit: the store at %s is read-only; crash recovery skipped", self.home)
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
    def locked(self, shared: bool = False) -> Iterator[None]:
        """Hold the store's lock: exclusive for every write (the engine cache's too), shared
        for reads. Readers never need to write: on a read-only store, where no writer can
        run, they read without it."""
        lock = self._open_lock(shared)
        if lock is None:
            yield
            return
        with lock:
            fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _open_lock(self, shared: bool) -> BinaryIO | None:
        path = self.home / "store.lock"
        try:
            if not shared or not path.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                return open(path, "a+b")
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreError(f"cannot open the store at {self.home}: {exc.strerror}") from exc
            if not shared:
                raise StoreError(
                    f"the store at {self.home} is read-only ({exc.strerror}); installs, activations "
                    "and removals need it writable: remount it read-write or set EDGEKIT_HOME"
                ) from None
            return None
        try:
            return open(path, "rb")
        except OSError:
            return None


def _read_only(home: Path) -> bool:
    try:
        return bool(os.statvfs(home).f_flag & os.ST_RDONLY)
    except OSError:
        return False
