"""Measurements of an artifact on this host: accuracy against float, latency, peak memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.classes import compare_classes
from edgekit.errors import ConversionError
from edgekit.runtime.backends import Backend, zeros_feed
from edgekit.samples import Feed

EVAL_BATCH = 256


def host_latency_ms(
    backend: Backend, feed: Feed | None = None, budget_s: float = 0.5, max_runs: int = 200
) -> float:
    """Median batch-1 latency on ``feed`` (default: zeros) after a warm-up, within a small time budget."""
    sample = feed if feed is not None else zeros_feed(backend.inputs)
    for _ in range(3):
        backend.run(sample)
    timings: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(timings) < max_runs and (len(timings) < 5 or time.perf_counter() < deadline):
        started = time.perf_counter()
        backend.run(sample)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def peak_memory_bytes(fmt: str, content: bytes, feed: Feed | None = None) -> int:
    """Peak resident memory that loading the artifact and invoking it on ``feed`` (default:
    zeros, dynamic dims as 1) adds, in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory(prefix="edgekit-probe-") as tmp:
        args = [sys.executable, "-m", "edgekit.runtime.probe", fmt]
        if feed is not None:
            np.savez(Path(tmp) / "feed.npz", **feed)
            args.append(str(Path(tmp) / "feed.npz"))
        proc = subprocess.run(args, input=content, capture_output=True, env=env, timeout=600, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        raise ConversionError(f"measuring the artifact's memory failed: {lines[-1]}")
    return int(json.loads(proc.stdout.decode().strip().splitlines()[-1])["peak_bytes"])


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent: how often the largest output is the label."""
    scores = np.asarray(outputs).reshape(len(outputs), -1)
    return float(np.mean(scores.argmax(axis=1) == labels) * 100)


def similarity(float_out: np.ndarray, artifact_out: np.ndarray) -> dict[str, float]:
    """Per-sample top-1 agreement (%), mean cosine and max abs error of two outputs."""
    f = float_out.reshape(len(float_out), -1).astype(np.float64)
    a = artifact_out.reshape(len(artifact_out), -1).astype(np.float64)
    agreement = float(np.mean(f.argmax(axis=1) == a.argmax(axis=1)) * 100)
    norms = np.linalg.norm(f, axis=1) * np.linalg.norm(a, axis=1)
    both_zero = (norms == 0) & ~f.any(axis=1) & ~a.any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sample = np.where(both_zero, 1.0, np.sum(f * a, axis=1) / norms)
    return {
        "agreement": agreement,
        "cosine": float(np.mean(np.nan_to_num(per_sample, nan=0.0))),
        "max_abs_error": float(np.max(np.abs(f - a))) if f.size else 0.0,
    }


def compare_outputs(
    float_out: np.ndarray, artifact_out: np.ndarray, labels: np.ndarray | None, gate_metric: str = "top1"
) -> dict[str, Any]:
    """Top-1 accuracy (or with ``gate_metric`` "macro-f1", macro-F1 in percent) of both, with
    labels, and then each one's per-class report; else agreement. Plus cosine and max abs error."""
    result: dict[str, Any] = similarity(float_out, artifact_out)
    if labels is None:
        result.update(metric="agreement", float_model=100.0, artifact=result["agreement"])
    elif gate_metric == "macro-f1":
        classes = compare_classes(float_out, artifact_out, labels)
        result.update(metric="macro-f1", classes=classes, float_model=100 * classes.float_model.macro.f1,
                      artifact=100 * classes.artifact.macro.f1)  # fmt: skip
    else:
        result.update(metric="top1", float_model=top1(float_out, labels), artifact=top1(artifact_out, labels))
        if np.asarray(float_out).reshape(len(float_out), -1).shape[1] > 1:
            result["classes"] = compare_classes(float_out, artifact_out, labels)
    result["drop"] = result["float_model"] - result["artifact"]
    return result


def compare_all(
    float_outs: dict[str, np.ndarray],
    artifact_outs: dict[str, np.ndarray],
    primary: str,
    labels: np.ndarray | None,
    gate_metric: str = "top1",
) -> dict[str, Any]:
    """``compare_outputs`` on the ``primary`` output; with several outputs, every output's
    similarity under ``outputs``."""
    result = compare_outputs(float_outs[primary], artifact_outs[primary], labels, gate_metric)
    result["output"] = primary
    if len(float_outs) > 1:
        result["outputs"] = {name: similarity(out, artifact_outs[name]) for name, out in float_outs.items()}
    return result
