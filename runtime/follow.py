"""A store model that follows its active version: what ``edgekit agent`` installs (or
``models activate`` and ``rollback`` choose) is what the next call runs, with no restart.

A watcher thread polls the store's active versions, cheaply, every ``interval`` seconds. When
the active version changes, it loads and warms the new one off the caller's path, then swaps
it in between two calls. The old version finishes every call that had started on it before
its engine is closed, as ``edgekit serve`` swaps. A new version that fails to load leaves the
old one running, logged once per version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgekit.core.manifest import Manifest
    from edgekit.runtime.model import Model, ModelInfo
    from edgekit.runtime.store import Store
    from edgekit.runtime.telemetry import Telemetry

log = logging.getLogger("edgekit.runtime")


class FollowedModel:
    """``Model.follow``'s result: ``predict``, ``run`` and ``predict_text`` as a ``Model``'s,
    on whichever version is active."""

    def __init__(
        self, name: str, load: Callable[[Telemetry | None], Model], store: Store,
        telemetry: Callable[[], Telemetry] | None = None, interval: float = 0.5,
    ) -> None:  # fmt: skip
        self.name = name
        self.swaps = 0
        """How many times a new active version was swapped in."""
        self._load, self._store, self._make_telemetry = load, store, telemetry
        self._interval = interval
        self._changed = threading.Condition()
        self._model = self._open()
        self._users: dict[int, int] = {}
        self._failed: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"edgekit-follow-{name}", daemon=True)
        self._thread.start()

    @property
    def model(self) -> Model:
        """The version calls run on now."""
        return self._model

    @property
    def manifest(self) -> Manifest:
        return self._model.manifest

    @property
    def info(self) -> ModelInfo:
        return self._model.info

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        return self._call(lambda model: model.predict(x))

    def run(
        self, x: np.ndarray | Mapping[str, np.ndarray], texts: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        return self._call(lambda model: model.run(x, texts))

    def predict_text(self, texts: Sequence[str]) -> np.ndarray | dict[str, np.ndarray]:
        return self._call(lambda model: model.predict_text(texts))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._retire(self._model)

    def __enter__(self) -> FollowedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, work: Callable[[Model], Any]) -> Any:
        with self._changed:
            model = self._model
            self._users[id(model)] = self._users.get(id(model), 0) + 1
        try:
            return work(model)
        finally:
            with self._changed:
                self._users[id(model)] -= 1
                self._changed.notify_all()

    def _open(self) -> Model:
        telemetry = self._make_telemetry() if self._make_telemetry is not None else None
        try:
            return self._load(telemetry)
        except BaseException:
            if telemetry is not None:
                telemetry.close()
            raise

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            active = self._store.active().get(self.name)
            if active is None or active in (self._model.manifest.version, self._failed):
                continue
            try:
                fresh = self._open()
            except Exception as exc:  # a version that cannot load must not stop the one running
                log.warning("edgekit: %s v%s did not load (%s); v%s keeps running",
                            self.name, active, exc, self._model.manifest.version)  # fmt: skip
                self._failed = active
                continue
            with self._changed:
                old, self._model = self._model, fresh
            self.swaps += 1
            log.info("edgekit: %s now runs v%s", self.name, fresh.manifest.version)
            self._retire(old)

    def _retire(self, model: Model) -> None:
        """Close ``model`` once no call runs on it any more."""
        with self._changed:
            self._changed.wait_for(lambda: self._users.get(id(model), 0) == 0, timeout=60)
            self._users.pop(id(model), None)
        model.close()  # and its telemetry: one Telemetry serves one version
