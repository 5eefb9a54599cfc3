"""Text models in ``convert``: the tokenizer that travels in the bundle, and ``.jsonl``
calibration and evaluation data tokenized by it, before any other data check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edgekit.convert.data import Dataset
from edgekit.convert.options import ConvertOptions
from edgekit.convert.plan import Inputs
from edgekit.converters.source import SourceModel
from edgekit.core.bundle import sha256
from edgekit.core.errors import DataError, InputError
from edgekit.core.manifest import ArtifactEntry, TextSpec
from edgekit.core.samples import Feed, Samples
from edgekit.core.text import (
    MAX_TOKENIZER_BYTES,
    TOKENIZER_FILE,
    TextEncoder,
    TextInputs,
    align_tags,
    label_indices,
)
from edgekit.core.validation import updated
from edgekit.views.progress import Reporter

DEFAULT_SEQUENCE_LENGTH = 128


@dataclass(frozen=True)
class BundledTokenizer:
    """The tokenizer a text bundle carries: its manifest entry, its bytes, and it at work."""

    spec: TextSpec
    raw: bytes
    encoder: TextEncoder

    def entry(self, artifacts: Sequence[ArtifactEntry], fixed: bool) -> TextSpec:
        """The manifest's ``text``: with a dynamic length when every artifact's ids input
        takes any sequence length, unless ``fixed`` (TensorRT: one shape, one engine)."""
        dynamic = not fixed and all(
            len(tensor.shape) > 1 and tensor.shape[1] is None
            for entry in artifacts
            for tensor in entry.inputs
            if tensor.name == self.spec.ids
        )
        return updated(self.spec, dynamic_length=dynamic)


def prepare_text(
    source: SourceModel, inputs: Inputs, options: ConvertOptions, reporter: Reporter
) -> tuple[Inputs, BundledTokenizer | None]:
    """With ``--tokenizer``: the tokenizer for the bundle, and ``.jsonl`` data as model inputs.
    Without it, text data is refused in one line."""
    found = text_encoder(source, options)
    if found is None:
        for data in (inputs.calibration, inputs.evaluation):
            model_inputs(data, None, None)  # refuses text without a tokenizer
        return inputs, None
    encoder, raw = found
    roles, length, tokens = encoder.inputs, encoder.length, token_task(source, options)
    spec = TextSpec(
        file=TOKENIZER_FILE, sha256=sha256(raw), size=len(raw), max_length=length,
        vocab_size=encoder.vocab_size, ids=roles.ids, mask=roles.mask, type_ids=roles.type_ids,
        task="tokens" if tokens else "sequence",
    )
    tokenized = replace(
        inputs,
        calibration=tokenize(inputs.calibration, encoder, inputs.labels, tokens),
        evaluation=tokenize(inputs.evaluation, encoder, inputs.labels, tokens),
    )
    if encoder.truncated:
        cut = ": their words past it are not scored" if tokens else ""
        reporter.note(f"{encoder.truncated} texts were longer than {length} tokens and were truncated{cut}")
    return tokenized, BundledTokenizer(spec, raw, encoder)


def text_encoder(source: SourceModel, options: ConvertOptions) -> tuple[TextEncoder, bytes] | None:
    """The tokenizer of ``--tokenizer`` (and its bytes), set for the model's text inputs and
    sequence length, and checked against its vocabulary; None without ``--tokenizer``."""
    if options.tokenizer is None:
        return None
    raw = _read_tokenizer(options)
    roles = TextInputs.find([spec.name for spec in source.inputs])
    ids = next(spec for spec in source.inputs if spec.name == roles.ids)
    fixed = ids.shape[1] if len(ids.shape) > 1 else None
    profile = options.profile.budget.max_sequence_length
    length = options.max_sequence_length or fixed or profile or DEFAULT_SEQUENCE_LENGTH
    if len(ids.shape) > 1 and ids.shape[1] not in (None, length):
        raise InputError(
            f"--max-sequence-length {length}: the model's '{ids.name}' takes {ids.shape[1]} tokens"
        )
    dtypes = {spec.name: spec.dtype for spec in source.inputs}
    encoder = TextEncoder(raw, length, roles, dtypes)
    _check_vocabulary(source, encoder)
    return encoder, raw


def _read_tokenizer(options: ConvertOptions) -> bytes:
    path = options.tokenizer
    assert path is not None
    if not path.is_file():
        raise InputError(f"--tokenizer {path}: no such file")
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise InputError(f"--tokenizer {path}: over {MAX_TOKENIZER_BYTES >> 20} MB; not a tokenizer.json")
    return path.read_bytes()


def _check_vocabulary(source: SourceModel, encoder: TextEncoder) -> None:
    """The highest token id must be one the model's embedding has: feed it and see."""
    feed = encoder.encode(["probe"])
    feed[encoder.inputs.ids] = np.full_like(feed[encoder.inputs.ids], encoder.vocab_size - 1)
    try:
        outputs = source.predict(feed)
    except Exception:  # TensorFlow and ONNX Runtime each raise their own type
        raise InputError(
            f"the tokenizer has {encoder.vocab_size} tokens, more than the model's embedding takes: "
            "use the tokenizer the model was trained with"
        ) from None
    if not all(np.isfinite(out).all() for out in outputs if out.dtype.kind == "f"):
        raise InputError(
            f"the tokenizer's last token id ({encoder.vocab_size - 1}) gives NaN: not the model's tokenizer"
        )


