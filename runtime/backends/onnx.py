"""ONNX Runtime backend: a session built from bytes in memory, on the providers asked for."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgekit.core.errors import MissingDependencyError, RuntimeBackendError
from edgekit.core.formats import CPU, CUDA, GPU_PROVIDERS, TENSORRT, TENSORRT_FP16, TENSORRT_INT8
from edgekit.core.samples import Feed
from edgekit.runtime.backends.base import Backend, Placement, TensorInfo

if TYPE_CHECKING:
    import onnxruntime as ort

_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
log = logging.getLogger("edgekit.runtime")
_MISSING_OP = re.compile(
    r"(?:Could not find an implementation for |not a registered function/op.*?|Fatal error: )([\w.:]+)\("
)


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "onnx", "running ONNX models") from exc
    return onnxruntime


@dataclass(frozen=True)
class ProviderSettings:
    """How to configure the GPU providers for one artifact."""

    precision: str | None = None
    """The artifact's precision: fp16 and int8 turn on TensorRT's fp16 and int8 kernels."""
    trt_cache_dir: Path | None = None
    """Where TensorRT keeps built engines; building one on a Jetson takes minutes."""
    trt_workspace_bytes: int = 1 << 30


def provider_options(provider: str, settings: ProviderSettings) -> dict[str, str]:
    """The options ONNX Runtime takes for ``provider``, as strings, as its C API wants them."""
    if provider == TENSORRT:
        options = {
            "trt_max_workspace_size": str(settings.trt_workspace_bytes),
            "trt_fp16_enable": str(settings.precision in TENSORRT_FP16),
            "trt_int8_enable": str(settings.precision in TENSORRT_INT8),  # scales come from the QDQ nodes
        }
        if settings.trt_cache_dir is not None:
            options |= {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(settings.trt_cache_dir),
                "trt_timing_cache_enable": "True",
            }
        return options
    if provider == CUDA:
        return {"device_id": "0"}
    return {}


class EngineStore(Protocol):
    """Where compiled TensorRT engines are kept: ``edgekit.runtime.engines.EngineCache``."""

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, engine: bytes) -> None: ...
    def drop(self, key: str) -> None: ...


def compile_engine(content: bytes, options: dict[str, str]) -> bytes:
    """The model as an EPContext model with TensorRT's engine embedded, built in memory with
    ONNX Runtime's compile API (1.22+), so no engine file is written."""
    ort = import_onnxruntime()
    if not hasattr(ort, "ModelCompiler"):
        raise RuntimeError(f"onnxruntime {ort.__version__} has no compile API (1.22 or later has)")
    session_options = ort.SessionOptions()
    session_options.add_provider(TENSORRT, options)
    compiled: bytes = ort.ModelCompiler(
        session_options, content, embed_compiled_data_into_model=True
    ).compile_to_bytes()
    if b"EPContext" not in compiled:  # the op type of the nodes that carry an engine
        raise RuntimeError("TensorRT took no part of the graph")
    return compiled


