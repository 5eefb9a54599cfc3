"""Compiled TensorRT engines of one installed version, stored encrypted beside it."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.core.atomic import atomic_write
from edgekit.core.errors import StoreError
from edgekit.runtime.sealed import seal, unseal

if TYPE_CHECKING:
    from edgekit.runtime.store import Store

log = logging.getLogger("edgekit")


class EngineCache:
    """Compiled TensorRT engines of one installed version, stored encrypted beside it.

    ONNX Runtime's own engine cache writes engines to a folder in plaintext, and an engine
    is the model; so for store models the runtime compiles the engine in memory (ONNX
    Runtime's compile API, an EPContext model with the engine embedded) and keeps it here,
    under the version's data key, as ``engines/KEY.enc``. ``KEY`` names what the engine was
    built from (artifact, onnxruntime version, provider options). An engine that fails its
    tag, or later fails to load, is dropped and built again.
    """

    def __init__(self, store: Store, name: str, version: int) -> None:
        self.store, self.name, self.version = store, name, version
        self.folder = store.version_folder(name, version)

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            data_key = self.store.data_key(self.name, self.version)
            return unseal(path, data_key, self.name, self.version, f"engines/{key}")
        except StoreError:
            self.drop(key)
            return None

    def put(self, key: str, engine: bytes) -> None:
        """Store an engine; on a store that cannot be written, say so and go on without."""
        try:
            with self.store.locked():
                if not self.folder.is_dir():
                    return  # removed meanwhile: nothing to cache for
                data_key = self.store.data_key(self.name, self.version)
                self._path(key).parent.mkdir(exist_ok=True)
                atomic_write(
                    self._path(key), seal(engine, data_key, self.name, self.version, f"engines/{key}")
                )
        except (StoreError, OSError) as exc:
            log.warning("edgekit: TensorRT engine not cached (%s); it is built at every start", exc)

    def drop(self, key: str) -> None:
        with contextlib.suppress(OSError):  # a read-only store keeps it, and builds anew
            self._path(key).unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        if not key.isalnum():
            raise ValueError(f"engine cache key {key!r}: letters and digits only")
        return self.folder / "engines" / f"{key}.enc"
