"""The telemetry wire format: topics, and the one report schema both ends validate.

The schema is the allowlist: a device builds each payload from these models, which forbid
any other field.

The versioning rule, for every message kind:

- A change that only **adds optional fields** keeps ``v``. An older collector reading a
  newer device's message ignores the fields it does not know and counts them
  (``read_message``), so a fleet can update its devices before its collectors.
- A change that **breaks the meaning** of a message (a field removed, renamed, retyped,
  re-scaled, or made required) bumps ``SCHEMA_VERSION``. Collectors skip and count messages
  of a version they do not know ("unknown_version"), as they skip malformed ones.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
Kind = Literal["report", "sample", "status"]
KINDS: tuple[Kind, ...] = get_args(Kind)
"""The message kinds, each the last level of its topic."""
MAX_PAYLOAD_BYTES = 256 * 1024
"""A collector skips anything larger; a device never builds anything near it."""

LATENCY_EDGES_MS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
"""Fixed log-spaced upper bucket edges; the last bucket holds everything slower."""
CONFIDENCE_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

FLEET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
SAMPLE_MAGIC = b"EKS1"


def topic(fleet: str, node: str, kind: Kind) -> str:
    return f"edgekit/{fleet}/{node}/{kind}"


def fleet_filter(fleet: str, kind: Kind) -> str:
    return f"edgekit/{fleet}/+/{kind}"


def check_fleet_name(fleet: str) -> str:
    if not re.match(FLEET_NAME, fleet):
        raise ValueError(f"fleet name {fleet!r}: use letters, digits, '-' and '_' (at most 64)")
    return fleet


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    name: str
    version: int
    format: str
    precision: str


class InputStats(_Strict):
    """Per feature; only sent without differential privacy, and only for windows of at least k."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]


class Drift(_Strict):
    """Population stability index against the bundle's reference statistics."""

    input_psi: float = Field(description="largest PSI over the input features")
    output_psi: float | None = Field(description="PSI of the predicted-class distribution")
    score: float


class Privacy(_Strict):
    k: int
    suppressed_buckets: int
    dp_epsilon: float | None = None
    dp_spent: float | None = None
    dp_budget: float | None = None


class Report(_Strict):
    v: Literal[1]
    kind: Literal["report"]
    node: str = Field(pattern=r"^[0-9a-f]{32}$", description="epoch pseudonym, never the device id")
    epoch: int
    seq: int = Field(ge=1)
    start: float
    end: float
    model: ModelRef
    inferences: int
    calls: int
    errors: int
    latency_ms: tuple[int, ...] = Field(description="counts per LATENCY_EDGES_MS bucket")
    classes: tuple[int, ...] | None
    confidence: tuple[int, ...] | None = Field(description="counts per CONFIDENCE_EDGES bucket")
    feature_bins: tuple[tuple[int, ...], ...] | None
    inputs: InputStats | None
    drift: Drift | None
    samples: int = Field(description="retraining samples captured in this window")
    dropped: int = Field(description="outbox entries this device dropped so far (oldest first, when full)")
    privacy: Privacy


class SampleHeader(_Strict):
    """Cleartext part of a sample message; bound into the encryption as HPKE info."""

    v: Literal[1]
    kind: Literal["sample"]
    node: str = Field(pattern=r"^[0-9a-f]{32}$")
    epoch: int
    seq: int = Field(ge=1)
    model: ModelRef
    count: int


Message = TypeVar("Message", bound=BaseModel)


def read_message(schema: type[Message], data: Any) -> tuple[Message, tuple[str, ...]]:
    """Validate ``data`` as ``schema`` under the versioning rule: fields this version does
    not know are dropped (and returned, dotted), everything else is checked strictly.
    Raises pydantic's ValidationError for a message this version cannot read."""
    known, unknown = _known_fields(schema, data, "")
    return schema.model_validate(known), unknown


def _known_fields(schema: type[BaseModel], data: Any, prefix: str) -> tuple[Any, tuple[str, ...]]:
    if not isinstance(data, dict):
        return data, ()
    known: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in data.items():
        field = schema.model_fields.get(name)
        if field is None:
            unknown.append(prefix + name)
            continue
        nested = next((t for t in (field.annotation, *get_args(field.annotation)) if _is_model(t)), None)
        if nested is not None:
            value, deeper = _known_fields(nested, value, f"{prefix}{name}.")
            unknown += deeper
        known[name] = value
    return known, tuple(unknown)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
