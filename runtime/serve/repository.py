"""The models a server holds: by name (the active version), by explicit version, hot swaps.

A store model is followed: a watcher polls the store's active versions, and when one
changes (``edgekit install``, ``models activate``, ``models rollback``) it loads and warms
the new version first, then makes it the one requests by name get. The old version finishes
every request it already queued before its engine is closed, so a swap fails none.
Plaintext model bytes stay in memory, as ``Model.load`` keeps them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core.errors import EdgekitError
from edgekit.core.text import TEXT_INPUT
from edgekit.core.validation import ascii_int
from edgekit.runtime.backends import backend_for
from edgekit.runtime.feeds import check_feed
from edgekit.runtime.model import Model
from edgekit.runtime.serve.batching import Batcher, BatchSettings, Retired
from edgekit.runtime.serve.protocol import ProtocolError, TensorSpec, spec_of

log = logging.getLogger("edgekit.serve")

Loader = Callable[[str, int | None], Model]
"""Loads a source (a bundle path, or a store name with an optional version), warmed."""


class Served:
    """One loaded model version with its batcher, and what clients see of it."""

    def __init__(self, model: Model, settings: BatchSettings) -> None:
        self.model = model
        self.name = model.manifest.name
        self.version = model.manifest.version
        self.batcher = Batcher(model, settings)
        if model.manifest.text is not None:
            self.inputs: tuple[TensorSpec, ...] = (TensorSpec(TEXT_INPUT, "BYTES", (-1,)),)
        else:
            self.inputs = tuple(spec_of(info) for info in model.backend.inputs)
        self.outputs = tuple(spec_of(info) for info in model.backend.outputs)
        self.output_names = tuple(info.name for info in model.backend.outputs)

    @property
    def platform(self) -> str:
        return backend_for(self.model.entry.format).platform

    def submit(self, inputs: dict[str, np.ndarray]) -> Future[list[np.ndarray]]:
        """Check ``inputs`` as ``predict`` does (400 naming the input), then queue them."""
        texts = None
        if self.model.manifest.generation is not None:
            raise ProtocolError(400, f"{self.name} generates text: POST /v2/models/{self.name}/generate")
        try:
            if self.model.manifest.text is not None:
                texts = [_text(item) for item in inputs[TEXT_INPUT].ravel()]
                feed = self.model.text_encoder.encode(texts)
            else:
                feed = check_feed(self.model.backend.inputs, inputs)
        except EdgekitError as exc:
            raise ProtocolError(400, str(exc)) from None
        return self.batcher.submit(feed, texts)

    def close(self) -> None:
        self.batcher.close()
        self.model.close()


def _text(item: object) -> str:
    try:
        return item.decode() if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError:
        raise ProtocolError(400, f"input '{TEXT_INPUT}': texts are UTF-8") from None


@dataclass(frozen=True)
class Source:
    name: str
    """The model name clients use."""
    where: str
    """A bundle path, or the store name."""
    store: bool


class Repository:
    """Served models by name and version; ``watch`` follows the store's activations."""

    def __init__(
        self, sources: Sequence[Source], loader: Loader, settings: Callable[[str], BatchSettings],
        active: Callable[[], dict[str, int | None]] | None = None, follow_new: bool = False,
    ) -> None:
        self._loader, self._settings, self._active_versions = loader, settings, active
        self._sources: dict[str, Source] = {}
        self._follow_new = follow_new
        self._active: dict[str, Served] = {}
        self._loaded: dict[tuple[str, int], Served] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._every_s = 0.5
        self._followed = time.monotonic()
        for source in sources:
            served = self._load(source, None)
            if served.name in self._sources:
                raise EdgekitError(f"{source.where} and {self._sources[served.name].where} are both "
                                   f"model {served.name}: serve one of them")
            self._sources[served.name] = source
            self._install(served)

    # --- lookups ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._active)

    def get(self, name: str, version: str | None = None) -> Served:
        with self._lock:
            active = self._active.get(name)
            if active is None:
                names = ", ".join(sorted(self._active)) or "none yet"
                raise ProtocolError(404, f"no model '{name}' is served here; it serves {names}")
            if not version:
                return active
            served = self._loaded.get((name, _version(version)))
        if served is not None:
            return served
        return self._load_version(name, _version(version))

    def ready(self, name: str, version: str | None = None) -> bool:
        with self._lock:
            if not version:
                return name in self._active
            number = ascii_int(version)
            return number is not None and (name, number) in self._loaded

    def versions(self, name: str) -> list[str]:
        with self._lock:
            return [str(v) for n, v in sorted(self._loaded) if n == name]

    def infer(self, name: str, version: str | None, inputs: dict[str, np.ndarray]) -> tuple[Served, Future]:
        """Queue a request on the version it names (default: the active one); a swap
        between the lookup and the queueing sends it to the new version."""
        for _ in range(3):
            served = self.get(name, version)
            try:
                return served, served.submit(inputs)
            except Retired:
                continue
        raise ProtocolError(503, f"{name} is being swapped; retry")

    # --- loading and swapping --------------------------------------------------------------

    def _load(self, source: Source, version: int | None) -> Served:
        model = self._loader(source.where, version)
        if model.manifest.name != source.name and source.store:
            raise EdgekitError(f"{source.where} holds {model.manifest.name}, not {source.name}")
        return Served(model, self._settings(model.manifest.name))

    def _install(self, served: Served) -> None:
        with self._lock:
            self._loaded[(served.name, served.version)] = served
            self._active[served.name] = served

    def _load_version(self, name: str, version: int) -> Served:
        source = self._sources[name]
        if not source.store:
            served_as = self._active[name].version
            raise ProtocolError(404, f"{name} is served from a bundle file, as version {served_as} only")
        key = (name, version)
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # many first requests for one version load it once; the others wait here
            with self._lock:
                served = self._loaded.get(key)
            if served is not None:
                return served
            try:
                served = self._load(source, version)
            except EdgekitError as exc:
                raise ProtocolError(404, f"{name} v{version}: {exc}") from None
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                kept = self._loaded.setdefault(key, served)
        if kept is not served:
            served.close()
        return kept

    def watch(self, every_s: float = 0.5) -> None:
        """Follow the store's active versions in a thread until ``close``."""
        if self._active_versions is None:
            return
        self._every_s = every_s
        self._watcher = threading.Thread(
            target=self._follow, args=(every_s,), name="serve-watch", daemon=True
        )
        self._watcher.start()

    def _follow(self, every_s: float) -> None:
        assert self._active_versions is not None
        self._followed = time.monotonic()
        while not self._stop.wait(every_s):
            try:
                for name, version in self._active_versions().items():
                    self._follow_one(name, version)
            except Exception as exc:  # out of file handles, a broken store: say so, keep following
                log.warning("cannot follow the store's active versions (retrying): %s", exc)
                continue
            self._followed = time.monotonic()

    def following(self) -> bool:
        """Whether hot swaps are followed: false once the store has not been read for a while,
        so readiness says the server no longer serves what ``install`` activates."""
        if self._watcher is None:
            return True
        stale = time.monotonic() - self._followed > max(10.0, 20 * self._every_s)
        return self._watcher.is_alive() and not stale

    def _follow_one(self, name: str, version: int | None) -> None:
        source = self._sources.get(name)
        if source is None and self._follow_new and version is not None:
            source = self._sources[name] = Source(name, name, True)
        if source is None or not source.store or version is None:
            return
        with self._lock:
            current = self._active.get(name)
        if current is not None and current.version == version:
            return
        try:
            served = self._loaded.get((name, version)) or self._load(source, version)
        except (EdgekitError, OSError) as exc:
            log.error("%s v%d was activated but does not load (still serving the old version): %s",
                      name, version, exc)
            return
        self._install(served)
        log.info("%s: now serving v%d (was v%s)", name, version, current.version if current else "-")
        if current is not None:
            self._retire(current)

    def _retire(self, served: Served) -> None:
        with self._lock:
            self._loaded.pop((served.name, served.version), None)
        served.close()

    def close(self) -> None:
        """Stop following, finish every queued request, release the engines."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            every = list(self._loaded.values())
            self._loaded.clear()
            self._active.clear()
        for served in every:
            served.close()


def _version(text: str) -> int:
    number = ascii_int(text)
    if not number:  # version 0 is no version: it must not name the active one
        raise ProtocolError(400, f"a model version is a positive integer, got {text[:40]!r}")
    return number


def source_of(text: str) -> Source:
    """A command-line model: a bundle path (named by its file's stem until loaded) or a store name."""
    path = Path(text)
    if path.suffix == ".ekb" or path.exists():
        return Source(path.stem, text, False)
    return Source(text, text, True)
