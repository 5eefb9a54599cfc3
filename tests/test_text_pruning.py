"""Transformer pruning: attention heads and feed-forward neurons removed by importance, the
smaller model distilled from the unpruned one, gated and recorded in the manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from text_models import INTENTS, encode

from edgekit.compress.pruning import parameter_count
from edgekit.compress.transformer import (
    TransformerPruningError,
    find_units,
    importance,
    prune_transformer,
)
from edgekit.convert import ConvertOptions, convert
from edgekit.core.profiles import load_profile
from edgekit.fit.report import write_convert_report
from edgekit.runtime import Model


@pytest.fixture(scope="module")
def model(intent_files: dict[str, Path]) -> Any:
    import keras

    return keras.saving.load_model(intent_files["model"], compile=False)


@pytest.fixture(scope="module")
def held(intent_files: dict[str, Path]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    records = [json.loads(line) for line in intent_files["evaluation"].read_text().splitlines()]
    ids, mask = encode(intent_files["tokenizer"], [r["text"] for r in records])
    return {"input_ids": ids, "attention_mask": mask}, np.array([INTENTS.index(r["label"]) for r in records])


def test_the_pruned_model_is_the_original_with_those_heads_and_neurons_removed(model: Any, held: Any) -> None:
    """Removing a head equals zeroing its slice of the attention output kernel; removing a
    neuron equals zeroing its row of the outer Dense. The rebuilt model must compute exactly that."""
    import keras

    x, y = held
    units = find_units(model)
    assert units.heads == {"attention": 2} and units.feed_forward == {"ffn_in": ("ffn_out", 64)}
    scores = importance(model, units, x, y)
    pruned, left = prune_transformer(model, 0.5, scores)
    assert (left.total_heads, left.total_neurons) == (1, 32)
    assert parameter_count(pruned) < parameter_count(model)
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    attention = masked.get_layer("attention")
    dropped_head = int(np.argmin(scores["attention"]))
    kernel = next(w for w in attention.weights if w.path.endswith("attention_output/kernel"))
    kernel.assign(np.where(np.arange(2)[:, None, None] == dropped_head, 0.0, np.asarray(kernel)))
    [inner] = units.feed_forward
    outer = masked.get_layer(units.feed_forward[inner][0])
    dropped = np.argsort(scores[inner])[:32]
    rows = np.asarray(outer.kernel)
    rows[dropped] = 0.0
    outer.kernel.assign(rows)
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(masked(x)), atol=1e-5)


def test_a_heads_score_is_the_loss_sensitivity_to_masking_it(model: Any, held: Any) -> None:
    """Michel et al.'s importance |∂L/∂ξ_h|, checked by scaling the head's output by 1 ± ε."""
    import keras

    x, y = held
    units = find_units(model)
    scores = importance(model, units, x, y, batch_size=len(y))
    loss = keras.losses.SparseCategoricalCrossentropy()
    probe = keras.models.clone_model(model)
    kernel = next(
        w for w in probe.get_layer("attention").weights if w.path.endswith("attention_output/kernel")
    )
    eps = 1e-3
    for head in range(2):
        losses = []
        for sign in (1, -1):
            probe.set_weights(model.get_weights())
            scale = np.where(np.arange(2)[:, None, None] == head, 1 + sign * eps, 1.0)
            kernel.assign(np.asarray(kernel) * scale)
            losses.append(float(loss(y, probe(x))))
        finite_difference = abs(losses[0] - losses[1]) / (2 * eps)
        # the loss is a mean over the batch; importance sums Σ W ⊙ ∂L/∂W for that same mean
        assert scores["attention"][head] == pytest.approx(finite_difference, rel=0.05, abs=1e-7)


@pytest.mark.slow
def test_convert_prunes_a_transformer_distills_it_and_runs_it_from_text(
    intent_files: dict[str, Path], tmp_path: Path
) -> None:
    common = dict(
        profile=load_profile("raspberry-pi-5"), format="onnx", precision="fp32", tokenizer=intent_files["tokenizer"],
        evaluation=intent_files["evaluation"], labels=intent_files["labels"],
    )
    full = convert(ConvertOptions(model=intent_files["model"], output=tmp_path / "full.ekb", **common))  # type: ignore[arg-type]
    pruned = convert(ConvertOptions(
        model=intent_files["model"], output=tmp_path / "pruned.ekb", prune=0.5, train_data=intent_files["train"],
        prune_epochs=2, **common,  # type: ignore[arg-type]
    ))
    record = pruned.manifest.compression
    assert record is not None and record.method == "heads" and record.distilled
    assert (record.heads, record.neurons) == ((2, 1), (64, 32))
    assert record.parameters_after < record.parameters_before and record.train_samples == 800
    assert record.top1_before is not None and record.top1_after is not None
    assert record.top1_before - record.top1_after <= 1.0
    assert pruned.manifest.artifacts[0].size < full.manifest.artifacts[0].size
    write_convert_report(tmp_path / "report.html", pruned, load_profile("raspberry-pi-5"), "intent")
    page = (tmp_path / "report.html").read_text()
    assert "Per class: float → fp32" in page and "<td>set_temperature</td>" in page and "weighted avg" in page
    device = Model.load(pruned.output, allow_unsigned=True)
    scores = device.predict_text(["turn on the kitchen lights", "start the office fan"])
    assert [INTENTS[i] for i in np.argmax(scores, axis=-1)] == ["lights_on", "fan_on"]  # type: ignore[call-overload]


def test_an_attention_layer_called_twice_is_refused_by_name() -> None:
    import keras

    x = keras.Input((8, 16))
    shared = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, name="shared")
    out = shared(shared(x, x), x)
    with pytest.raises(TransformerPruningError, match="'shared' is called 2 times"):
        find_units(keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(out))))
