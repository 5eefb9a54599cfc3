"""The manifest a conversion writes, reference statistics for drift included."""

from __future__ import annotations

import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.convert.candidate import Candidate
from edgekit.convert.data import Dataset
from edgekit.convert.options import ConvertOptions
from edgekit.converters import Converter
from edgekit.converters.source import SourceModel
from edgekit.core.manifest import FORMAT_VERSION, Manifest, Preprocessing, ReferenceStats, Source
from edgekit.core.samples import run_samples
from edgekit.core.text import TEXT_INPUT, TextEncoder
from edgekit.core.validation import updated
from edgekit.runtime.telemetry.stats import reference_stats
from edgekit.views.progress import Reporter


def build_manifest(
    options: ConvertOptions,
    source: SourceModel,
    converters: list[Converter],
    chosen: list[Candidate],
    data: tuple[Dataset | None, Dataset | None],
    labels: tuple[str, ...] | None,
    extra: dict[str, Any],
) -> Manifest:
    """``data``: the calibration and the evaluation data. ``extra``: further manifest fields
    (reference, primary output, state, compression, fit's candidate table)."""
    calibration, evaluation = data
    input_range = None
    floats = [a for a in calibration.samples.arrays.values() if a.dtype.kind == "f"] if calibration else []
    if floats:
        input_range = (min(float(a.min()) for a in floats), max(float(a.max()) for a in floats))
    observed = calibration or evaluation
    ranges = (
        {name: (float(a.min()), float(a.max())) for name, a in observed.samples.arrays.items() if a.size}
        if observed
        else None
    )
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
        preprocessing=Preprocessing(
            layout=layout(source.inputs[0].shape, source.kind), input_range=input_range, ranges=ranges
        ),
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
    source: SourceModel,
    data: Dataset | None,
    primary: str | None,
    reporter: Reporter,
    outputs: dict[str, np.ndarray] | None = None,
    encoder: TextEncoder | None = None,
) -> ReferenceStats | None:
    """The drift baseline for telemetry: the conversion data's features of the first batched
    float input (a text model's: its token counts and unknown-token rates, input "text"),
    and the float model's ``primary`` output on it (``outputs``, by name, when the caller has
    them already)."""
    if data is None or source.kind == "tflite" or primary is None:
        return None
    name = TEXT_INPUT if encoder is not None else drift_input(source, data)
    if name is None:
        return None
    if outputs is None:
        with reporter.progress("Reference statistics", len(data)) as advance:
            outs = run_samples(source.predict, data.samples, advance)
        outputs = {spec.name: out for spec, out in zip(source.outputs, outs, strict=True)}
    if encoder is not None:
        stats = reference_stats(encoder.features(data.samples.arrays), outputs[primary], None)
        return updated(stats, input=TEXT_INPUT)
    spec = next(s for s in source.inputs if s.name == name)
    stats = reference_stats(data.samples.arrays[name], outputs[primary], layout(spec.shape, source.kind))
    return updated(stats, input=name) if len(source.inputs) > 1 else stats


def drift_input(source: SourceModel, data: Dataset) -> str | None:
    """The input telemetry bins: the first float input batched along axis 0."""
    return next(
        (
            s.name
            for s in source.inputs
            if s.dtype.startswith("float") and s.name not in data.samples.per_call
        ),
        None,
    )


def layout(shape: tuple[int | None, ...], kind: str) -> str | None:
    if len(shape) != 4:
        return None
    if kind != "onnx":
        return "NHWC"  # TensorFlow's convention
    if shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3) and shape[1] not in (1, 3):
        return "NHWC"
    return None


def default_name(model: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.stem if model.is_file() else model.name)
    return name.strip("-.") or "model"
