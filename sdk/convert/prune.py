"""The optional first step of a conversion: prune (and fine-tune) a Keras model, gated on
the evaluation labels like any other loss of accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.compress.pruning import KerasInputs
from edgekit.compress.transformer import is_transformer
from edgekit.convert.candidate import max_accuracy_drop
from edgekit.convert.data import Dataset, load_dataset
from edgekit.convert.manifest import default_name
from edgekit.convert.measure import top1
from edgekit.convert.options import ConvertOptions
from edgekit.convert.plan import Inputs
from edgekit.convert.text import model_inputs, text_encoder, token_task
from edgekit.converters.source import load_source
from edgekit.core.errors import AccuracyBudgetError, DataError, ModelFormatError
from edgekit.core.manifest import Compression
from edgekit.core.text import TextEncoder
from edgekit.core.validation import updated
from edgekit.views.progress import Reporter

if TYPE_CHECKING:
    import keras



def prune_source(
    options: ConvertOptions, inputs: Inputs, folder: Path, reporter: Reporter
) -> tuple[Path, Compression]:
    """Prune ``options.model`` by ``options.prune``; the pruned model is saved in ``folder``.
    A transformer (a model with MultiHeadAttention) loses attention heads and feed-forward
    neurons in structured mode, and is distilled from the unpruned model."""
    if inputs.kind not in ("keras", "h5"):
        raise ModelFormatError(
            f"--prune works on Keras models (.keras, .h5), and {options.model} is {inputs.kind}"
        )
    with load_source(options.model, options.input_shape, inputs.kind) as source:
        found = text_encoder(source, options)
        encoder = found[0] if found else None
        tokens = encoder is not None and token_task(source, options)
        data = _Data(
            _training_data(options, encoder, inputs.labels, reporter, tokens),
            model_inputs(inputs.evaluation, encoder, inputs.labels, tokens),
            model_inputs(inputs.calibration, encoder, inputs.labels, tokens),
        )
        model = source.keras_model
        if options.drop_layers and not is_transformer(model):
            raise ModelFormatError(
                f"--drop-layers removes transformer blocks, and {options.model} has no attention layer"
            )
        if options.drop_layers or (options.prune_mode == "structured" and is_transformer(model)):
            pruned, record = _prune_heads(model, options, data, reporter)
        else:
            pruned, record = _prune_layers(model, options, data.train, reporter)
        accuracy = _accuracies(model, pruned, data.evaluation)
    _gate(options, *accuracy)
    path = folder / f"{default_name(options.model)}.keras"
    pruned.save(path)
    record = updated(record, top1_before=accuracy[0], top1_after=accuracy[1])
    reporter.note(
        f"pruned {record.method}: {record.parameters_before:,} → {record.parameters_after:,} parameters"
    )
    return path, record


@dataclass(frozen=True)
class _Data:
    train: tuple[KerasInputs, np.ndarray] | None
    evaluation: Dataset | None
    calibration: Dataset | None


def _prune_layers(
    model: keras.Model, options: ConvertOptions, train: tuple[KerasInputs, np.ndarray] | None,
    reporter: Reporter,
) -> tuple[keras.Model, Compression]:
    from edgekit.compress.pruning import nonzero_parameters, parameter_count, prune

    ratio = options.prune or 0.0
    pruned = prune(
        model, ratio, train, structured=options.prune_mode == "structured",
        epochs=options.prune_epochs, reporter=reporter,
    )
    return pruned, Compression(
        method=options.prune_mode,  # type: ignore[arg-type]
        sparsity=ratio,
        parameters_before=parameter_count(model),
        parameters_after=nonzero_parameters(pruned),
        fine_tune_epochs=options.prune_epochs if train is not None else 0,
        train_samples=len(train[1]) if train is not None else 0,
    )


def _prune_heads(
    model: keras.Model, options: ConvertOptions, data: _Data, reporter: Reporter
) -> tuple[keras.Model, Compression]:
    """Score heads and neurons on the training data (else the evaluation, else the
    calibration data), prune, then distill from the unpruned model."""
    from edgekit.compress.layers import drop_blocks
    from edgekit.compress.pruning import distill, parameter_count
    from edgekit.compress.transformer import LEARNING_RATE, find_units, importance, prune_transformer

    units = find_units(model)
    scoring = data.train or next(
        ((keras_inputs(d), d.y) for d in (data.evaluation, data.calibration) if d is not None), None
    )
    if scoring is None:
        raise DataError("--prune on a transformer scores its heads on data: give --train-data or --eval")
    pruned, left = model, units
    if options.prune:
        with reporter.progress("Scoring attention heads", 1) as advance:
            scores = importance(model, units, scoring[0], scoring[1])
            advance(1)
        pruned, left = prune_transformer(model, options.prune, scores)
    dropped: list[str] = []
    if options.drop_layers:
        with reporter.progress("Choosing the blocks to drop", options.drop_layers) as advance:
            pruned, dropped = drop_blocks(pruned, options.drop_layers, scoring[0], scoring[1], advance)
        reporter.note(f"dropped the blocks of {', '.join(dropped)}")
        left = find_units(pruned)
    if data.train is not None:
        pruned = distill(
            model,
            pruned,
            data.train,
            epochs=options.prune_epochs,
            learning_rate=LEARNING_RATE,
            reporter=reporter,
        )
    return pruned, Compression(
        method="heads" if options.prune else "layers",
        sparsity=options.prune or 0.0,
        parameters_before=parameter_count(model),
        parameters_after=parameter_count(pruned),
        fine_tune_epochs=options.prune_epochs if data.train is not None else 0,
        train_samples=len(data.train[1]) if data.train is not None else 0,
        heads=(units.total_heads, left.total_heads),
        neurons=(units.total_neurons, left.total_neurons),
        distilled=data.train is not None,
        layers=(len(units.heads), len(units.heads) - len(dropped)) if options.drop_layers else None,
        dropped=tuple(dropped),
    )


def _training_data(
    options: ConvertOptions,
    encoder: TextEncoder | None,
    labels: tuple[str, ...] | None,
    reporter: Reporter,
    tokens: bool = False,
) -> tuple[KerasInputs, np.ndarray] | None:
    if options.train_data is None:
        reporter.warn("--prune without --train-data: pruned once, not fine-tuned; accuracy will suffer")
        return None
    data = model_inputs(load_dataset(options.train_data, "training"), encoder, labels, tokens)
    assert data is not None
    if data.y is None:
        what = '"tags" on every .jsonl line' if tokens else 'a "label" on every .jsonl line'
        raise DataError(
            f"training data {options.train_data}: --prune fine-tunes on labels; "
            f"save it with y=labels (or {what})"
        )
    return keras_inputs(data), data.y


def _accuracies(
    model: keras.Model, pruned: keras.Model, evaluation: Dataset | None
) -> tuple[float | None, float | None]:
    """Top-1 before and after pruning, when the evaluation data has labels."""
    if evaluation is None or evaluation.y is None:
        return None, None
    return _keras_top1(model, evaluation), _keras_top1(pruned, evaluation)


def _keras_top1(model: keras.Model, data: Dataset) -> float:
    assert data.y is not None
    return top1(model.predict(keras_inputs(data), batch_size=256, verbose=0), data.y)


def keras_inputs(data: Dataset) -> KerasInputs:
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
