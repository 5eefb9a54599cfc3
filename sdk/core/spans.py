"""Token classification scored per entity span, as ``seqeval`` does by default (the CoNLL
``conlleval`` rules): a span is a run of tags such as ``B-ROOM I-ROOM``, and a predicted span
counts only when its type, first and last word all match a true one.

The report has ``classification_report``'s layout, one row per entity type (sorted by name),
then the micro, macro and weighted averages, and the per-word tag accuracy. A test compares
it with seqeval on the same tags. seqeval itself is not a dependency: its last release is
from 2020 and it pulls scikit-learn and SciPy into every ``edgekit[convert]`` install for
these forty lines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import SupportsFloat, SupportsInt

import numpy as np

from edgekit.core.classes import ClassComparison, ClassReport, ClassScores, safe_divide
from edgekit.core.text import IGNORED

Span = tuple[str, int, int]
"""(type, first word, last word)."""
BIO_TAG = re.compile(r"^(O|[BIES]-.+)$")
"""A tag the span rules read: ``O``, or a prefix and an entity type (``B-ROOM``)."""


def _split(tag: str) -> tuple[str, str]:
    """``B-ROOM`` → (``B``, ``ROOM``); ``O`` → (``O``, ``_``)."""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    return (
        prev in "ES"
        or (prev in "BI" and tag in "BSO")
        or (prev not in "O." and prev_type != kind)
    )


def _starts(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    return tag in "BS" or (prev in "ESO" and tag in "EI") or (tag not in "O." and prev_type != kind)


def entities(tags: Sequence[str]) -> list[Span]:
    """The spans of one sentence's tags (BIO, IOB1 or IOBES prefixes)."""
    spans: list[Span] = []
    prev, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        mark, kind = _split(tag)
        if _ends(prev, mark, prev_type, kind):
            spans.append((prev_type, begin, i - 1))
        if _starts(prev, mark, prev_type, kind):
            begin = i
        prev, prev_type = mark, kind
    return spans


def span_report(
    true: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], types: Sequence[str] | None = None
) -> ClassReport:
    """Per entity type: precision, recall and F1 of the predicted spans, and support (true
    spans); ``accuracy`` is the share of words whose tag is right. Rows: ``types``, by
    default (as seqeval) those in the true or the predicted spans."""
    true_spans = {(n, *s) for n, tags in enumerate(true) for s in entities(tags)}
    found_spans = {(n, *s) for n, tags in enumerate(predicted) for s in entities(tags)}
    types = sorted({s[1] for s in true_spans | found_spans}) if types is None else list(types)
    hits = np.array([sum(1 for s in true_spans & found_spans if s[1] == t) for t in types], np.float64)
    support = np.array([sum(1 for s in true_spans if s[1] == t) for t in types], np.int64)
    found = np.array([sum(1 for s in found_spans if s[1] == t) for t in types], np.int64)
    precision, recall = safe_divide(hits, found), safe_divide(hits, support)
    f1 = safe_divide(2 * precision * recall, precision + recall)
    words = [(a, b) for t, p in zip(true, predicted, strict=True) for a, b in zip(t, p, strict=True)]
    total = int(support.sum())
    micro_p, micro_r = safe_divide(hits.sum(), found.sum()), safe_divide(hits.sum(), support.sum())
    weights = support / total if total else np.zeros(len(types))

    def scores(p: SupportsFloat, r: SupportsFloat, f: SupportsFloat, s: SupportsInt) -> ClassScores:
        return ClassScores(precision=float(p), recall=float(r), f1=float(f), support=int(s))

    return ClassReport(
        classes=tuple(scores(*row) for row in zip(precision, recall, f1, support, strict=True)),
        names=tuple(types),
        accuracy=sum(a == b for a, b in words) / len(words) if words else 0.0,
        micro=scores(micro_p, micro_r, safe_divide(2 * micro_p * micro_r, micro_p + micro_r), total),
        macro=scores(
            precision.mean() if types else 0, recall.mean() if types else 0, f1.mean() if types else 0, total
        ),
        weighted=scores(weights @ precision, weights @ recall, weights @ f1, total),
    )


def compare_spans(
    labels: np.ndarray, float_out: np.ndarray, artifact_out: np.ndarray, names: Sequence[str]
) -> ClassComparison:
    """Both models' span reports, with the same rows: every type either one finds or the truth holds."""
    true, float_tags = word_tags(labels, float_out, names)
    artifact_tags = word_tags(labels, artifact_out, names)[1]
    types = sorted({s[0] for tags in (*true, *float_tags, *artifact_tags) for s in entities(tags)})
    return ClassComparison(
        float_model=span_report(true, float_tags, types), artifact=span_report(true, artifact_tags, types)
    )


def word_tags(labels: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> tuple[list, list]:
    """Per sentence, the true and the predicted tag of each scored word: ``labels`` (samples,
    tokens) holds tag indices or ``IGNORED``; ``scores`` (samples, tokens, tags)."""
    predicted = np.asarray(scores).argmax(axis=-1)
    true, found = [], []
    for row, guess in zip(np.asarray(labels), predicted, strict=True):
        scored = row != IGNORED
        true.append([names[i] for i in row[scored]])
        found.append([names[i] for i in guess[scored]])
    return true, found
