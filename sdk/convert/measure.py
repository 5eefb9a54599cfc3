"""Measurements of an artifact on this host: accuracy against float, latency, peak memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgekit.core.classes import ClassComparison, class_report, compare_classes
from edgekit.core.errors import ConversionError, DataError
from edgekit.core.manifest import GateMetric, Level, Metric, OutputSimilarity
from edgekit.core.samples import Feed
from edgekit.core.spans import BIO_TAG, compare_spans
from edgekit.core.text import IGNORED
from edgekit.core.validation import updated
from edgekit.runtime.backends import Backend, backend_for, zeros_feed

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


class MemoryProbe:
    """Peak resident memory that loading an artifact and invoking it on ``feed`` (default:
    zeros, dynamic dims as 1) adds, in a fresh process. The process starts before the
    artifact exists, so that its imports overlap the conversion; ``peak_bytes`` hands it the
    artifact. The child imports from the same path as this process, and the module that
    defines the format's backend."""

    def __init__(self, fmt: str, feed: Feed | None = None) -> None:
        path = os.pathsep.join(entry for entry in sys.path if entry)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
        self._folder = tempfile.TemporaryDirectory(prefix="edgekit-probe-")
        args = [sys.executable, "-m", "edgekit.runtime.probe", fmt, backend_for(fmt).__module__]
        if feed is not None:
            np.savez(Path(self._folder.name) / "feed.npz", **feed)  # type: ignore[arg-type]  # numpy's stub: **kwds vs allow_pickle
            args.append(str(Path(self._folder.name) / "feed.npz"))
        self._process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )

    def peak_bytes(self, content: bytes) -> int:
        try:
            out, err = self._process.communicate(content, timeout=600)
        finally:
            self.close()
        if self._process.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines() or ["no output"]
            raise ConversionError(f"measuring the artifact's memory failed: {lines[-1]}")
        return int(json.loads(out.decode().strip().splitlines()[-1])["peak_bytes"])

    def close(self) -> None:
        """Stop the process if it still waits, and remove its files."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()
        self._folder.cleanup()


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent: how often the largest output is the label. Labels per
    token (samples, tokens): per scored word, over the last axis."""
    if np.ndim(labels) == 2:
        scored = labels != IGNORED
        return float(np.mean(np.asarray(outputs).argmax(axis=-1)[scored] == labels[scored]) * 100)
    scores = np.asarray(outputs).reshape(len(outputs), -1)
    return float(np.mean(scores.argmax(axis=1) == labels) * 100)


@dataclass(frozen=True)
class Comparison:
    """The float model against the artifact on one output, as the gate reads it."""

    metric: Metric
    float_model: float
    """Top-1 % or macro-F1 % of the float model with labels; 100 without."""
    artifact: float
    """The artifact's, on the same scale: its top-1 %, macro-F1 % or agreement %."""
    similarity: OutputSimilarity
    level: Level = "sample"
    classes: ClassComparison | None = None
    output: str | None = None
    outputs: dict[str, OutputSimilarity] | None = None
    """Several outputs: each one's similarity."""

    @property
    def drop(self) -> float:
        """Percentage points the artifact lost."""
        return self.float_model - self.artifact


def similarity(float_out: np.ndarray, artifact_out: np.ndarray) -> OutputSimilarity:
    """Top-1 agreement (%), mean cosine and max abs error of two outputs. Agreement is per
    sample, or per position for a sequence of class scores (samples, positions, classes),
    such as a text recognizer's (1, 40, 6625): one argmax over all of it means nothing."""
    f = float_out.reshape(len(float_out), -1).astype(np.float64)
    a = artifact_out.reshape(len(artifact_out), -1).astype(np.float64)
    if is_sequence(float_out):
        agreement = float(np.mean(float_out.argmax(axis=-1) == artifact_out.argmax(axis=-1)) * 100)
    else:
        agreement = float(np.mean(f.argmax(axis=1) == a.argmax(axis=1)) * 100)
    norms = np.linalg.norm(f, axis=1) * np.linalg.norm(a, axis=1)
    both_zero = (norms == 0) & ~f.any(axis=1) & ~a.any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sample = np.where(both_zero, 1.0, np.sum(f * a, axis=1) / norms)
    return OutputSimilarity(
        agreement=agreement,
        cosine=float(np.mean(np.nan_to_num(per_sample, nan=0.0))),
        max_abs_error=float(np.max(np.abs(f - a))) if f.size else 0.0,
    )


