"""Compression beyond post-training quantization, for Keras 3 models: magnitude pruning,
structured channel pruning, and distillation.

TensorFlow Model Optimization 0.8 rejects Keras 3 models (``prune_low_magnitude`` raises
on a ``keras.Sequential``), and no other maintained library prunes Keras 3, so this module
is a small implementation on Keras' public API, tested on the digits CNN:

- ``prune(model, sparsity)``: unstructured magnitude pruning of Conv2D, DepthwiseConv2D and
  Dense kernels, with a polynomial (cubic) sparsity schedule over fine-tuning. The model
  keeps its shape; its zeros make the TFLite file compress, and XNNPACK's sparse kernels
  can use them where they apply.
- ``prune(model, sparsity, structured=True)``: removes whole output channels (lowest L1
  norm) of Conv2D and Dense layers and rebuilds a genuinely smaller model. Supported: linear
  chains (keras.Sequential, or a functional model without branches) of Conv2D, Dense,
  DepthwiseConv2D (multiplier 1), BatchNormalization, Flatten, pooling, activation,
  dropout and padding layers. The last Dense or Conv2D (the output) is never pruned.
  Anything else is refused with the layer's name, never turned into a wrong model.
- ``distill(teacher, student, train_data)``: trains ``student`` on a mix of the hard-label
  loss and the KL divergence to the teacher's softened outputs at ``temperature``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import numpy as np

from edgekit.core.errors import DataError, ModelFormatError
from edgekit.core.text import IGNORED
from edgekit.views.progress import Reporter, SilentReporter

KerasInputs = np.ndarray | dict[str, np.ndarray]
"""What Keras takes: one input's array, or the arrays by input name."""
PruneMode = Literal["structured", "magnitude"]
"""structured removes whole channels (a smaller, faster model); magnitude zeroes weights."""
PRUNE_MODES: tuple[PruneMode, ...] = get_args(PruneMode)
PRUNABLE = ("Conv2D", "Dense", "DepthwiseConv2D")
PASS_THROUGH = (
    "Activation", "ReLU", "LeakyReLU", "Softmax", "Dropout", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D",
)


class PruningError(ModelFormatError):
    """The model's graph is one that structured pruning does not support."""


def parameter_count(model: Any) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))


def nonzero_parameters(model: Any) -> int:
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def prune(
    model: Any,
    sparsity: float,
    train_data: tuple[KerasInputs, np.ndarray] | None = None,
    *,
    structured: bool = False,
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> Any:
    """A pruned copy of ``model``, fine-tuned on ``train_data`` (x, integer labels) if given."""
    import keras

    if not 0 < sparsity < 1:
        raise DataError(f"sparsity must be between 0 and 1 (exclusive), got {sparsity}")
    reporter = reporter or SilentReporter()
    keras.utils.set_random_seed(seed)
    if structured:
        pruned = _prune_channels(model, sparsity)
        if train_data is not None:
            _fine_tune(
                pruned, train_data, epochs, batch_size, learning_rate, reporter, "Fine-tuning pruned model"
            )
        return pruned
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    kernels = [layer for layer in pruned.layers if type(layer).__name__ in PRUNABLE]
    if train_data is None:
        _apply_masks(kernels, sparsity)
        return pruned
    steps = epochs * math.ceil(len(train_data[0]) / batch_size)

    class Schedule(keras.callbacks.Callback):  # type: ignore[misc]
        """Polynomial decay from 0 to ``sparsity`` over the first 70% of the steps."""

        step = 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            Schedule.step += 1
            progress = min(1.0, Schedule.step / max(1, int(0.7 * steps)))
            _apply_masks(kernels, sparsity * (1 - (1 - progress) ** 3))

    _fine_tune(
        pruned,
        train_data,
        epochs,
        batch_size,
        learning_rate,
        reporter,
        "Pruning and fine-tuning",
        [Schedule()],
    )
    _apply_masks(kernels, sparsity)
    return pruned


def _apply_masks(layers: list[Any], sparsity: float) -> None:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of each layer's kernel."""
    for layer in layers:
        kernel = layer.kernel if hasattr(layer, "kernel") else layer.depthwise_kernel
        values = np.asarray(kernel)
        count = int(sparsity * values.size)
        if count == 0:
            continue
        threshold = np.partition(np.abs(values).ravel(), count - 1)[count - 1]
        kernel.assign(np.where(np.abs(values) <= threshold, 0.0, values).astype(values.dtype))


def _fine_tune(
    model: Any,
    train_data: tuple[KerasInputs, np.ndarray],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    reporter: Reporter,
    title: str,
    callbacks: list[Any] | None = None,
    loss: Any = None,
) -> None:
    import keras

    x, y = train_data
    count = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)  # several inputs: by name
    if count != len(y):
        raise DataError(f"training data: {count} samples but {len(y)} labels")
    model.compile(keras.optimizers.Adam(learning_rate), loss or _hard_loss(model))
    with reporter.progress(title, epochs) as advance:
        model.fit(
            x, y, epochs=epochs, batch_size=batch_size, verbose=0,
            callbacks=[*(callbacks or []), _EpochProgress(advance)],
        )


