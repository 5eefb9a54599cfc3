"""Latency of ``Model.predict`` on this device, optionally against the bare engine it wraps."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgekit.runtime.backends.onnx import import_onnxruntime
from edgekit.runtime.backends.tflite import import_interpreter
from edgekit.runtime.model import Model


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_per_s: float

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ms = np.asarray(seconds) * 1000
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(len(ms) / max(sum(seconds), 1e-12)))


@dataclass(frozen=True)
class BenchResult:
    runs: int
    load_ms: float
    peak_rss_bytes: int
    edgekit: Timing
    bare: Timing | None
    overhead_ratio: float | None
    overhead_us: float | None
    latency_budget_ms: float | None
    within_latency_budget: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_input(model: Model, batch: int = 1) -> np.ndarray:
    shape = tuple(
        batch if i == 0 and d is None else (d or 1) for i, d in enumerate(model.info.inputs[0].shape)
    )
    return np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)


def bench(model: Model, runs: int = 500, warmup: int = 20, compare_bare: bool = False) -> BenchResult:
    """Time ``predict`` ``runs`` times; with ``compare_bare``, interleave the bare engine."""
    x = sample_input(model)
    calls: list[Callable[[], Any]] = [lambda: model.predict(x)]
    if compare_bare:
        calls.append(bare_call(model, x))
    for _ in range(warmup):
        for call in calls:
            call()
    timings: list[list[float]] = [[] for _ in calls]
    for run in range(runs):
        order = list(zip(calls, timings, strict=True))
        for call, record in order if run % 2 == 0 else order[::-1]:  # no one always goes first
            started = time.perf_counter()
            call()
            record.append(time.perf_counter() - started)
    ours = Timing.of(timings[0])
    bare = Timing.of(timings[1]) if compare_bare else None
    budget = model.manifest.profile.get("budget", {}).get("latency_ms")
    return BenchResult(
        runs=runs,
        load_ms=model.info.load_ms,
        peak_rss_bytes=_peak_rss_bytes(),
        edgekit=ours,
        bare=bare,
        overhead_ratio=ours.p50_ms / bare.p50_ms if bare else None,
        overhead_us=(ours.p50_ms - bare.p50_ms) * 1000 if bare else None,
        latency_budget_ms=budget,
        within_latency_budget=None if budget is None else ours.p90_ms <= budget,
    )


def bare_call(model: Model, x: np.ndarray) -> Callable[[], Any]:
    """The same artifact in the bare engine, doing only what the engine itself needs."""
    content = model.artifact_bytes
    if model.info.format == "onnx":
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = model.info.threads
        session = ort.InferenceSession(content, sess_options=options, providers=[model.info.provider])
        feed = {session.get_inputs()[0].name: x}
        return lambda: session.run(None, feed)
    interpreter_class, _ = import_interpreter()
    interpreter = interpreter_class(model_content=content, num_threads=model.info.threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    scale, zero_point = detail["quantization"]
    tensor = x if not scale else np.clip(np.round(x / scale) + zero_point, -128, 127).astype(detail["dtype"])
    if list(detail["shape"]) != list(tensor.shape):
        interpreter.resize_tensor_input(detail["index"], list(tensor.shape))
        interpreter.allocate_tensors()
    outputs = [d["index"] for d in interpreter.get_output_details()]

    def run() -> list[Any]:
        interpreter.set_tensor(detail["index"], tensor)
        interpreter.invoke()
        return [interpreter.get_tensor(i) for i in outputs]

    return run


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
