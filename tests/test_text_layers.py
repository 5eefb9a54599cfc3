"""Dropping whole transformer blocks: the rewired model computes exactly the model built
without them (post-norm and pre-norm), the block chosen is the one whose removal costs the
least loss, and ``convert --drop-layers`` makes a smaller model, distilled and gated."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.compress.layers import drop_blocks, find_blocks, rewired
from edgekit.compress.transformer import TransformerPruningError
from edgekit.convert import ConvertOptions, convert
from edgekit.core.errors import ModelFormatError
from edgekit.core.profiles import load_profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "voice_commands"))
from encoder import build_encoder  # noqa: E402

PARTS = ("attention", "attention_norm", "ffn_in", "ffn_out", "ffn_norm")


def _feed(rng: np.random.Generator, length: int = 8) -> dict[str, np.ndarray]:
    mask = np.ones((16, length), "int32")
    mask[::2, 5:] = 0  # padded texts: the mask must still reach every kept block
    return {"input_ids": rng.integers(0, 100, (16, length)).astype("int32"), "attention_mask": mask}


def test_a_post_norm_encoder_without_a_block_is_the_encoder_built_without_it() -> None:
    import keras

    keras.utils.set_random_seed(0)
    full = build_encoder(100, 5, layers=4, hidden=32, heads=2, length=8)
    blocks = find_blocks(full)
    assert [b.attention for b in blocks] == [f"attention_{i}" for i in range(4)]
    dropped = rewired(full, blocks, [2])
    built = build_encoder(100, 5, layers=3, hidden=32, heads=2, length=8)
    source = {f"{part}_{new}": f"{part}_{old}" for new, old in enumerate((0, 1, 3)) for part in PARTS}
    for layer in built.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(source.get(layer.name, layer.name)).get_weights())
    feed = _feed(np.random.default_rng(0))
    np.testing.assert_allclose(np.asarray(dropped(feed)), np.asarray(built(feed)), atol=1e-6)
    assert dropped.count_params() == built.count_params() < full.count_params()


def _pre_norm(skip: tuple[int, ...], made: dict[str, Any]) -> Any:
    """A pre-norm encoder (x + attention(norm(x))) that leaves out the ``skip`` blocks;
    ``made`` holds its layers, so that two calls share them."""
    import keras
    from keras import layers

    def layer(name: str, make: Any) -> Any:
        return made.setdefault(name, make())

    ids = keras.Input((8,), dtype="int32", name="input_ids")
    mask = keras.Input((8,), dtype="int32", name="attention_mask")
    x = layer("embed", lambda: layers.Embedding(100, 16))(ids)
    keep = keras.ops.cast(mask, "bool")[:, None, :]
    for i in range(3):
        if i in skip:
            continue
        h = layer(f"norm_a{i}", layers.LayerNormalization)(x)
        x = x + layer(f"attention{i}", lambda: layers.MultiHeadAttention(2, 8))(h, h, attention_mask=keep)
        h = layer(f"norm_f{i}", layers.LayerNormalization)(x)
        x = x + layer(f"ffn{i}", lambda: layers.Dense(16))(h)
    pooled = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model([ids, mask], layer("head", lambda: layers.Dense(3, activation="softmax"))(pooled))


def test_a_pre_norm_block_is_dropped_at_its_residual_stream() -> None:
    import keras

    keras.utils.set_random_seed(1)
    made: dict[str, Any] = {}
    full = _pre_norm((), made)
    feed = _feed(np.random.default_rng(1))
    for dropped in ([0], [1], [0, 1]):
        expected = np.asarray(_pre_norm(tuple(dropped), made)(feed))
        np.testing.assert_allclose(
            np.asarray(rewired(full, find_blocks(full), dropped)(feed)), expected, atol=1e-6
        )


def test_the_block_dropped_is_the_one_whose_removal_costs_least() -> None:
    import keras

    keras.utils.set_random_seed(2)
    model = build_encoder(100, 5, layers=4, hidden=32, heads=2, length=8)
    for name in ("attention_1", "ffn_out_1"):  # block 1 adds nothing to the stream
        layer = model.get_layer(name)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    feed = _feed(np.random.default_rng(2))
    smaller, names = drop_blocks(model, 1, feed, None)
    assert names == ["attention_1"]
    np.testing.assert_allclose(np.asarray(smaller(feed)), np.asarray(model(feed)), atol=1e-4)
    smaller.get_layer("attention_0").set_weights(
        [np.zeros_like(w) for w in smaller.get_layer("attention_0").get_weights()]
    )
    assert np.abs(np.asarray(model.get_layer("attention_0").get_weights()[0])).sum() > 0  # its own weights
    with pytest.raises(
        TransformerPruningError,
        match="--drop-layers 4: the model has 4 transformer blocks, and the last one stays",
    ):
        drop_blocks(model, 4, feed, None)


def test_an_attention_without_a_residual_is_refused_by_name() -> None:
    import keras

    ids = keras.Input((8,), dtype="int32")
    x = keras.layers.Embedding(50, 16)(ids)
    x = keras.layers.MultiHeadAttention(2, 8, name="lonely")(x, x)
    model = keras.Model(ids, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))
    with pytest.raises(
        TransformerPruningError, match="attention layer 'lonely': no residual x \\+ attention"
    ):
        find_blocks(model)


@pytest.mark.slow
def test_convert_drops_a_block_distills_and_gates(tmp_path: Path, intent_files: dict[str, Path]) -> None:
    from text_models import intent_classifier

    files = intent_classifier(tmp_path, vocab=300, blocks=3)
    common = dict(
        profile=load_profile("raspberry-pi-5"), format="onnx", precision="fp32", tokenizer=files["tokenizer"],
        evaluation=files["evaluation"], labels=files["labels"], train_data=files["train"], prune_epochs=3,
    )
    full = convert(ConvertOptions(model=files["model"], output=tmp_path / "full.ekb", **common))  # type: ignore[arg-type]
    both = convert(
        ConvertOptions(model=files["model"], output=tmp_path / "both.ekb", drop_layers=1, prune=0.5, **common)
    )  # type: ignore[arg-type]
    record = both.manifest.compression
    assert (
        record is not None
        and record.method == "heads"
        and record.layers == (3, 2)
        and len(record.dropped) == 1
    )
    assert record.heads == (6, 2) and record.neurons == (192, 64)  # half of each, of the two blocks left
    assert record.top1_before - record.top1_after <= 2.0
    assert both.manifest.artifacts[0].size < 0.65 * full.manifest.artifacts[0].size  # the embeddings stay
    only = convert(
        ConvertOptions(model=files["model"], output=tmp_path / "layers.ekb", drop_layers=2, **common)
    )  # type: ignore[arg-type]
    assert only.manifest.compression.method == "layers" and only.manifest.compression.layers == (3, 1)
    with pytest.raises(ModelFormatError, match="the model has 1 transformer blocks, and the last one stays"):
        convert(ConvertOptions(model=intent_files["model"], output=tmp_path / "x.ekb", drop_layers=1,
                               **{**common, "tokenizer": intent_files["tokenizer"], "evaluation": intent_files["evaluation"], "train_data": intent_files["train"]}))  # type: ignore[arg-type]  # fmt: skip
