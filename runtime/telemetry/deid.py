"""De-identification of captured text, before it is sealed: what a person typed or said to a
device is personal, so a sample keeps the shape of the command and loses who and what.

Each detector claims spans of the text that no earlier one claimed, in this order:

- ``[EMAIL]`` and ``[URL]``;
- ``[IBAN]`` (ISO 13616, mod-97 checked) and ``[CARD]`` (12 to 19 digits, Luhn checked);
- ``[IP]``: IPv4 and IPv6 addresses, checked by ``ipaddress``;
- ``[DATE]``: 2024-05-01, 01.05.2024, 1/5/24, or a day and a month's name (English, German,
  French, Spanish, Italian, Dutch), with or without the year;
- ``[ADDRESS]``: a street by its type (Hauptstraße 5, Kerkstraat 12, rue de la Paix,
  Via Roma 10, 391 Johnson Burg Apt. 636), with its house number and flat;
- ``[POSTCODE]``: the postcodes that hold letters (SW1A 1AA, 1012 AB, K1A 0B1);
- ``[PHONE]``: a run of 7 or more digits with the separators phone numbers are written with,
  or one that starts with + or 00, with its extension;
- ``[NUM]``: every other run of digits (dates, times, codes, "21.5");
- ``[NAME]``: each name on the allowlist (``deid_names``), whole words in any case, and each
  word a name tagger (``deid_model``, a token-classification bundle) tags as a name.

The patterns are broad on purpose: a masked temperature costs a retraining example a
detail, and an unmasked phone number costs a person their privacy. docs/privacy.md measures
recall and precision per type on a labelled corpus. Text longer than ``MAX_CAPTURED_CHARS``
is cut first, so no capture holds more than that.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

MAX_CAPTURED_CHARS = 256
Span = tuple[int, int, str]
NameFinder = Callable[[str], list[tuple[int, int]]]
"""A tagger's names in a text: (start, end) character offsets."""
Finder = Callable[[str, int, int], list[tuple[int, int]]]
"""(text, from, to) -> the spans found in text[from:to]."""

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){11,18}(?![\d-]|\s?(?:x|ext))")
_IP = re.compile(
    r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])|(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])"
)
_MONTH_NAMES = (
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec "
    "januar februar märz april mai juni juli august september oktober november dezember okt dez "
    "janvier février fevrier mars avril mai juin juillet août aout septembre octobre novembre décembre "
    "enero febrero marzo abril mayo junio julio agosto septiembre setiembre octubre noviembre diciembre "
    "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre "
    "januari februari maart april mei juni juli augustus september oktober november december"
).split()
_MONTHS = "|".join(sorted(set(_MONTH_NAMES), key=len, reverse=True))
_DATE = re.compile(
    r"\b(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-](?:\d{4}|\d{2}))\b|"
    rf"\b(?:\d{{1,2}}(?:st|nd|rd|th|er|º|\.)?\s+(?:de\s+)?(?:{_MONTHS})\.?(?:\s+(?:de\s+)?\d{{2,4}})?"
    rf"|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?(?:\s+\d{{2,4}})?)\b",
    re.IGNORECASE,
)
_NUMBER = r"\d+[a-zA-Z]?(?:\s?[-/]\s?\d+[a-zA-Z]?)?"
_UNIT_WORD = (
    r"(?i:apt\.?|apartment|suite|ste\.?|unit|flat|studio|floor|fl\.?|no\.?|nr\.?|#|piso|puerta|escalera"
    r"|planta|piano|appartamento|interno|scala|étage|bus)"
)
_UNIT = rf"(?:,?\s*{_UNIT_WORD}\s*[A-Za-z]?\d+\w?\b)"
_WORD = r"[A-ZÀ-ÖØ-Þ][\wÀ-ÿ'’.-]*"
_PARTICLE = (
    r"(?:de|del|de la|des|du|di|della|dei|degli|le|la|les|l'|d'|y|von|van|der|den|am|an|im|auf|of|the)"
)
_NAMED = rf"{_WORD}(?:\s+(?:{_PARTICLE}\s+)?{_WORD}){{0,4}}"
_SUFFIXES = (
    r"(?i:stra(?:ß|ss)e|str\.|weg|gasse|allee|platz|ring|damm|ufer|chaussee|steig|pfad|markt|hof|baan|straat"
    r"|laan|plein|gracht|kade|dijk|singel|dreef|pad|steeg|boulevard|park|wal|veld|berg|dal)"
)
_PREFIXES = (
    r"(?i:rue|avenue|av\.|boulevard|bd\.?|chemin|allée|impasse|place|quai|route|cours|passage|square|via|viale"
    r"|piazza|piazzale|corso|contrada|borgo|largo|vicolo|strada|calle|c\.|avenida|avda\.?|paseo|plaza|camino"
    r"|carrer|ronda|rambla|travesía|glorieta|callejón|cuesta|urbanización|pasaje|vía|carretera|c/|acceso"
    r"|alameda|cañada|pasadizo|vial|canale|incrocio|rotonda|stretto|traversa)"
)
_ADDRESS = re.compile(
    rf"\b\d+[a-zA-Z]?\s+{_NAMED}{_UNIT}?"
    rf"|(?:\b\d+[a-zA-Z]?,?\s+)?{_PREFIXES}\s+(?:{_PARTICLE}\s+)*{_NAMED}(?:,?\s+{_NUMBER})?{_UNIT}?"
    rf"|(?:{_WORD}\s+){{0,2}}\b(?:[\wÀ-ÿ]+-)*[\wÀ-ÿ]*?{_SUFFIXES}(?:\b|(?<=\.)),?\s+{_NUMBER}{_UNIT}?"
    rf"|{_UNIT_WORD}\s*[A-Za-z]?\d+\w?,?\s+{_NAMED}(?:,?\s+{_NUMBER})?"
)
_POSTCODE = re.compile(
    r"\b(?:[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}|\d{4}\s?[A-Z]{2}|[A-Z]\d[A-Z]\s?\d[A-Z]\d)\b"
)
_EXTENSION = r"(?:\s?(?:x|ext\.?)\s?\d+)?"
_PHONE = re.compile(rf"(?:\+|\b00)\d[\d\s().-]{{5,}}\d{_EXTENSION}|\(?\b\d[\d\s().-]{{5,}}\d{_EXTENSION}")
_DIGITS = re.compile(r"\+?\d(?:[\d\s().:/,-]*\d)?")


