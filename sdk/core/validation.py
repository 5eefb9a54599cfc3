"""Validation helpers: one line from a pydantic ValidationError, naming each bad key (for
profiles, telemetry settings and any other config a user writes by hand), and validated
copies of records."""

from __future__ import annotations

import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError


def describe(exc: ValidationError, noun: str = "key") -> str:
    """Each bad ``noun`` (key, setting) by its dotted name, what was found and what was expected."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown {noun} '{key}'")
        elif err["type"] == "missing":
            parts.append(f"missing {noun} '{key}'")
        else:
            message = err["msg"].removeprefix("Value error, ")
            parts.append(f"{noun} '{key}': {message[:1].lower()}{message[1:]} (got {err['input']!r})")
    return "; ".join(parts)


ASCII_NUMBER = re.compile(r"0|[1-9][0-9]{0,17}")
"""A number read from text (a topic, path, header or form): ASCII digits only, as written
plainly: str.isdigit() takes '²', which int() refuses, and int() refuses 4,301 digits."""


def ascii_int(text: str | None) -> int | None:
    """``text`` as a non-negative integer if it is one written plainly, else None."""
    return int(text) if text is not None and ASCII_NUMBER.fullmatch(text) else None


Record = TypeVar("Record", bound=BaseModel)


def updated(record: Record, **changes: object) -> Record:
    """A copy of ``record`` with ``changes``, validated as a new record would be.

    pydantic's ``model_copy(update=...)`` skips validation: it would keep, and sign, a
    ``phase="bogus"`` or a negative size. Nested records are taken as they are (they were
    validated when made)."""
    unknown = set(changes) - set(type(record).model_fields)
    if unknown:
        raise TypeError(f"{type(record).__name__} has no field {', '.join(sorted(unknown))}")
    return type(record).model_validate({**dict(record), **changes})