def one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    """Labels (any shape) as one-hot rows on a new last axis; ``IGNORED`` as all zeros."""
    y = np.asarray(y)
    rows = np.zeros((*y.shape, classes), np.float32)
    known = y != IGNORED
    rows[(*np.nonzero(known), y[known])] = 1.0
    return rows


def _hard_loss(model: Any) -> Any:
    import keras

    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=not ends_in_softmax(model), ignore_class=IGNORED
    )


def ends_in_softmax(model: Any) -> bool:
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", "") == "softmax" or type(model.layers[-1]).__name__ == "Softmax"


def _EpochProgress(advance: Any) -> Any:  # a class made on demand, so keras loads lazily
    import keras

    class EpochProgress(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            advance(1)

    return EpochProgress()


def _chain(model: Any) -> list[Any]:
    """The model's layers in order, if it is a chain without branches."""
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    for layer in layers:
        inbound = getattr(layer, "_inbound_nodes", [])
        for node in inbound:
            if len(getattr(node, "input_tensors", ())) > 1:
                raise PruningError(
                    f"structured pruning supports chains of layers; layer '{layer.name}' "
                    f"({type(layer).__name__}) joins {len(node.input_tensors)} branches. "
                    "Use magnitude pruning (--prune-mode magnitude; structured=False) for this model"
                )
    return layers


def _prune_channels(model: Any, sparsity: float) -> Any:
    import keras

    layers = _chain(model)
    producers = [i for i, layer in enumerate(layers) if type(layer).__name__ in ("Conv2D", "Dense")]
    if len(producers) < 2:
        raise PruningError(
            "structured pruning needs at least two Conv2D or Dense layers (the last is the output)"
        )
    output_layer = producers[-1]
    keep: np.ndarray | None = None
    rebuilt: list[tuple[Any, list[np.ndarray]]] = []
    for index, layer in enumerate(layers):
        kind = type(layer).__name__
        config = layer.get_config()
        weights = layer.get_weights()
        if kind in ("Conv2D", "Dense"):
            kernel = weights[0]
            if kind == "Conv2D" and config.get("groups", 1) != 1:
                raise PruningError(f"layer '{layer.name}': grouped convolutions are not supported")
            if keep is not None:
                kernel = np.take(kernel, keep, axis=kernel.ndim - 2)
            if index != output_layer:
                norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
                count = max(1, math.ceil((1 - sparsity) * kernel.shape[-1]))
                keep = np.sort(np.argsort(norms)[::-1][:count])
                kernel = kernel[..., keep]
                config["filters" if kind == "Conv2D" else "units"] = count
                weights = [kernel, *(w[keep] for w in weights[1:])]
            else:
                keep = None
                weights = [kernel, *weights[1:]]
        elif kind == "DepthwiseConv2D":
            if config.get("depth_multiplier", 1) != 1:
                raise PruningError(
                    f"layer '{layer.name}': DepthwiseConv2D with depth_multiplier > 1 is not supported"
                )
            if keep is not None:
                weights = [np.take(weights[0], keep, axis=2), *(w[keep] for w in weights[1:])]
        elif kind == "BatchNormalization":
            if keep is not None:
                weights = [w[keep] for w in weights]
        elif kind == "Flatten":
            if keep is not None:
                shape = layer.input.shape[1:]
                positions = np.arange(int(np.prod(shape))).reshape(shape)
                keep = positions[..., keep].ravel()
        elif kind not in PASS_THROUGH:
            supported = ", ".join(
                ("Conv2D", "Dense", "DepthwiseConv2D", "BatchNormalization", "Flatten", *PASS_THROUGH)
            )
            raise PruningError(
                f"structured pruning does not support layer '{layer.name}' ({kind}); supported: {supported}"
            )
        rebuilt.append((type(layer).from_config(config), weights))
    pruned = keras.Sequential(
        [keras.Input(model.inputs[0].shape[1:], name=model.inputs[0].name)], name=model.name
    )
    for layer, _ in rebuilt:
        pruned.add(layer)
    for layer, weights in rebuilt:
        layer.set_weights(weights)
    return pruned


def distill(
    teacher: Any,
    student: Any,
    train_data: tuple[KerasInputs, np.ndarray],
    *,
    epochs: int = 5,
    temperature: float = 4.0,
    alpha: float = 0.1,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> Any:
    """Train ``student`` (an untrained Keras model) to mimic ``teacher``.

    Loss: ``alpha`` × cross-entropy with the labels + (1 − ``alpha``) × T² × KL(teacher ‖
    student) on outputs softened at temperature T (Hinton et al., 2015), per sample or, for
    a token classifier, per token (tokens labelled ``IGNORED`` learn from the teacher alone).
    Models ending in softmax are compared through their log-probabilities. Returns the trained student,
    compiled with the plain label loss, so it saves and converts like any Keras model.
    """
    import keras
    from keras import ops

    if temperature <= 0 or not 0 <= alpha <= 1:
        raise DataError(f"temperature must be positive and alpha in [0, 1], got {temperature} and {alpha}")
    reporter = reporter or SilentReporter()
    keras.utils.set_random_seed(seed)
    x, y = train_data
    classes = int(teacher.outputs[0].shape[-1])
    with reporter.progress("Teacher predictions", 1) as advance:
        teacher_out = teacher.predict(x, batch_size=256, verbose=0)
        advance(1)
    teacher_logits = np.log(np.clip(teacher_out, 1e-7, 1.0)) if ends_in_softmax(teacher) else teacher_out
    targets = np.concatenate([one_hot(y, classes), teacher_logits.astype(np.float32)], axis=-1)
    student_softmax = ends_in_softmax(student)

    def loss(y_true: Any, y_pred: Any) -> Any:
        labels, soft = y_true[..., :classes], y_true[..., classes:]
        logits = ops.log(ops.clip(y_pred, 1e-7, 1.0)) if student_softmax else y_pred
        hard = keras.losses.categorical_crossentropy(labels, logits, from_logits=True)
        teacher_p = ops.softmax(soft / temperature)
        student_log_p = ops.log_softmax(logits / temperature)
        kl = ops.sum(teacher_p * (ops.log(ops.clip(teacher_p, 1e-7, 1.0)) - student_log_p), axis=-1)
        return alpha * hard + (1 - alpha) * temperature**2 * kl

    _fine_tune(student, (x, targets), epochs, batch_size, learning_rate, reporter, "Distilling", loss=loss)
    student.compile(keras.optimizers.Adam(learning_rate), _hard_loss(student), metrics=["accuracy"])
    return student