class Deidentifier:
    def __init__(self, names: Iterable[str] = (), tagger: NameFinder | None = None) -> None:
        words = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
        self._names = (
            re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
            if words
            else None
        )
        self._tagger = tagger

    def spans(self, text: str) -> list[Span]:
        """What would be masked: (start, end, type), in order, not overlapping. Where a match
        overlaps an earlier span, what is left of it is searched again on its own."""
        claimed: list[Span] = []
        for kind, find in self._detectors():
            for start, end in find(text, 0, len(text)):
                if not any(start < b and a < end for a, b, _ in claimed):
                    claimed.append((start, end, kind))
                    continue
                for left, right in _unclaimed(text, start, end, claimed):
                    claimed += [(a, b, kind) for a, b in find(text, left, right)]
        return sorted(claimed)

    def __call__(self, text: str) -> str:
        text = text[:MAX_CAPTURED_CHARS]
        out, last = [], 0
        for start, end, kind in self.spans(text):
            out += [text[last:start], f"[{kind}]"]
            last = end
        return "".join(out) + text[last:]

    def _detectors(self) -> Iterator[tuple[str, Finder]]:
        yield "EMAIL", _finder(_EMAIL)
        yield "URL", _finder(_URL)
        yield "IBAN", _finder(_IBAN, _iban_valid)
        yield "CARD", _finder(_CARD, _luhn_valid)
        yield "IP", _finder(_IP, _ip_valid)
        yield "DATE", _finder(_DATE)
        yield "ADDRESS", _finder(_ADDRESS)
        yield "POSTCODE", _finder(_POSTCODE)
        yield "PHONE", _finder(_PHONE, _phone_like)
        yield "NUM", _finder(_DIGITS)
        if self._names is not None:
            yield "NAME", _finder(self._names)
        tagger = self._tagger
        if tagger is not None:
            yield "NAME", lambda text, pos, end: [(a, b) for a, b in tagger(text) if pos <= a and b <= end]


