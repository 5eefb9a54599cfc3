"""ONNX Runtime backend: a session built from bytes in memory, on the providers asked for."""

from __future__ import annotations

import re
from collections.abc import Sequence
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
_MISSING_OP = re.compile(
    r"(?:Could not find an implementation for |not a registered function/op.*?|Fatal error: )([\w.:]+)\("
)


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "onnx", "running ONNX models") from exc
    return onnxruntime


class ONNXBackend(Backend):
    format = "onnx"

    @classmethod
    def import_engine(cls) -> None:
        import_onnxruntime()

    def __init__(
        self, content: bytes, threads: int | None = None, providers: Sequence[str] | None = None
    ) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.log_severity_level = 3
        available = set(ort.get_available_providers())
        wanted = [p for p in (providers or ["CPUExecutionProvider"]) if p in available]
        try:
            self._session = ort.InferenceSession(
                content, sess_options=options, providers=wanted or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise RuntimeBackendError(describe_load_failure(exc)) from exc
        self._engine = f"onnxruntime {ort.__version__} ({self._session.get_providers()[0]})"
        self._inputs = tuple(_tensor_info(t) for t in self._session.get_inputs())
        self._outputs = tuple(_tensor_info(t) for t in self._session.get_outputs())
        if len(self._inputs) != 1:
            raise RuntimeBackendError(
                f"the model has {len(self._inputs)} inputs; this runtime runs single-input models"
            )

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        info = self._inputs[0]
        feed = {info.name: x.astype(info.dtype, copy=False)}
        return [np.asarray(out, dtype=np.float32) for out in self._session.run(None, feed)]


def _tensor_info(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorInfo(name=arg.name, shape=shape, dtype=_ONNX_DTYPES.get(arg.type, arg.type))


def describe_load_failure(exc: Exception) -> str:
    text = str(exc)
    match = _MISSING_OP.search(text)
    if match:
        return (
            f"ONNX Runtime has no kernel for the op '{match.group(1)}' in this model; "
            "export the model with standard ONNX ops"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"ONNX Runtime could not load the model: {first[:300]}"
