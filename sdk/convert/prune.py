"""The optional first step of a conversion: prune (and fine-tune) a Keras model, gated on
the evaluation labels like any other loss of accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.candidate import max_accuracy_drop
from edgekit.convert.manifest import default_name
from edgekit.convert.options import ConvertOptions
from edgekit.convert.plan import Inputs
from edgekit.converters.source import load_source
from edgekit.data import Dataset, load_dataset
from edgekit.errors import AccuracyBudgetError, DataError, InputError, ModelFormatError
from edgekit.manifest import Compression
from edgekit.measure import top1
from edgekit.report import Reporter


def prune_source(
    options: ConvertOptions, inputs: Inputs, folder: Path, reporter: Reporter
) -> tuple[Path, Compression]:
    """Prune ``options.model`` by ``options.prune``; the pruned model is saved in ``folder``."""
    from edgekit.compress import nonzero_parameters, parameter_count, prune

    if inputs.kind not in ("keras", "h5"):
        raise ModelFormatError(
            f"--prune works on Keras models (.keras, .h5), and {options.model} is {inputs.kind}"
        )
    if options.tokenizer is not None:
        raise InputError(
            "--prune removes convolution channels and dense units; pruning a text model's attention "
            "heads and feed-forward neurons is not supported yet: convert it without --prune"
        )
    train = _training_data(options, reporter)
    ratio = options.prune or 0.0
    with load_source(options.model, options.input_shape, inputs.kind) as source:
        model = source.keras_model
        before = parameter_count(model)
        pruned = prune(
            model, ratio, train, structured=options.prune_mode == "structured",
            epochs=options.prune_epochs, reporter=reporter,
        )  # fmt: skip
        accuracy = _accuracies(model, pruned, inputs.evaluation)
    _gate(options, *accuracy)
    path = folder / f"{default_name(options.model)}.keras"
    pruned.save(path)
    record = Compression(
        method=options.prune_mode,  # type: ignore[arg-type]
        sparsity=ratio,
        parameters_before=before,
        parameters_after=nonzero_parameters(pruned),
        fine_tune_epochs=options.prune_epochs if train is not None else 0,
        train_samples=len(train[0]) if train is not None else 0,
        top1_before=accuracy[0],
        top1_after=accuracy[1],
    )
    reporter.note(f"pruned {options.prune_mode}: {before:,} → {record.parameters_after:,} parameters")
    return path, record


def _training_data(options: ConvertOptions, reporter: Reporter) -> tuple[np.ndarray, np.ndarray] | None:
    if options.train_data is None:
        reporter.warn("--prune without --train-data: pruned once, not fine-tuned; accuracy will suffer")
        return None
    data = load_dataset(options.train_data, "training")
    if data.y is None:
        raise DataError(
            f"training data {options.train_data}: --prune fine-tunes on labels; save it with y=labels"
        )
    return keras_inputs(data), data.y


def _accuracies(model: Any, pruned: Any, evaluation: Dataset | None) -> tuple[float | None, float | None]:
    """Top-1 before and after pruning, when the evaluation data has labels."""
    if evaluation is None or evaluation.y is None:
        return None, None
    return _keras_top1(model, evaluation), _keras_top1(pruned, evaluation)


def _keras_top1(model: Any, data: Dataset) -> float:
    assert data.y is not None
    return top1(model.predict(keras_inputs(data), batch_size=256, verbose=0), data.y)


def keras_inputs(data: Dataset) -> Any:
    """What Keras takes: the array of a single-input model, else the arrays by input name."""
    arrays = data.samples.arrays
    return next(iter(arrays.values())) if len(arrays) == 1 else dict(arrays)


def _gate(options: ConvertOptions, before: float | None, after: float | None) -> None:
    if before is None or after is None:
        return
    max_drop = max_accuracy_drop(options.profile, options.max_accuracy_drop)
    if before - after > max_drop and not options.allow_accuracy_drop:
        raise AccuracyBudgetError(
            f"pruning loses too much accuracy: top-1 {before:.2f}% → {after:.2f}% "
            f"(max drop {max_drop:g} points); prune less, fine-tune longer (--prune-epochs), "
            "or pass --allow-accuracy-drop"
        )
