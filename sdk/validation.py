"""One line from a pydantic ValidationError, naming each bad key: for profiles, telemetry
settings and any other config a user writes by hand."""

from __future__ import annotations

from pydantic import ValidationError


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
