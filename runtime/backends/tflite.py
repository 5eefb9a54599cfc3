"""TFLite backend: ai_edge_litert, else tflite_runtime, else tensorflow.lite.

The interpreter is built from bytes in memory (``model_content``); no temp file.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from functools import cache
from importlib import metadata
from typing import Any

import numpy as np

from edgekit.errors import MissingDependencyError, RuntimeBackendError
from edgekit.runtime.backends.base import Backend, TensorInfo, dequantize, quantize

# Best first. tensorflow.lite is last because importing it loads all of TensorFlow.
_INTERPRETER_MODULES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)
_CUSTOM_OP = re.compile(r"unresolved custom op:?\s*(\w+)", re.IGNORECASE)
_NEWER_OP = re.compile(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'")


@cache
def import_interpreter() -> tuple[Any, str]:
    """Return the first importable ``Interpreter`` class and a 'package version' label."""
    for module_name, dist in _INTERPRETER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            # tflite-runtime 2.14 under numpy 2 fails here with "_ARRAY_API not found".
            continue
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return module.Interpreter, f"{dist} {version}"
    raise MissingDependencyError("ai-edge-litert", "tflite", "running TFLite models")


class TFLiteBackend(Backend):
    format = "tflite"

    @classmethod
    def import_engine(cls) -> None:
        import_interpreter()

    def __init__(self, content: bytes, threads: int | None = None) -> None:
        interpreter_class, self._engine = import_interpreter()
        self.fallbacks: list[str] = []
        # One interpreter per model: it is not thread-safe, so calls take turns.
        self._lock = threading.Lock()
        try:
            self._interpreter = interpreter_class(model_content=content, num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeBackendError(_describe_load_failure(exc)) from exc
        details = self._interpreter.get_input_details()
        if len(details) != 1:
            raise RuntimeBackendError(
                f"the model has {len(details)} inputs; this runtime runs single-input models"
            )
        self._input_index = details[0]["index"]
        self._inputs = tuple(_tensor_info(d) for d in details)
        self._outputs = tuple(_tensor_info(d) for d in self._interpreter.get_output_details())
        self._output_indices = [d["index"] for d in self._interpreter.get_output_details()]
        self._batch = int(details[0]["shape"][0]) if len(details[0]["shape"]) else 0

    def bare_call(self, x: np.ndarray) -> Callable[[], object]:
        interpreter, index = self._interpreter, self._input_index
        info, outputs = self._inputs[0], self._interpreter.get_output_details()
        if list(interpreter.get_input_details()[0]["shape"]) != list(x.shape):
            interpreter.resize_tensor_input(index, list(x.shape))
            interpreter.allocate_tensors()
            self._batch = x.shape[0]

        def call() -> list[np.ndarray]:
            feed = x
            if info.quantized:  # what a bare user writes to feed floats to an int8 model
                feed = np.clip(np.round(x / info.scale) + info.zero_point, -128, 127).astype(np.int8)
            interpreter.set_tensor(index, feed)
            interpreter.invoke()
            values = [interpreter.get_tensor(o["index"]) for o in outputs]
            return [(v.astype(np.float32) - o["quantization"][1]) * o["quantization"][0]
                    if o["quantization"][0] else v for v, o in zip(values, outputs, strict=True)]  # fmt: skip

        return call

    def tensor_dtypes(self) -> set[str]:
        return {np.dtype(t["dtype"]).name for t in self._interpreter.get_tensor_details()}

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        info = self._inputs[0]
        with self._lock:
            if info.shape and info.shape[0] is None:
                return self._run_batch(x)
            # A fixed batch size: feed one batch of that size at a time.
            step = info.shape[0] or 1
            parts = [self._run_batch(x[i : i + step]) for i in range(0, len(x), step)]
        return [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]

    def _run_batch(self, x: np.ndarray) -> list[np.ndarray]:
        info = self._inputs[0]
        if info.shape and info.shape[0] is None and x.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input_index, list(x.shape))
            self._interpreter.allocate_tensors()
            self._batch = x.shape[0]
        feed = quantize(x, info) if info.quantized else x.astype(info.dtype, copy=False)
        self._interpreter.set_tensor(self._input_index, feed)
        self._interpreter.invoke()
        results = []
        for index, out in zip(self._output_indices, self._outputs, strict=True):
            value = self._interpreter.get_tensor(index)
            results.append(dequantize(value, out) if out.quantized else value.copy())
        return results


def _tensor_info(detail: dict[str, Any]) -> TensorInfo:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    scale, zero_point = detail["quantization"]
    quantized = scale != 0.0 and np.issubdtype(detail["dtype"], np.integer)
    return TensorInfo(
        name=detail["name"],
        shape=tuple(None if d < 0 else int(d) for d in dims),
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale) if quantized else None,
        zero_point=int(zero_point) if quantized else None,
    )


def _describe_load_failure(exc: Exception) -> str:
    text = str(exc)
    match = _CUSTOM_OP.search(text)
    if match:
        return (
            f"the TFLite model needs the custom op '{match.group(1)}', which this runtime "
            "does not provide; convert the model without custom ops"
        )
    match = _NEWER_OP.search(text)
    if match:
        return (
            f"the model uses {match.group(1)} version {match.group(2)}, newer than "
            f"{import_interpreter()[1]} runs; install ai-edge-litert (pip install 'edgekit[tflite]') "
            "or ship a precision this runtime supports"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"the TFLite runtime could not load the model: {first}"
