"""Text in, model inputs out: the bundle's Hugging Face tokenizer, run on the device.

A text model's bundle carries its ``tokenizer.json`` (the ``tokenizers`` library: Rust, no
torch), signed and hashed like the artifacts. ``TextEncoder`` pads and truncates to the
bundle's sequence length and fills the inputs the model declares: token ids, and where the
model has them, the attention mask and the token type ids. Which input is which comes from
its name (``input_ids``, ``attention_mask``, ``token_type_ids`` as optimum and tf2onnx export
them, and the usual short forms).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import DataError, InputError, MissingDependencyError
from edgekit.core.samples import Feed

TOKENIZER_FILE = "tokenizer.json"
MAX_TOKENIZER_BYTES = 64 << 20
ROLES = {
    "ids": re.compile(r"(^|_)(input_ids|token_ids|ids|tokens|input_word_ids)$", re.IGNORECASE),
    "mask": re.compile(r"(^|_)(attention_mask|input_mask|mask|padding_mask)$", re.IGNORECASE),
    "type_ids": re.compile(r"(^|_)(token_type_ids|segment_ids|type_ids|input_type_ids)$", re.IGNORECASE),
}
"""Input names by role; the first input whose name matches, per role."""


@dataclass(frozen=True)
class TextInputs:
    """Which model input takes the token ids, the mask and the type ids (None: absent)."""

    ids: str
    mask: str | None = None
    type_ids: str | None = None

    @classmethod
    def find(cls, names: Sequence[str]) -> TextInputs:
        roles = {role: next((n for n in names if pattern.search(n)), None) for role, pattern in ROLES.items()}
        unknown = [n for n in names if n not in roles.values()]
        if roles["ids"] is None or unknown:
            raise InputError(
                f"the model's inputs are {', '.join(names)}; a text model takes token ids (named like "
                "input_ids), and optionally attention_mask and token_type_ids: a tokenizer cannot fill "
                + (", ".join(unknown) if unknown else "the ids")
            )
        return cls(roles["ids"], roles["mask"], roles["type_ids"])


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise MissingDependencyError("tokenizers", "text", "a text model") from None
    return tokenizers


class TextEncoder:
    """Texts to a feed: ids, mask and type ids for ``inputs``, truncated to ``length`` and
    padded to it (``dynamic``: to the longest text of each call); ``dtypes`` maps each input
    to its integer dtype."""

    def __init__(
        self,
        tokenizer_json: bytes,
        length: int,
        inputs: TextInputs,
        dtypes: dict[str, str],
        dynamic: bool = False,
    ) -> None:
        try:
            tokenizer = _tokenizers().Tokenizer.from_str(tokenizer_json.decode())
        except Exception as exc:  # the Rust side raises its own exception type
            raise InputError(
                f"not a Hugging Face tokenizer.json ({exc}); save one with tokenizer.save()"
            ) from None
        tokenizer.enable_truncation(length)
        pad = _pad_token(tokenizer)
        # dynamic: pad each call to its longest text (at most ``length``), for a model that takes any
        tokenizer.enable_padding(
            length=None if dynamic else length, pad_id=tokenizer.token_to_id(pad), pad_token=pad
        )
        self._tokenizer, self.length, self.inputs, self._dtypes = tokenizer, length, inputs, dtypes
        self._pad_id = tokenizer.token_to_id(pad)
        unknown = getattr(tokenizer.model, "unk_token", None)
        self._unknown_id = tokenizer.token_to_id(unknown) if unknown else -1
        self.truncated = 0
        """Texts cut to ``length`` tokens so far."""

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    @property
    def unknown_id(self) -> int:
        """The unknown token's id, or the padding id for a vocabulary without one."""
        return self._unknown_id if self._unknown_id >= 0 else self._pad_id

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [str(self._tokenizer.id_to_token(int(i))) for i in ids]

    def encode(self, texts: Sequence[str]) -> Feed:
        return self._feed(self._encodings(texts), len(texts))

    def encode_words(self, texts: Sequence[str]) -> tuple[Feed, list[list[int]]]:
        """``encode``, and per text the position of each space-separated word's first token
        (-1: cut off by the sequence length), where token classification scores the word."""
        encodings = self._encodings(texts)
        starts = [_first_tokens(e, text) for e, text in zip(encodings, texts, strict=True)]
        return self._feed(encodings, len(texts)), starts

    def _encodings(self, texts: Sequence[str]) -> list[Any]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("predict_text takes a list of strings, one per sample")
        encodings = self._tokenizer.encode_batch(list(texts))
        self.truncated += sum(1 for e in encodings if e.overflowing)
        return list(encodings)

    def _feed(self, encodings: list[Any], count: int) -> Feed:
        columns = {"ids": "ids", "mask": "attention_mask", "type_ids": "type_ids"}
        feed = {}
        for role, attribute in columns.items():
            name = getattr(self.inputs, role)
            if name is not None:
                values = [getattr(e, attribute) for e in encodings]
                feed[name] = np.asarray(values, dtype=self._dtypes.get(name, "int64")).reshape(count, -1)
        return feed

    def features(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """What telemetry bins for a text model, per sample: its token count (padding
        excluded) and the fraction of its tokens the vocabulary did not know."""
        ids = np.asarray(feed[self.inputs.ids])
        mask = feed.get(self.inputs.mask) if self.inputs.mask else None
        real = np.asarray(mask) != 0 if mask is not None else ids != self._pad_id
        tokens = real.sum(axis=1)
        unknown = ((ids == self._unknown_id) & real).sum(axis=1)  # no unknown token: -1 matches none
        return np.stack([tokens, unknown / np.maximum(tokens, 1)], axis=1).astype(np.float32)


IGNORED = -100
"""A token position no tag scores: special tokens, padding, and a word's later sub-words."""


def align_tags(tags: Sequence[Sequence[int]], starts: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """Word tags (indices) as token labels, shaped (texts, ``width``): each word's tag at its
    first token (``TextEncoder.encode_words``' starts), ``IGNORED`` elsewhere and for words
    the sequence length cut off."""
    y = np.full((len(tags), width), IGNORED, np.int64)
    for row, (words, first) in enumerate(zip(tags, starts, strict=True)):
        for position, tag in zip(first, words, strict=True):
            if position >= 0:
                y[row, position] = tag
    return y


TEXT_INPUT = "text"
"""A text model's drift input in telemetry: ``TextEncoder.features`` of each call, in the
order of ``TEXT_FEATURES``."""
TEXT_FEATURES = ("tokens", "unknown rate")


def _first_tokens(encoding: Any, text: str) -> list[int]:
    """Each space-separated word's first token, by the tokens' character offsets (which the
    tokenizer keeps relative to the original text through normalization)."""
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    first = [-1] * len(ends)
    for position, ((start, end), special) in enumerate(
        zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
    ):
        while start < end and text[start].isspace():  # byte-level tokens carry their leading space
            start += 1
        if special or start >= end:
            continue
        word = bisect.bisect_right(ends, start)
        if word < len(first) and first[word] < 0:
            first[word] = position
    return first


def _pad_token(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    for token in ("[PAD]", "<pad>", "<PAD>", "[pad]"):
        if token in vocab:
            return token
    raise InputError("the tokenizer has no padding token ([PAD] or <pad>); add one when training it")


@dataclass(frozen=True)
class TextData:
    """A ``.jsonl`` data file: one object per line with ``text`` and, for evaluation,
    ``label`` (an int, or a class name from --labels) or, for token classification,
    ``tags``: one tag per space-separated word of the text (``B-ROOM``, ``I-ROOM``, ``O``)."""

    texts: tuple[str, ...]
    labels: tuple[Any, ...] | None
    tags: tuple[tuple[Any, ...], ...] | None = None


def read_jsonl(path: Path, role: str) -> TextData:
    texts, labels, tags = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{role} data {path}, line {number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: not JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{where}: no "text" string; write {{"text": ..., "label": ...}}')
        texts.append(record["text"])
        labels.append(record.get("label"))
        tags.append(_tags(record, where))
    if not texts:
        raise DataError(f"{role} data {path}: no lines")
    return TextData(
        tuple(texts), _all_or_none(labels, "label", role, path), _all_or_none(tags, "tags", role, path)
    )


def _tags(record: dict[str, Any], where: str) -> tuple[Any, ...] | None:
    tags = record.get("tags")
    if tags is None:
        return None
    words = len(record["text"].split())
    if not isinstance(tags, list) or len(tags) != words:
        count = f"{len(tags)} tags" if isinstance(tags, list) else "tags that are not a list"
        raise DataError(f'{where}: {count} for {words} words; give "tags" one tag per space-separated word')
    return tuple(tags)


def _all_or_none(values: list[Any], field: str, role: str, path: Path) -> tuple[Any, ...] | None:
    present = [value is not None for value in values]
    if any(present) and not all(present):
        missing = present.index(False) + 1
        raise DataError(f'{role} data {path}: the {missing}. record has no "{field}" while others do')
    return tuple(values) if all(present) else None


def label_indices(labels: tuple[Any, ...], names: tuple[str, ...] | None, where: str) -> np.ndarray:
    """Labels as class indices: ints as they are, names through --labels."""
    if all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        return np.asarray(labels, np.int64)
    if names is None:
        raise DataError(
            f"{where}: labels are names; give --labels FILE with one class name per line, "
            "in the model's output order"
        )
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(label) for label in labels if label not in index})
    if unknown:
        raise DataError(f"{where}: labels {', '.join(unknown[:5])} are not in the --labels file")
    return np.asarray([index[label] for label in labels], np.int64)
