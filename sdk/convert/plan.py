"""Planning a conversion: which formats and precisions to try, and the data checks.

Everything here runs before any conversion starts, so a mistake costs a second, not a
conversion.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.convert.candidate import max_accuracy_drop
from edgekit.convert.data import Dataset, check_dataset, feature_spread_warning, load_dataset
from edgekit.convert.options import ConvertOptions
from edgekit.convert.state import named_pairs
from edgekit.converters import Converter, converter_for, ready_made
from edgekit.converters.source import SourceModel, TensorSpec
from edgekit.core.errors import DataError, EdgekitError, InputError, ModelFormatError
from edgekit.core.formats import BOTH, FORMATS, SourceKind
from edgekit.views.progress import Reporter


@dataclass(frozen=True)
class Inputs:
    """The files a run reads, each read once: the model's kind, the data and the labels."""

    kind: SourceKind
    calibration: Dataset | None
    evaluation: Dataset | None
    labels: tuple[str, ...] | None
    primary: str | None = None
    """Once checked: the output the gate and telemetry look at, None when none stands out."""

    @classmethod
    def read(cls, options: ConvertOptions, kind: SourceKind) -> Inputs:
        labels = read_labels(options.labels)

        def load(path: Path | None, role: str) -> Dataset | None:
            return load_dataset(path, role, options.label_column) if path else None

        calibration = load(options.calibration, "calibration")
        return cls(kind, calibration, load(options.evaluation, "evaluation"), labels)


def plan(options: ConvertOptions, kind: str, reporter: Reporter) -> list[tuple[Converter, list[str]]]:
    """The converters to run, each with the precisions to try in order."""
    converters = [converter_for(fmt) for fmt in choose_formats(options, kind, reporter)]
    if ready_made(kind):
        return [(converters[0], [ready_made_precision(options)])]
    return [(converter, choose_precisions(options, converter, reporter)) for converter in converters]


def choose_formats(options: ConvertOptions, kind: str, reporter: Reporter) -> list[str]:
    registry = Converter.registry
    wanted: list[str]
    if options.format == BOTH:
        wanted = [fmt for fmt in FORMATS if fmt in registry]
    elif options.format:
        if options.format not in registry:
            raise InputError(
                f"unknown format '{options.format}'; known formats: {', '.join(sorted(registry))}"
            )
        wanted = [options.format]
    else:
        for fmt in options.profile.runtime.formats:
            if fmt in registry and kind in registry[fmt].source_kinds:
                return [fmt]
            reporter.note(f"profile prefers {fmt}, which cannot be made from a {kind} model; trying the next")
        raise InputError(
            f"profile {options.profile.id} lists formats {list(options.profile.runtime.formats)}, "
            f"none of which can be made from a {kind} model; pass --format"
        )
    for name in wanted:
        if kind not in registry[name].source_kinds:
            raise InputError(
                f"--format {name} cannot be made from a {kind} model; an ONNX model converts to --format onnx"
            )
    return wanted


def ready_made_precision(options: ConvertOptions) -> str:
    from edgekit.converters.tflite import detect_precision

    try:
        precision = detect_precision(options.model.read_bytes())
    except EdgekitError as exc:
        raise ModelFormatError(f"{options.model}: {exc}") from exc
    if options.precision not in ("auto", precision):
        raise InputError(
            f"{options.model} is already {precision}; a ready-made TFLite file ships as it is, "
            "so use --precision auto or convert from the original model"
        )
    return precision


def choose_precisions(options: ConvertOptions, converter: Converter, reporter: Reporter) -> list[str]:
    fmt = converter.format
    if options.precision != "auto":
        precision = converter.check_precision(options.precision)
        refusal = converter.refusal(precision, options.profile)
        if refusal is not None:
            raise InputError(f"--precision {precision} on {options.profile.id}: {refusal}")
        if precision in converter.calibrated_precisions and options.calibration is None:
            raise DataError(
                f"--precision {precision} needs calibration data: pass --calibration "
                "FILE.npz with about 100-500 representative inputs"
            )
        return [precision]
    order = [
        p for p in options.profile.runtime.precisions_for(fmt)
        if p in converter.precisions and converter.refusal(p, options.profile) is None
    ]  # fmt: skip
    if options.calibration is None:
        skipped = [p for p in order if p in converter.calibrated_precisions]
        if skipped:
            reporter.note(f"{fmt}: skipping {', '.join(skipped)}: no --calibration data given")
        order = [p for p in order if p not in converter.calibrated_precisions]
    if not order:
        raise DataError(f"every {fmt} precision of profile {options.profile.id} needs --calibration data")
    return list(order)


def read_labels(path: Path | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"labels file {path}: cannot be read ({exc})") from exc
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise InputError(f"labels file {path}: empty; give one class name per line")
    return labels


