"""De-identification of captured text, before it is sealed: what a person typed or said to a
device is personal, so a sample keeps the shape of the command and loses who and what.

Masked, in this order:
- e-mail addresses → ``[EMAIL]``;
- URLs → ``[URL]``;
- every run of digits, with the separators numbers are written with (phone numbers, dates,
  times, codes, "21.5") → ``[NUM]``;
- each name on the allowlist (telemetry ``deid_names``), as a whole word in any case → ``[NAME]``.

The patterns are deliberately broad: a masked temperature costs a retraining example a
detail, and an unmasked phone number costs a person their privacy. Text longer than
``MAX_CAPTURED_CHARS`` is cut first, so no capture holds more than that.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_CAPTURED_CHARS = 256
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_NUMBER = re.compile(r"\+?\d(?:[\d\s().:/,-]*\d)?")


class Deidentifier:
    def __init__(self, names: Iterable[str] = ()) -> None:
        words = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
        self._names = (
            re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
            if words
            else None
        )

    def __call__(self, text: str) -> str:
        text = text[:MAX_CAPTURED_CHARS]
        text = _EMAIL.sub("[EMAIL]", text)
        text = _URL.sub("[URL]", text)
        text = _NUMBER.sub("[NUM]", text)
        return self._names.sub("[NAME]", text) if self._names else text
