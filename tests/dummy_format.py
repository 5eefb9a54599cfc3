"""A third artifact format, added as a contributor would add one: its name in the kernel's
vocabulary (standing in for the one-word edit of ``edgekit/core/formats.py``), a converter
and a backend, and nothing else. Its artifact is an ONNX model behind a header of its own,
run through ONNX Runtime; what matters is that planning, the gate, the memory probe, the
manifest, loading and serving reach it only through the registries.

Import it before ``edgekit.cli`` (the CLI's choices are read from the registries)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from edgekit.converters.base import Advance, Artifact, ConversionSettings, Converter
from edgekit.converters.source_model import SourceModel
from edgekit.core import formats
from edgekit.core.errors import RuntimeBackendError
from edgekit.core.formats import Format, Precision, SourceKind
from edgekit.core.samples import Feed, Samples
from edgekit.runtime.backends import Backend, ONNXBackend

FORMAT = "dummy"
MAGIC = b"EKDUMMY1"
formats.FORMATS = (*formats.FORMATS, FORMAT)  # type: ignore[assignment]


class DummyConverter(Converter):
    format: ClassVar[Format] = FORMAT  # type: ignore[assignment]
    precisions: ClassVar[tuple[Precision, ...]] = ("fp32",)
    source_kinds: ClassVar[frozenset[SourceKind]] = frozenset({"onnx"})

    def convert(
        self, source: SourceModel, precision: str, calibration: Samples | None, advance: Advance,
        settings: ConversionSettings,
    ) -> Artifact:  # fmt: skip
        assert source.onnx_model is not None
        started = time.perf_counter()
        content = MAGIC + source.onnx_model.SerializeToString()
        return Artifact(self.format, precision, content, time.perf_counter() - started)


class DummyBackend(Backend):
    format = FORMAT
    platform = "dummy_v1"

    def __init__(self, content: bytes, threads: int | None = None) -> None:
        if not content.startswith(MAGIC):
            raise RuntimeBackendError("not a dummy artifact")
        self._inner = ONNXBackend(content[len(MAGIC) :], threads)
        self._inputs, self._outputs = self._inner.inputs, self._inner.outputs
        self._engine = f"dummy 1 over {self._inner.engine}"
        self.fallbacks = []

    def bare_call(self, feed: Feed) -> Callable[[], object]:
        return self._inner.bare_call(feed)

    def _invoke(self, feed: Feed) -> list[np.ndarray]:
        return self._inner.run(feed)
