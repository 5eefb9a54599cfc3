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

from edgekit.core.errors import MissingDependencyError, RuntimeBackendError
from edgekit.core.samples import Feed
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
    platform = "tflite_tflite"

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
        self._steps = _decoder_steps(self._interpreter)
        if self._steps is not None:
            self._describe_decoder(self._steps[1])
            return
        names = _signature_names(self._interpreter)
        details = self._interpreter.get_input_details()
        self._inputs = tuple(_tensor_info(d, names) for d in details)
        self._outputs = tuple(_tensor_info(d, names) for d in self._interpreter.get_output_details())
        self._index = {info.name: d["index"] for info, d in zip(self._inputs, details, strict=True)}
        self._shapes = {
            info.name: tuple(int(n) for n in d["shape"])
            for info, d in zip(self._inputs, details, strict=True)
        }
        self._output_indices = [d["index"] for d in self._interpreter.get_output_details()]

    def _describe_decoder(self, decode: Any) -> None:
        """A decoder's tensors are its ``decode`` signature's: the prompt runs through
        ``prefill`` when the cache fed is empty (see ``_invoke``)."""
        inputs, outputs = decode.get_input_details(), decode.get_output_details()
        self._inputs = tuple(_tensor_info(d, {int(d["index"]): n}) for n, d in inputs.items())
        self._outputs = tuple(_tensor_info(d, {int(d["index"]): n}) for n, d in outputs.items())
        self._past = [name for name, d in inputs.items() if len(d["shape_signature"]) == 4]
        self._fed = {runner: [(n, np.dtype(d["dtype"])) for n, d in runner.get_input_details().items()]
                     for runner in self._steps or ()}  # fmt: skip
        """Each signature's inputs and their dtypes, read once: not on every step."""

    def bare_call(self, feed: Feed) -> Callable[[], object]:
        if self._steps is not None:
            return lambda: self._step(feed)
        interpreter = self._interpreter
        self._resize(feed)
        inputs = [(self._index[info.name], info, feed[info.name]) for info in self._inputs]
        outputs = interpreter.get_output_details()

        def call() -> list[np.ndarray]:
            for index, info, x in inputs:
                if info.quantized:  # what a bare user writes to feed floats to an int8 model
                    x = np.clip(np.round(x / info.scale) + info.zero_point, -128, 127).astype(np.int8)
                interpreter.set_tensor(index, x)
            interpreter.invoke()
            values = [interpreter.get_tensor(o["index"]) for o in outputs]
            return [(v.astype(np.float32) - o["quantization"][1]) * o["quantization"][0]
                    if o["quantization"][0] else v for v, o in zip(values, outputs, strict=True)]  # fmt: skip

        return call

    def tensor_dtypes(self) -> set[str]:
        return {np.dtype(t["dtype"]).name for t in self._interpreter.get_tensor_details()}

    def _resize(self, feed: Feed) -> None:
        changed = False
        for info in self._inputs:
            shape = feed[info.name].shape
            if shape != self._shapes[info.name]:
                self._interpreter.resize_tensor_input(self._index[info.name], list(shape))
                self._shapes[info.name] = shape
                changed = True
        if changed:
            self._interpreter.allocate_tensors()

    def _step(self, feed: Feed) -> list[np.ndarray]:
        """One decoder step: ``prefill`` for an empty cache (the prompt), else ``decode``."""
        assert self._steps is not None
        prefill, decode = self._steps
        empty = all(feed[name].shape[2] == 0 for name in self._past)
        runner = prefill if empty else decode
        with self._lock:
            found = runner(**{name: np.asarray(feed[name], dtype) for name, dtype in self._fed[runner]})
        return [found[out.name] for out in self._outputs]

    def _invoke(self, feed: Feed) -> list[np.ndarray]:
        if self._steps is not None:
            return self._step(feed)
        with self._lock:
            self._resize(feed)
            for info in self._inputs:
                x = feed[info.name]
                value = quantize(x, info) if info.quantized else np.asarray(x, dtype=info.dtype)
                self._interpreter.set_tensor(self._index[info.name], value)
            self._interpreter.invoke()
            results = []
            for index, out in zip(self._output_indices, self._outputs, strict=True):
                value = self._interpreter.get_tensor(index)
                results.append(dequantize(value, out) if out.quantized else value.copy())
        return results


def _decoder_steps(interpreter: Any) -> tuple[Any, Any] | None:
    """A decoder's ``prefill`` and ``decode`` signature runners; None for other models."""
    if set(interpreter.get_signature_list()) != {"prefill", "decode"}:
        return None
    return interpreter.get_signature_runner("prefill"), interpreter.get_signature_runner("decode")


def _signature_names(interpreter: Any) -> dict[int, str]:
    """Tensor index to the name the model's signature gives it; {} without a signature.
    A SavedModel's TFLite tensors are called ``serving_default_ids:0``; its signature says ``ids``."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return {}
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    details = {**runner.get_input_details(), **runner.get_output_details()}
    return {int(detail["index"]): name for name, detail in details.items()}


def _tensor_info(detail: dict[str, Any], names: dict[int, str]) -> TensorInfo:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    scale, zero_point = detail["quantization"]
    quantized = scale != 0.0 and np.issubdtype(detail["dtype"], np.integer)
    return TensorInfo(
        name=names.get(int(detail["index"]), detail["name"]),
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
