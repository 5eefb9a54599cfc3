"""Dropping whole transformer blocks from a Keras 3 encoder, chosen by measurement.

A block starts where the residual stream enters it: the other operand of the residual
``Add`` that takes the block's attention output (``x + attention(x)`` post-norm, ``x +
attention(norm(x))`` pre-norm alike). Dropping block i feeds the stream that entered it
straight to block i + 1, so the block's attention, feed-forward and norms are gone and
everything else is kept. The last block stays: what follows it is the model's own head.

Which blocks go is measured, not guessed: greedily, the block whose removal raises the loss
least on the scoring samples (the labels, or the model's own predictions), one block at a
time. Sajjad et al. (2020, "On the Effect of Dropping Layers of Pre-trained Transformer
Models") find that the top layers usually matter least; the measurement finds that where
it holds and something else where it does not. Distillation afterwards recovers the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.compress.transformer import (
    ATTENTION,
    PASS_THROUGH,
    SCORING_SAMPLES,
    TransformerPruningError,
)
from edgekit.core.text import IGNORED


@dataclass(frozen=True)
class Block:
    attention: str
    """The block's attention layer."""
    stream: Any
    """The KerasTensor entering the block: the residual stream."""


def find_blocks(model: Any) -> list[Block]:
    """The model's transformer blocks, input to output."""
    consumers: dict[int, list[Any]] = {}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            for tensor in node.input_tensors:
                consumers.setdefault(id(tensor), []).append(node)
    blocks = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if type(node.operation).__name__ == ATTENTION:
                blocks.append(Block(node.operation.name, _residual(node, consumers)))
    return blocks


def _residual(node: Any, consumers: dict[int, list[Any]]) -> Any:
    """The other operand of the ``Add`` that takes this attention's output."""
    tensor = node.outputs[0]
    while len(users := consumers.get(id(tensor), [])) == 1:
        user = users[0]
        kind = type(user.operation).__name__
        if kind == "Add" and len(user.input_tensors) == 2:
            return next(t for t in user.input_tensors if t is not tensor)
        if kind not in PASS_THROUGH:
            break
        tensor = user.outputs[0]
    raise TransformerPruningError(
        f"attention layer '{node.operation.name}': no residual x + attention(x) after it, so "
        "its block cannot be dropped; drop layers only from transformer encoders"
    )


def rewired(model: Any, blocks: list[Block], dropped: list[int]) -> Any:
    """``model`` without the ``dropped`` blocks (indices into ``blocks``), sharing its layers."""
    import keras
    from keras import tree

    skip = {id(blocks[i + 1].stream): blocks[i].stream for i in dropped}
    values = {id(x): x for x in model.inputs}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if not node.operation or node.is_input or any(id(x) not in values for x in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(values)
            for x, y in zip(node.outputs, tree.flatten(node.operation(*args, **kwargs)), strict=True):
                # the stream leaving a dropped block is the one that entered it
                values[id(x)] = values[id(skip[id(x)])] if id(x) in skip else y
    return keras.Model(model.inputs, [values[id(x)] for x in model.outputs])


def drop_blocks(
    model: Any, count: int, x: Any, y: np.ndarray | None, advance: Callable[[int], None] | None = None
) -> tuple[Any, list[str]]:
    """A copy of ``model`` without ``count`` blocks, each the one whose removal costs the
    least loss on up to ``SCORING_SAMPLES`` samples of ``x`` (labels ``y``, else the model's
    own predictions); also the dropped blocks' attention layer names."""
    import keras

    blocks = find_blocks(model)
    if count >= len(blocks):
        raise TransformerPruningError(
            f"--drop-layers {count}: the model has {len(blocks)} transformer blocks, and the last one stays"
        )
    x = {k: v[:SCORING_SAMPLES] for k, v in x.items()} if isinstance(x, dict) else x[:SCORING_SAMPLES]
    y = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=-1) if y is None else y[:SCORING_SAMPLES]
    dropped: list[int] = []
    for _ in range(count):
        left = [i for i in range(len(blocks) - 1) if i not in dropped]
        losses = {i: _loss(rewired(model, blocks, [*dropped, i]), x, y) for i in left}
        dropped.append(min(losses, key=losses.__getitem__))
        if advance is not None:
            advance(1)
    shared = rewired(model, blocks, dropped)
    smaller = keras.models.clone_model(shared)  # its own layers: distilling it leaves the teacher alone
    smaller.set_weights(shared.get_weights())
    return smaller, [blocks[i].attention for i in sorted(dropped)]


def _loss(model: Any, x: Any, y: np.ndarray) -> float:
    """Mean cross-entropy of the model's probabilities (or logits) against ``y``."""
    from edgekit.compress.pruning import ends_in_softmax

    out = np.asarray(model.predict(x, batch_size=256, verbose=0), np.float64)
    if not ends_in_softmax(model):
        out = np.exp(out - out.max(axis=-1, keepdims=True))
        out /= out.sum(axis=-1, keepdims=True)
    scored = y != IGNORED
    picked = np.take_along_axis(out, np.where(scored, y, 0)[..., None], axis=-1)[..., 0]
    return float(-np.log(np.clip(picked[scored], 1e-12, None)).mean())
