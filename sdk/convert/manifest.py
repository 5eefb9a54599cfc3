"""The manifest a conversion writes, reference statistics for drift included."""

from __future__ import annotations

import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.bundle import FORMAT_VERSION, Manifest, Preprocessing, ReferenceStats, Source
from edgekit.convert.candidate import Candidate
from edgekit.convert.options import ConvertOptions
from edgekit.converters import Converter
from edgekit.converters.source import SourceModel
from edgekit.data import Dataset
from edgekit.measure import run_batched
from edgekit.report import Reporter
from edgekit.runtime.telemetry.stats import reference_stats


def build_manifest(
    options: ConvertOptions,
    source: SourceModel,
    converters: list[Converter],
    chosen: list[Candidate],
    calibration: Dataset | None,
    labels: tuple[str, ...] | None,
    extra: dict[str, Any],
) -> Manifest:
    """``extra``: further manifest fields (reference, compression, fit's candidate table)."""
    input_range = None
    if calibration is not None:
        input_range = (float(calibration.x.min()), float(calibration.x.max()))
    return Manifest(
        format_version=FORMAT_VERSION,
        name=options.name or default_name(options.model),
        version=options.version,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=Source(
            file=source.path.name, kind=source.kind, sha256=source.sha256, size_bytes=source.size_bytes
        ),
        profile=options.profile.model_dump(mode="json"),
        artifacts=tuple(c.entry for c in chosen),
        preprocessing=Preprocessing(layout=layout(source), input_range=input_range),
        labels=labels,
        tools={
            "edgekit": edgekit.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            **{k: v for converter in converters for k, v in converter.tool_versions().items()},
        },
        **extra,
    )


def reference(
    source: SourceModel, data: Dataset | None, reporter: Reporter, outputs: np.ndarray | None = None
) -> ReferenceStats | None:
    """The drift baseline for telemetry: the conversion data's input features and the float
    model's predicted classes on it (``outputs``, when the caller has them already)."""
    if data is None or source.kind == "tflite" or len(source.outputs) != 1:
        return None
    if outputs is None:
        with reporter.progress("Reference statistics", len(data)) as advance:
            outputs = run_batched(source.predict, data.x, advance)
    return reference_stats(data.x, outputs, layout(source))


def layout(source: SourceModel) -> str | None:
    shape = source.input.shape
    if len(shape) != 4:
        return None
    if source.kind != "onnx":
        return "NHWC"  # TensorFlow's convention
    if shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3) and shape[1] not in (1, 3):
        return "NHWC"
    return None


def default_name(model: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.stem if model.is_file() else model.name)
    return name.strip("-.") or "model"