def is_sequence(output: np.ndarray) -> bool:
    """Class scores per position: (samples, positions > 1, classes > 1)."""
    return np.ndim(output) == 3 and np.shape(output)[1] > 1 and np.shape(output)[2] > 1


def _level(output: np.ndarray) -> Level:
    """What agreement means for ``output``: per sample for class scores (samples, classes),
    per position for a sequence of them, nothing for anything else (a detector's score or
    box map, whose largest value says nothing about a class): there only cosine judges."""
    if is_sequence(output):
        return "position"
    return "sample" if np.ndim(output) <= 2 else "map"


def compare_outputs(
    float_out: np.ndarray,
    artifact_out: np.ndarray,
    labels: np.ndarray | None,
    gate_metric: GateMetric = "top1",
    names: tuple[str, ...] | None = None,
) -> Comparison:
    """Top-1 accuracy (or with ``gate_metric`` "macro-f1", macro-F1 in percent) of both, with
    labels, and then each one's per-class report; else agreement. Plus cosine and max abs error.
    Labels per token: see ``compare_words``."""
    if labels is not None and np.ndim(labels) == 2:
        return compare_words(float_out, artifact_out, labels, gate_metric, names)
    close = similarity(float_out, artifact_out)
    if labels is None:
        return Comparison("agreement", 100.0, close.agreement, close, level=_level(float_out))
    if gate_metric == "macro-f1":
        classes = compare_classes(float_out, artifact_out, labels)
        return Comparison("macro-f1", 100 * classes.float_model.macro.f1, 100 * classes.artifact.macro.f1,
                          close, classes=classes)
    several = np.asarray(float_out).reshape(len(float_out), -1).shape[1] > 1
    per_class = compare_classes(float_out, artifact_out, labels) if several else None
    return Comparison("top1", top1(float_out, labels), top1(artifact_out, labels), close, classes=per_class)


def compare_words(
    float_out: np.ndarray, artifact_out: np.ndarray, labels: np.ndarray, gate_metric: GateMetric,
    names: tuple[str, ...] | None,
) -> Comparison:
    """Token classification, scored at each word's first token (``labels`` holds ``IGNORED``
    elsewhere): top-1 per word, and the report per entity span as seqeval counts them when
    the tag names are BIO/IOBES tags, else per tag. "macro-f1" is the report's macro-F1."""
    scored = labels != IGNORED
    truth, tags = labels[scored], int(np.shape(float_out)[-1])
    if truth.size and (truth.min() < 0 or truth.max() >= tags):
        raise DataError(f"evaluation tags run from {truth.min()} to {truth.max()}; the model has {tags} tags")
    float_words, artifact_words = (out.argmax(axis=-1)[scored] for out in (float_out, artifact_out))
    if names is not None and all(BIO_TAG.match(name) for name in names):
        classes = compare_spans(labels, float_out, artifact_out, names)
    else:
        classes = ClassComparison(float_model=class_report(truth, float_words, tags),
                                  artifact=class_report(truth, artifact_words, tags))
    close = similarity(float_out, artifact_out)
    close = updated(close, agreement=float(np.mean(float_words == artifact_words) * 100))
    if gate_metric == "macro-f1":
        scores = (100 * classes.float_model.macro.f1, 100 * classes.artifact.macro.f1)
    else:
        scores = (float(np.mean(float_words == truth) * 100), float(np.mean(artifact_words == truth) * 100))
    return Comparison(gate_metric, *scores, close, level="word", classes=classes)


def compare_all(
    float_outs: dict[str, np.ndarray],
    artifact_outs: dict[str, np.ndarray],
    primary: str,
    labels: np.ndarray | None,
    gate_metric: GateMetric = "top1",
    names: tuple[str, ...] | None = None,
) -> Comparison:
    """``compare_outputs`` on the ``primary`` output; with several outputs, every output's
    similarity under ``outputs``."""
    result = compare_outputs(float_outs[primary], artifact_outs[primary], labels, gate_metric, names)
    several = None
    if len(float_outs) > 1:
        several = {name: similarity(out, artifact_outs[name]) for name, out in float_outs.items()}
    return replace(result, output=primary, outputs=several)