class ONNXBackend(Backend):
    format = "onnx"
    platform = "onnx_onnxv1"

    @classmethod
    def import_engine(cls) -> None:
        import_onnxruntime()

    @classmethod
    def runs_on_gpu(cls) -> bool:
        available: list[str] = import_onnxruntime().get_available_providers()
        return any(p in available for p in GPU_PROVIDERS)

    @classmethod
    def place(cls, content: bytes, threads: int | None, placement: Placement) -> Backend:
        settings = ProviderSettings(precision=placement.precision, trt_cache_dir=placement.trt_cache_dir)
        return cls(content, threads, placement.providers, settings, engines=placement.engines)

    def __init__(
        self,
        content: bytes,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        settings: ProviderSettings | None = None,
        available: Sequence[str] | None = None,
        session_factory: Callable[..., ort.InferenceSession] | None = None,
        engines: EngineStore | None = None,
        compiler: Callable[[bytes, dict[str, str]], bytes] = compile_engine,
    ) -> None:
        """Open a session on the first of ``providers`` that works, falling back in order.

        With ``engines``, TensorRT's engine is compiled once and kept there (encrypted, for
        store models) instead of being rebuilt at every start. ``available``,
        ``session_factory`` and ``compiler`` default to ONNX Runtime's; tests substitute them
        to exercise the GPU selection, fallback and engine cache on a machine without a GPU.
        """
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.log_severity_level = 3
        # A bundle must be self-contained: point external data at a folder that cannot exist
        # (a path under /dev/null), so an artifact can never make the session read other files.
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", os.devnull + "/edgekit-no-external-data"
        )
        self.fallbacks: list[str] = []
        self.engine_cache: str | None = None
        """For TensorRT with ``engines``: "loaded" or "built" (then saved), else None."""
        self._engines, self._compiler = engines, compiler
        self._session = self._open(
            content,
            options,
            list(providers or [CPU]),
            list(ort.get_available_providers() if available is None else available),
            settings or ProviderSettings(),
            session_factory or ort.InferenceSession,
        )
        self.provider = self._session.get_providers()[0]
        self._engine = f"onnxruntime {ort.__version__} ({self.provider})"
        self._inputs = tuple(_tensor_info(t) for t in self._session.get_inputs())
        self._outputs = tuple(_tensor_info(t) for t in self._session.get_outputs())

    def _open(
        self,
        content: bytes,
        options: ort.SessionOptions,
        wanted: list[str],
        available: list[str],
        settings: ProviderSettings,
        factory: Callable[..., ort.InferenceSession],
    ) -> ort.InferenceSession:
        self.fallbacks += [f"{p} is not in this onnxruntime build" for p in wanted if p not in available]
        chain = [p for p in wanted if p in available and p != CPU] + [CPU]
        for index, provider in enumerate(chain):
            providers = [(p, provider_options(p, settings)) for p in chain[index:]]
            engine = self._trt_engine(content, providers[0][1]) if provider == TENSORRT else None
            try:
                session = self._start(factory, content, engine, options, providers)
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
                if provider == CPU:
                    raise RuntimeBackendError(describe_load_failure(exc)) from exc
                self.fallbacks.append(f"{provider} failed to start ({_first_line(exc)})")
                continue
            if self.fallbacks:
                log.warning("edgekit: running on %s: %s", provider, "; ".join(self.fallbacks))
            return session
        raise AssertionError("unreachable: the CPU provider either opens or raises")

    def _start(
        self,
        factory: Callable[..., ort.InferenceSession],
        content: bytes,
        engine: tuple[str, bytes] | None,
        options: ort.SessionOptions,
        providers: list[tuple[str, dict[str, str]]],
    ) -> ort.InferenceSession:
        """A session on ``engine`` (key, compiled model) if it loads, else on ``content``."""
        if engine is not None:
            key, compiled = engine
            try:
                return factory(compiled, sess_options=options, providers=providers)
            except Exception as exc:  # another GPU, driver or TensorRT: build it again
                assert self._engines is not None
                self._engines.drop(key)
                self.engine_cache = None
                log.warning("edgekit: the stored TensorRT engine did not load (%s)", _first_line(exc))
        return factory(content, sess_options=options, providers=providers)

    def _trt_engine(self, content: bytes, trt_options: dict[str, str]) -> tuple[str, bytes] | None:
        """(key, EPContext model) from the engine store, else compiled now and stored; None
        without a store or when compiling fails (TensorRT then builds in the session)."""
        if self._engines is None:
            return None
        ort = import_onnxruntime()
        recipe = [
            hashlib.sha256(content).hexdigest(),
            ort.__version__,
            json.dumps(trt_options, sort_keys=True),
        ]
        key = hashlib.sha256("|".join(recipe).encode()).hexdigest()[:32]
        engine = self._engines.get(key)
        if engine is not None:
            self.engine_cache = "loaded"
            return key, engine
        try:
            engine = self._compiler(content, trt_options)
        except Exception as exc:
            log.warning(
                "edgekit: TensorRT engine not cached (%s); it is built at every start", _first_line(exc)
            )
            return None
        self._engines.put(key, engine)
        self.engine_cache = "built"
        return key, engine

    def bare_call(self, feed: Feed) -> Callable[[], object]:
        return lambda: self._session.run(None, feed)

    def decoder_step(self, cache: set[str], device: str | None = None) -> Callable[[Feed], list[Any]]:
        """A decoder's step: on CUDA and TensorRT (or any ``device`` given), IO binding that
        keeps the ``cache`` outputs on the device between steps; else ``run``."""
        if device is None and self.provider not in GPU_PROVIDERS:
            return self.run
        from edgekit.runtime.backends.onnx_binding import BoundSteps

        return BoundSteps(self._session, self._inputs, cache, device or "cuda")

    def _invoke(self, feed: Feed) -> list[np.ndarray]:
        typed = {info.name: np.asarray(feed[info.name], dtype=info.dtype) for info in self._inputs}
        return [
            out.astype(np.float32) if out.dtype.kind == "f" and out.dtype != np.float32 else out
            for out in self._session.run(None, typed)
        ]


def _tensor_info(arg: ort.NodeArg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorInfo(name=arg.name, shape=shape, dtype=_ONNX_DTYPES.get(arg.type, arg.type))


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:200]


def describe_load_failure(exc: Exception) -> str:
    text = str(exc)
    if "External data path" in text or "model_path must not be empty" in text:
        return (
            "the ONNX model references external data files; a bundle must be self-contained "
            "(edgekit convert inlines external weights)"
        )
    match = _MISSING_OP.search(text)
    if match:
        return (
            f"ONNX Runtime has no kernel for the op '{match.group(1)}' in this model; "
            "export the model with standard ONNX ops"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"ONNX Runtime could not load the model: {first[:300]}"