def _unclaimed(text: str, start: int, end: int, claimed: list[Span]) -> Iterator[tuple[int, int]]:
    """The parts of [start, end) no earlier span holds, trimmed, that hold a letter or digit:
    a match that overlaps an earlier one still masks what is left of it."""
    cuts = sorted((a, b) for a, b, _ in claimed if a < end and start < b)
    for a, b in cuts:
        if a > start:
            yield from _trimmed(text, start, a)
        start = max(start, b)
    if start < end:
        yield from _trimmed(text, start, end)


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    piece = text[start:end]
    left = len(piece) - len(piece.lstrip(" ,.-/:()"))
    right = len(piece.rstrip(" ,.-/:()"))
    if any(c.isalnum() for c in piece[left:right]):
        yield start + left, start + right


def _finder(pattern: re.Pattern[str], valid: Callable[[str], bool] | None = None) -> Finder:
    def find(text: str, pos: int, end: int) -> list[tuple[int, int]]:
        found = pattern.finditer(text, pos, end)
        return [m.span() for m in found if valid is None or valid(m.group())]

    return find


def _iban_valid(found: str) -> bool:
    """ISO 7064 mod 97-10, as ISO 13616 checks an IBAN."""
    compact = found.replace(" ", "").upper()
    digits = "".join(str(int(c, 36)) for c in compact[4:] + compact[:4])
    return 15 <= len(compact) <= 34 and int(digits) % 97 == 1


def _luhn_valid(found: str) -> bool:
    digits = [int(c) for c in found if c.isdigit()]
    odd = digits[-1::-2]
    even = [sum(divmod(2 * d, 10)) for d in digits[-2::-2]]
    return 12 <= len(digits) <= 19 and (sum(odd) + sum(even)) % 10 == 0


def _ip_valid(found: str) -> bool:
    try:
        ipaddress.ip_address(found)
    except ValueError:
        return False
    return True


def _phone_like(found: str) -> bool:
    digits = sum(c.isdigit() for c in found)
    return digits >= 7 or found.startswith(("+", "00"))


NAME_TAGS = ("NAME", "PER", "PERSON")
"""A tagger's labels for a person's name, with or without a B-/I- prefix."""


class NameTagger:
    """``deid_model``: a token-classification bundle whose name tags mark the words to mask."""

    def __init__(self, model: Any) -> None:
        self._model = model

    @classmethod
    def load(cls, source: str) -> NameTagger:
        from edgekit.core.errors import InputError
        from edgekit.runtime.model import Model

        model = Model.load(source)
        spec, labels = model.manifest.text, model.manifest.labels or ()
        if spec is None or spec.task != "tokens" or not any(_is_name(label) for label in labels):
            model.close()
            raise InputError(
                f"deid_model {source!r} is not a name tagger: it must tag each word of a text, with "
                f"labels such as B-NAME and I-NAME (see docs/privacy.md)"
            )
        return cls(model)

    def __call__(self, text: str) -> list[tuple[int, int]]:
        words = list(re.finditer(r"\S+", text))
        if not words:
            return []
        (tagged,) = self._model.tag_text([text])
        named = [bool(tag and _is_name(tag)) for _, tag in tagged]
        return [word.span() for word, name in zip(words, _whole_names(words, named), strict=True) if name]

    def close(self) -> None:
        self._model.close()


_PARTICLES = frozenset("van der den de du da das dos di del della la le von zu ten ter y".split())


def _whole_names(words: list[re.Match[str]], named: list[bool]) -> list[bool]:
    """A name the tagger found goes on over the capitalized words and name particles that
    follow it (Gill in "Denis Gill", "van der Berg"), and back over titles before it
    ("Prof.", "Dipl.-Ing."): a tagger that starts a name rarely misses where it is."""
    whole = list(named)
    texts = [word.group() for word in words]
    for i in range(1, len(words)):
        if whole[i - 1] and not whole[i]:
            after = next((t for t in texts[i:] if t not in _PARTICLES), "")
            whole[i] = texts[i][:1].isupper() or (texts[i] in _PARTICLES and after[:1].isupper())
    for i in range(len(words) - 2, -1, -1):
        word = texts[i]
        if whole[i + 1] and not whole[i] and word[:1].isupper() and word.endswith("."):
            whole[i] = True
    return whole


def _is_name(label: str) -> bool:
    return label.upper().removeprefix("B-").removeprefix("I-") in NAME_TAGS