def check_data(source: SourceModel, inputs: Inputs, options: ConvertOptions) -> tuple[Inputs, list[str]]:
    """The data checked against the model's inputs (and converted to their dtypes); warnings."""
    warnings: list[str] = []
    checked: list[Dataset | None] = []
    for data, role in ((inputs.calibration, "calibration"), (inputs.evaluation, "evaluation")):
        if data is not None:
            data, found = check_dataset(data, source.inputs, role, options.force)
            warnings.extend(found)
        checked.append(data)
    for name, x in checked[0].samples.arrays.items() if checked[0] else ():
        where = f"calibration data {options.calibration}" + (
            f", input '{name}'" if len(source.inputs) > 1 else ""
        )
        spread = feature_spread_warning(x, where)
        if spread is not None:
            warnings.append(spread)
    primary = primary_output(source, options.eval_output, checked[1] is not None, options.state)
    classes = next(o.shape[-1] for o in source.outputs if o.name == primary) if primary else None
    labels = inputs.labels
    if labels is not None and classes is not None and classes != len(labels):
        raise InputError(f"labels file {options.labels}: {len(labels)} labels for {classes} model outputs")
    coarse = _coarser_than_the_limit(checked[1], options)
    if coarse is not None:
        warnings.append(coarse)
    if options.calibration and options.evaluation and _same_file(options.calibration, options.evaluation):
        warnings.append(
            f"--calibration and --eval are the same file ({options.evaluation}): int8 is then judged on the "
            "data it was calibrated on, which flatters it; hold out evaluation data the calibration never saw"
        )
    return Inputs(inputs.kind, checked[0], checked[1], labels, primary), warnings


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


def _coarser_than_the_limit(evaluation: Dataset | None, options: ConvertOptions) -> str | None:
    """A warning when one evaluation sample weighs more than the accuracy limit: with 171
    samples one is 0.58 points, and a 0.1-point limit then allows no change at all."""
    if evaluation is None or not len(evaluation):
        return None
    step = 100 / len(evaluation)
    limit = max_accuracy_drop(options.profile, options.max_accuracy_drop)
    if step <= limit:
        return None
    return (
        f"with {len(evaluation)} evaluation samples one sample is {step:.2f} points of top-1, more than "
        f"the {limit:g}-point accuracy limit: any changed prediction fails the gate; give at least "
        f"{math.ceil(100 / limit)} samples, or a larger --max-accuracy-drop"
    )


_SCORE_NAME = re.compile(r"score|prob|logit|class|cls|label|pred", re.IGNORECASE)


def primary_output(
    source: SourceModel, wanted: str | None, required: bool, state: tuple[tuple[str, str], ...] = ()
) -> str | None:
    """The output named by ``--eval-output``; else the only one that is not a recurrent state
    (``--state``, or one its name shows); else the only one shaped like class scores
    (batch, classes) or a sequence of them, or the only such one named like scores (a
    detector's boxes are shaped (batch, 4)); else, when no output is shaped like class
    scores (a detector's score and box maps), the first, and the gate then judges every
    output by its cosine. None, or with ``required`` an error, when several class-shaped
    outputs leave it open."""
    names = [spec.name for spec in source.outputs]
    if wanted is not None:
        if wanted not in names:
            raise InputError(
                f"--eval-output {wanted}: the model has no such output (outputs: {', '.join(names)})"
            )
        return wanted
    states = {output for output, _ in state} or {pair.output for pair in named_pairs(source)}
    candidates = [spec for spec in source.outputs if spec.name not in states] or list(source.outputs)
    if len(candidates) == 1:
        return candidates[0].name
    scores = [spec.name for spec in candidates if _class_shaped(spec)]
    named = [name for name in scores if _SCORE_NAME.search(name)]
    for found in (scores, named):
        if len(found) == 1:
            return found[0]
    if not scores:
        return candidates[0].name
    if required:
        raise InputError(
            f"the model has {len(names)} outputs ({', '.join(names)}); name the one --eval checks "
            "top-1 or agreement on with --eval-output NAME (every output's cosine is reported)"
        )
    return None


def _class_shaped(spec: TensorSpec) -> bool:
    """(batch, classes) or (batch, positions, classes), float."""
    if not spec.dtype.startswith("float") or len(spec.shape) not in (2, 3):
        return False
    return (spec.shape[-1] or 0) >= 2 and (len(spec.shape) == 2 or (spec.shape[1] or 2) > 1)


def data_shapes(
    source: SourceModel, inputs: Inputs, reporter: Reporter
) -> tuple[tuple[str, tuple[int | None, ...]], ...]:
    """TensorFlow sources: the inputs whose non-batch dims the model leaves dynamic, with
    those dims as the data gives them (ONNX sources are fixed in the converter, for int8)."""
    if source.kind not in ("keras", "h5", "saved_model"):
        return ()
    dynamic = [spec for spec in source.inputs if any(d is None for d in spec.shape[1:])]
    data, role = (
        (inputs.calibration, "calibration") if inputs.calibration else (inputs.evaluation, "evaluation")
    )
    if dynamic and data is None:
        reporter.warn(
            f"input '{dynamic[0].name}' has dynamic dims {dynamic[0].describe()}, which the TFLite and ONNX "
            "engines may fail to prepare; pass --calibration or --eval data shaped as the device feeds it"
        )
        return ()
    shapes = []
    feed, _ = next(data.samples.batches(1)) if data else ({}, 0)
    for spec in dynamic:
        got = np.shape(feed[spec.name])
        shape = (None, *got[1:])
        shapes.append((spec.name, shape))
        dims = ", ".join(str(d) for d in shape[1:])
        reporter.note(f"fixed the dynamic dims of input '{spec.name}' from the {role} data: ({dims})")
    return tuple(shapes)
