"""A decoder's steps through ONNX Runtime's IO binding, for GPU providers: the key-value
cache each step returns stays in the provider's memory and is bound as the next step's
input, so only the ids go in and only the logits come back over the bus.

The first step's cache is empty numpy arrays, bound from the host; after it, the cache
is ``OrtValue`` objects on ``device``. With ``device="cpu"`` the same binding runs on the
CPU provider: that is how the tests hold it to the plain path's tokens on a machine with no
GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.core.errors import InferenceError
from edgekit.core.samples import Feed
from edgekit.runtime.backends.base import TensorInfo


class BoundSteps:
    """Call with a decoder feed; returns the outputs in the session's order, the logits (and
    any output not in ``keep``) as numpy, each ``keep`` output as an ``OrtValue`` on ``device``."""

    def __init__(self, session: Any, inputs: tuple[TensorInfo, ...], keep: set[str], device: str) -> None:
        import onnxruntime as ort

        self._ort, self._session, self._inputs = ort, session, inputs
        self._outputs = [o.name for o in session.get_outputs()]
        self.keep, self.device = keep, device

    def __call__(self, feed: Feed) -> list[Any]:
        try:
            return self._step(feed)
        except Exception as exc:  # ONNX Runtime's own error types, as Backend.run words them
            message = " ".join(str(exc).split())[:500] or type(exc).__name__
            raise InferenceError(f"onnxruntime failed on this step ({self.device}): {message}") from exc

    def _step(self, feed: Feed) -> list[Any]:
        binding = self._session.io_binding()
        for info in self._inputs:
            value = feed[info.name]
            if isinstance(value, self._ort.OrtValue):
                binding.bind_ortvalue_input(info.name, value)
            else:
                binding.bind_cpu_input(info.name, np.ascontiguousarray(value, dtype=info.dtype))
        for name in self._outputs:
            binding.bind_output(name, self.device if name in self.keep else "cpu")
        self._session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return [
            value if name in self.keep else _float32(value.numpy())
            for name, value in zip(self._outputs, values, strict=True)
        ]


def _float32(value: np.ndarray) -> np.ndarray:
    return value.astype(np.float32) if value.dtype.kind == "f" and value.dtype != np.float32 else value