def token_task(source: SourceModel, options: ConvertOptions) -> bool:
    """Token classification: the judged output (``--eval-output``, else the only one) has a
    score per token, shaped (batch, tokens, tags)."""
    outputs = [o for o in source.outputs if options.eval_output in (None, o.name)]
    return len(outputs) == 1 and len(outputs[0].shape) == 3


def tokenize(
    data: Dataset | None, encoder: TextEncoder, names: tuple[str, ...] | None, tokens: bool = False
) -> Dataset | None:
    """Texts as model inputs; labels as class indices, or for ``tokens`` tags as a (samples,
    tokens) array with each word's tag at its first token and ``IGNORED`` elsewhere."""
    if data is None or data.text is None:
        return data
    text, where = data.text, f"data {data.path}"
    if tokens and text.tags is None and text.labels is not None:
        raise DataError(f'{where}: the model tags every token; give each record "tags", one per word')
    if not tokens and text.labels is None and text.tags is not None:
        raise DataError(f'{where}: the model classifies whole texts; give each record a "label"')
    if not tokens:
        labels = text.labels
        y = None if labels is None else label_indices(labels, names, where)
        return Dataset(data.path, Samples(encoder.encode(list(text.texts))), y, text)
    feed, starts = encoder.encode_words(list(text.texts))
    return Dataset(data.path, Samples(feed), _tag_array(text.tags, starts, names, where, feed), text)


def _tag_array(
    tags: tuple[tuple, ...] | None, starts: list[list[int]], names: tuple[str, ...] | None, where: str,
    feed: Feed,
) -> np.ndarray | None:
    if tags is None:
        return None
    flat = iter(label_indices(tuple(t for row in tags for t in row), names, where).tolist())
    indices = [[next(flat) for _ in row] for row in tags]
    return align_tags(indices, starts, next(iter(feed.values())).shape[1])


def model_inputs(
    data: Dataset | None, encoder: TextEncoder | None, labels: tuple[str, ...] | None, tokens: bool = False
) -> Dataset | None:
    """``data`` as the model takes it: .jsonl texts tokenized by ``encoder``, which they need."""
    if data is not None and data.text is not None and encoder is None:
        raise DataError("a .jsonl data file holds text: pass the model's --tokenizer tokenizer.json")
    return tokenize(data, encoder, labels, tokens) if encoder is not None else data
