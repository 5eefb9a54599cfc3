"""ONNX Runtime backend: a session built from bytes in memory, on the providers asked for."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import MissingDependencyError, RuntimeBackendError
from edgekit.runtime.backends.base import Backend, TensorInfo

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
CPU = "CPUExecutionProvider"
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
    if provider == "TensorrtExecutionProvider":
        options = {
            "trt_max_workspace_size": str(settings.trt_workspace_bytes),
            "trt_fp16_enable": str(settings.precision in ("fp16", "int8")),
            "trt_int8_enable": str(settings.precision == "int8"),  # scales come from the QDQ nodes
        }
        if settings.trt_cache_dir is not None:
            options |= {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(settings.trt_cache_dir),
                "trt_timing_cache_enable": "True",
            }
        return options
    if provider == "CUDAExecutionProvider":
        return {"device_id": "0"}
    return {}


class ONNXBackend(Backend):
    format = "onnx"

    @classmethod
    def import_engine(cls) -> None:
        import_onnxruntime()

    def __init__(
        self,
        content: bytes,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        settings: ProviderSettings | None = None,
        available: Sequence[str] | None = None,
        session_factory: Callable[..., Any] | None = None,
    ) -> None:
        """Open a session on the first of ``providers`` that works, falling back in order.

        ``available`` and ``session_factory`` default to ONNX Runtime's; tests substitute them
        to exercise the GPU selection and fallback on a machine without a GPU.
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
        self._session = self._open(
            content,
            options,
            list(providers or ["CPUExecutionProvider"]),
            list(ort.get_available_providers() if available is None else available),
            settings or ProviderSettings(),
            session_factory or ort.InferenceSession,
        )
        self.provider = self._session.get_providers()[0]
        self._engine = f"onnxruntime {ort.__version__} ({self.provider})"
        self._inputs = tuple(_tensor_info(t) for t in self._session.get_inputs())
        self._outputs = tuple(_tensor_info(t) for t in self._session.get_outputs())
        if len(self._inputs) != 1:
            raise RuntimeBackendError(
                f"the model has {len(self._inputs)} inputs; this runtime runs single-input models"
            )

    def _open(
        self,
        content: bytes,
        options: Any,
        wanted: list[str],
        available: list[str],
        settings: ProviderSettings,
        factory: Callable[..., Any],
    ) -> Any:
        self.fallbacks += [f"{p} is not in this onnxruntime build" for p in wanted if p not in available]
        chain = [p for p in wanted if p in available and p != CPU] + [CPU]
        for index, provider in enumerate(chain):
            rest = chain[index:]
            try:
                session = factory(
                    content,
                    sess_options=options,
                    providers=[(p, provider_options(p, settings)) for p in rest],
                )
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
                if provider == CPU:
                    raise RuntimeBackendError(describe_load_failure(exc)) from exc
                self.fallbacks.append(f"{provider} failed to start ({_first_line(exc)})")
                continue
            if self.fallbacks:
                log.warning("edgekit: running on %s: %s", provider, "; ".join(self.fallbacks))
            return session
        raise AssertionError("unreachable: the CPU provider either opens or raises")

    def bare_call(self, x: np.ndarray) -> Callable[[], object]:
        feed = {self._inputs[0].name: x}
        return lambda: self._session.run(None, feed)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        info = self._inputs[0]
        feed = {info.name: x.astype(info.dtype, copy=False)}
        return [np.asarray(out, dtype=np.float32) for out in self._session.run(None, feed)]


def _tensor_info(arg: Any) -> TensorInfo:
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
