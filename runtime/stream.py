"""Streaming models: a recurrent state carried from one call to the next.

A voice-activity or keyword model takes a chunk of audio and its state, and gives back a
score and the next state. The bundle's manifest names each (output, input) state pair;
``Model.stream()`` makes a ``Stream`` that keeps its own state, so two audio sources on one
model never mix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from edgekit.core.errors import RuntimeBackendError, ShapeError

if TYPE_CHECKING:
    from edgekit.runtime.model import Model


class Stream:
    """``step`` feeds the other inputs with the current state and keeps the next state;
    ``reset`` zeroes the state. Not thread-safe: use one stream per thread or source."""

    def __init__(self, model: Model) -> None:
        pairs = model.manifest.state
        if not pairs:
            raise RuntimeBackendError(
                "the bundle declares no state pairs; convert it with --state OUTPUT:INPUT"
            )
        self._model = model
        self._pairs = {pair.input: pair.output for pair in pairs}
        inputs = model.info.inputs
        self._state_specs = {info.name: info for info in inputs if info.name in self._pairs}
        self._free = [info.name for info in inputs if info.name not in self._pairs]
        self._out_names = [info.name for info in model.info.outputs]
        self._state: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Zero the state, as at the start of a new stream."""
        self._state = {
            name: np.zeros(
                tuple(1 if d is None else d for d in info.shape), "float32" if info.quantized else info.dtype
            )
            for name, info in self._state_specs.items()
        }

    def step(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """One step: ``x`` for the one input that is not state, else a dict by name. Returns
        the outputs that are not state: an array for one, a dict by name for several."""
        if isinstance(x, Mapping):
            given = [name for name in x if name in self._pairs]
            if given:
                raise ShapeError(
                    f"input '{given[0]}' is the stream's state: step() feeds it back, reset() zeroes it"
                )
            feed = dict(x)
        elif len(self._free) == 1:
            feed = {self._free[0]: x}
        else:
            raise ShapeError(f"the stream takes {', '.join(self._free)}; pass a dict by input name")
        outputs = dict(zip(self._out_names, self._model.run({**feed, **self._state}), strict=True))
        for name, output in self._pairs.items():
            self._state[name] = outputs[output]
        rest = {name: out for name, out in outputs.items() if name not in self._pairs.values()}
        return next(iter(rest.values())) if len(rest) == 1 else rest
