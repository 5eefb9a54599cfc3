"""Small helpers the test modules share."""

from __future__ import annotations

import numpy as np

from edgekit.runtime.backends import Backend


def run_one(backend: Backend, x: np.ndarray) -> np.ndarray:
    """The first output of a single-input engine for the batch ``x``."""
    return backend.run({backend.inputs[0].name: x})[0]
