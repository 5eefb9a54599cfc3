"""What every backend offers: load from bytes, describe tensors, run float arrays."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgekit.core.errors import EdgekitError, InferenceError, RuntimeBackendError
from edgekit.core.formats import CPU, ExecutionProvider
from edgekit.core.samples import Feed

if TYPE_CHECKING:
    from edgekit.runtime.engines import EngineCache


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output as the device sees it. ``None`` in ``shape`` is a free dim."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    @property
    def quantized(self) -> bool:
        return self.scale is not None


@dataclass(frozen=True)
class Placement:
    """Where an engine may run an artifact: what GPU engines read, and CPU engines ignore."""

    providers: tuple[ExecutionProvider, ...] = (CPU,)
    """ONNX Runtime's providers, best first (the profile's order)."""
    precision: str | None = None
    """The artifact's precision: TensorRT turns on fp16 and int8 kernels by it."""
    engines: EngineCache | None = None
    """Where compiled TensorRT engines are kept, encrypted (store models)."""
    trt_cache_dir: Path | None = None


class Backend(ABC):
    """Runs one artifact held in memory. Subclasses register under ``format``, and answer
    what the runtime asks of a format: whether its engine is installed, whether it runs on
    a GPU here, and its name on the Open Inference Protocol."""

    format: ClassVar[str]
    platform: ClassVar[str]
    """The KServe v2 platform name of this format (``onnx_onnxv1``, ``tflite_tflite``)."""
    registry: ClassVar[dict[str, type[Backend]]] = {}

    def __init_subclass__(cls, register: bool = True, **kwargs: object) -> None:
        """Register under ``format``; ``register=False`` for a wrapper that runs another
        backend's format (``edgekit.runtime.isolated``)."""
        super().__init_subclass__(**kwargs)
        if not register:
            return
        key = cls.__dict__.get("format")
        if key is None:
            raise TypeError(f"{cls.__name__} must set a 'format' class attribute")
        if key in Backend.registry:
            raise TypeError(f"two backends claim format '{key}'")
        Backend.registry[key] = cls

    @classmethod
    def import_engine(cls) -> None:
        """Import the library that runs this format, so later loads measure only the model;
        a MissingDependencyError with the install line when it is not installed."""
        return None

    @classmethod
    def available(cls) -> bool:
        """Whether this format's engine is installed here."""
        try:
            cls.import_engine()
        except EdgekitError:
            return False
        return True

    @classmethod
    def runs_on_gpu(cls) -> bool:
        """Whether this engine can run on a GPU on this machine (GPU first: the runtime prefers it)."""
        return False

    @classmethod
    def place(cls, content: bytes, threads: int | None, placement: Placement) -> Backend:
        """A backend for ``content`` where ``placement`` allows; CPU engines ignore it."""
        return cls(content, threads)

    @abstractmethod
    def __init__(self, content: bytes, threads: int | None = None) -> None: ...

    _inputs: tuple[TensorInfo, ...]
    _outputs: tuple[TensorInfo, ...]
    _engine: str
    provider: str | None = None
    """The ONNX Runtime execution provider actually in use; None for other engines."""
    fallbacks: list[str]
    """One line per preferred provider that was missing or failed."""

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    @property
    def engine(self) -> str:
        """Which library runs the artifact, e.g. 'ai-edge-litert 2.3.0'."""
        return self._engine

    @abstractmethod
    def bare_call(self, feed: Feed) -> Callable[[], object]:
        """A closure that feeds ``feed`` to the engine directly, for overhead measurements."""

    def run(self, feed: Feed) -> list[np.ndarray]:
        """Run one call (every input by name, float inputs as float); return the outputs in
        ``outputs`` order, float outputs as float32. A model converted at a fixed batch of 1
        takes a larger batch one sample at a time."""
        split = [name for name in self._fixed_batch if feed[name].ndim and len(feed[name]) > 1]
        if not split:
            return self._engine_call(feed)
        count = len(feed[split[0]])
        parts = [self._engine_call({**feed, **{n: feed[n][i : i + 1] for n in split}}) for i in range(count)]
        return [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]

    def _engine_call(self, feed: Feed) -> list[np.ndarray]:
        """``_invoke``, with whatever the engine raises as an InferenceError that keeps the
        engine's message; the model stays loaded and usable."""
        try:
            return self._invoke(feed)
        except EdgekitError:
            raise
        except Exception as exc:
            message = " ".join(str(exc).split())[:500] or type(exc).__name__
            raise InferenceError(f"{self.engine} failed on this input: {message}") from exc

    def decoder_step(self, cache: set[str], device: str | None = None) -> Callable[[Feed], list[Any]]:
        """What a decoder's generation loop calls each step; engines that can keep the
        ``cache`` outputs on a GPU between steps override it (``device`` forces that path)."""
        return self.run

    @cached_property
    def _fixed_batch(self) -> list[str]:
        return [info.name for info in self._inputs if info.shape and info.shape[0] == 1]

    def close(self) -> None:  # noqa: B027 - most engines hold nothing outside the object
        """Release what the engine holds outside this object (an isolated model's process)."""

    @abstractmethod
    def _invoke(self, feed: Feed) -> list[np.ndarray]:
        """One engine call on ``feed`` as given."""


def zeros_feed(inputs: tuple[TensorInfo, ...]) -> Feed:
    """A batch-1 call of zeros in each input's own dtype (float for quantized inputs)."""
    return {
        info.name: np.zeros(
            tuple(1 if d is None else d for d in info.shape), "float32" if info.quantized else info.dtype
        )
        for info in inputs
    }


def backend_for(fmt: str) -> type[Backend]:
    try:
        return Backend.registry[fmt]
    except KeyError:
        known = ", ".join(sorted(Backend.registry))
        raise RuntimeBackendError(f"no runtime backend for format '{fmt}' (known: {known})") from None


def quantize(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Float to the tensor's integer type with its scale and zero point, saturating.

    In place on one float32 buffer: on a 224x224x3 image this is the runtime's largest
    cost over the bare interpreter (benchmarks/runtime_overhead.py).
    """
    assert info.scale is not None and info.zero_point is not None
    limits = np.iinfo(np.dtype(info.dtype))
    q = np.multiply(x, np.float32(1.0 / info.scale), dtype=np.float32)
    np.rint(q, out=q)
    q += np.float32(info.zero_point)
    np.clip(q, limits.min, limits.max, out=q)
    return q.astype(info.dtype)


def dequantize(q: np.ndarray, info: TensorInfo) -> np.ndarray:
    assert info.scale is not None and info.zero_point is not None
    out = q.astype(np.float32)
    out -= np.float32(info.zero_point)
    out *= np.float32(info.scale)
    return out
