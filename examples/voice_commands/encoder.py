"""A small BERT-class encoder in plain Keras 3 layers: token and position embeddings, four
post-norm blocks of masked multi-head attention and a GELU feed-forward, and the [CLS]
token's vector classified, or (the slot tagger) every token's vector tagged. Hidden size 256,
4 heads of 64, feed-forward 1024 (BERT's 4×)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LENGTH = 32


def build_encoder(
    vocab: int,
    classes: int,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    length: int = LENGTH,
    per_token: bool = False,
) -> Any:
    """The intent classifier; ``per_token``: the slot tagger, a softmax over ``classes`` tags per token."""
    import keras
    from keras import ops

    ids = keras.Input((length,), dtype="int32", name="input_ids")
    mask = keras.Input((length,), dtype="int32", name="attention_mask")
    positions = ops.cumsum(ops.ones_like(ids), axis=1) - 1
    x = keras.layers.Embedding(vocab, hidden, name="tokens")(ids)
    x = keras.layers.LayerNormalization(name="embeddings_norm")(
        x + keras.layers.Embedding(length, hidden, name="positions")(positions)
    )
    keep = ops.cast(mask, "bool")
    attention_mask = ops.logical_and(keep[:, None, :], keep[:, :, None])
    for i in range(layers):
        attended = keras.layers.MultiHeadAttention(heads, hidden // heads, name=f"attention_{i}")(
            x, x, attention_mask=attention_mask
        )
        x = keras.layers.LayerNormalization(name=f"attention_norm_{i}")(x + attended)
        inner = keras.layers.Dense(4 * hidden, activation="gelu", name=f"ffn_in_{i}")(x)
        x = keras.layers.LayerNormalization(name=f"ffn_norm_{i}")(
            x + keras.layers.Dense(hidden, name=f"ffn_out_{i}")(inner)
        )
    if per_token:
        tags = keras.layers.Dense(classes, activation="softmax", name="slots")(x)
        return keras.Model([ids, mask], tags, name="slot_tagger")
    cls = x[:, 0, :]
    pooled = keras.layers.Dense(hidden, activation="tanh", name="pooler")(cls)
    out = keras.layers.Dense(classes, activation="softmax", name="intent")(pooled)
    return keras.Model([ids, mask], out, name="voice_commands")


def encode(tokenizer_path: str, texts: list[str], length: int = LENGTH) -> dict[str, np.ndarray]:
    """Training-side tokenization, as the device's runtime does it: padded and cut to ``length``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length, pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], np.int32),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int32),
    }


def tag_targets(
    tokenizer_path: str, records: list[dict[str, Any]], length: int = LENGTH
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The slot tagger's inputs, targets and weights, as edgekit scores it: each word's tag
    at its first token (edgekit's own word alignment), no loss anywhere else."""
    from corpus import TAGS

    from edgekit.core.text import IGNORED, TextEncoder, TextInputs, align_tags

    dtypes = {"input_ids": "int32", "attention_mask": "int32"}
    encoder = TextEncoder(Path(tokenizer_path).read_bytes(), length, TextInputs(*dtypes), dtypes)
    feed, starts = encoder.encode_words([r["text"] for r in records])
    y = align_tags([[TAGS.index(t) for t in r["tags"]] for r in records], starts, length)
    return feed, np.maximum(y, 0), (y != IGNORED).astype(np.float32)
