"""Text classifiers in ``edgekit evaluate``: the ``.jsonl`` data tokenized by the bundle's own
tokenizer, text corruptions (typos, dropped words, swapped words) at severities 1 to 5, and
token attributions by occlusion (each real token masked out in turn)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.convert.data import Dataset
from edgekit.core.errors import DataError, InputError
from edgekit.core.samples import Feed
from edgekit.core.text import TextEncoder, label_indices
from edgekit.evaluate.scores import probabilities

RATES = (0.05, 0.1, 0.2, 0.3, 0.5)
"""The share of words each severity touches."""


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 2:
        return word
    i = int(rng.integers(0, len(word) - 1))
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def corrupt_texts(texts: Sequence[str], name: str, severity: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed + severity)
    rate = RATES[severity - 1]
    out = []
    for text in texts:
        words = text.split()
        hit = rng.random(len(words)) < rate
        if name == "typos":
            words = [_typo(w, rng) if h else w for w, h in zip(words, hit, strict=True)]
        elif name == "dropped words":
            kept = [w for w, h in zip(words, hit, strict=True) if not h]
            words = kept or words[:1]
        else:  # swapped words: a hit word trades places with the next one
            for i in np.flatnonzero(hit[:-1]):
                words[i], words[i + 1] = words[i + 1], words[i]
        out.append(" ".join(words))
    return out


CORRUPTIONS = ("typos", "dropped words", "swapped words")


@dataclass(frozen=True)
class TextCase:
    texts: list[str]
    feed: Feed
    labels: np.ndarray
    corrupted: dict[str, list[Feed]]
    encoder: TextEncoder


def text_case(data: Dataset, encoder: TextEncoder, names: tuple[str, ...] | None,
              severities: tuple[int, ...], samples: int | None) -> TextCase:
    if data.text is None:
        raise DataError(f"evaluation data {data.path}: a text model is evaluated on .jsonl texts")
    if data.text.labels is None or data.text.tags is not None:
        raise InputError(
            f"evaluation data {data.path}: edgekit evaluate takes text classifiers with a label per "
            "text; token classification (tags) is not evaluated yet"
        )
    texts = list(data.text.texts[:samples])
    labels = label_indices(data.text.labels, names, f"evaluation data {data.path}")[: len(texts)]
    corrupted = {
        name: [encoder.encode(corrupt_texts(texts, name, s)) for s in severities] for name in CORRUPTIONS
    }
    return TextCase(texts, encoder.encode(texts), labels, corrupted, encoder)


def token_occlusion(predict: Callable[[Feed], np.ndarray], feed: Feed, classes: np.ndarray,
                    encoder: TextEncoder) -> np.ndarray:
    """(samples, tokens): how much masking each real token out lowers the class's
    probability; NaN at padding. Without a mask input, the token becomes the unknown token."""
    ids_name, mask_name = encoder.inputs.ids, encoder.inputs.mask
    ids = np.asarray(feed[ids_name])
    real = np.asarray(feed[mask_name]) != 0 if mask_name else np.ones_like(ids, bool)
    rows = np.arange(len(ids))
    base = probabilities(predict(feed))[rows, classes]
    maps = np.full(ids.shape, np.nan)
    for position in range(ids.shape[1]):
        if not real[:, position].any():
            continue
        changed = {name: np.array(value) for name, value in feed.items()}
        if mask_name:
            changed[mask_name][:, position] = 0
        else:
            changed[ids_name][:, position] = encoder.unknown_id
        drop = base - probabilities(predict(changed))[rows, classes]
        maps[:, position] = np.where(real[:, position], drop, np.nan)
    return maps
