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

import functools
import re
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

SCHEMA_VERSION: Literal[1] = 1
Kind = Literal["report", "sample", "status"]
KINDS: tuple[Kind, ...] = get_args(Kind)
"""The message kinds, each the last level of its topic."""
MAX_PAYLOAD_BYTES = 256 * 1024
"""A collector skips anything larger; a device never builds anything near it."""

LATENCY_EDGES_MS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
"""Fixed log-spaced upper bucket edges; the last bucket holds everything slower."""
CONFIDENCE_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

MAX_COUNT = 10**9
RATE_EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
"""Decode tokens per second, a decoder's buckets."""
LENGTH_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
"""Tokens in a prompt or a generation, a decoder's buckets (counts below each edge)."""
STOP_REASONS = ("length", "stop_token", "stop_string", "context", "cancelled")
"""Most of anything one window can count (a billion inferences in one report is no device)."""
MAX_SEQ = 2**53
"""Sequence numbers stay exact in every JSON reader."""
MAX_AGE_S = 30 * 86400
"""Oldest window a collector accepts: the outbox keeps a week, brokers expire after another."""
MAX_CLOCK_AHEAD_S = 86400
MAX_WINDOW_S = 7 * 86400

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
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Counts = Annotated[tuple[Count, ...], Field(max_length=65536)]
Stats = Annotated[tuple[float, ...], Field(max_length=65536)]
Seq = Annotated[int, Field(ge=1, le=MAX_SEQ)]
Epoch = Annotated[int, Field(ge=0, le=2**40)]
Node = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Name = Annotated[str, Field(max_length=128)]


class ModelRef(_Strict):
    name: Name
    version: int = Field(ge=0, le=MAX_SEQ)
    format: Name
    precision: Name


class InputStats(_Strict):
    """Per feature; only sent without differential privacy, and only for windows of at least k."""

    mean: Stats
    std: Stats
    min: Stats
    max: Stats


class Drift(_Strict):
    """Population stability index against the bundle's reference statistics."""

    input_psi: float = Field(ge=0, description="largest PSI over the input features")
    output_psi: float | None = Field(ge=0, description="PSI of the predicted-class distribution")
    score: float = Field(ge=0)


class Privacy(_Strict):
    """What protected this report, so that a reader can check it (docs/privacy.md)."""

    k: Count
    suppressed_buckets: Count
    dp_epsilon: float | None = Field(default=None, ge=0, description="ε this report cost")
    dp_spent: float | None = Field(default=None, ge=0, description="ε spent, this report included")
    dp_budget: float | None = Field(default=None, ge=0)
    dp_unit: Literal["inference", "window", "generation"] | None = Field(
        default=None, description="what ε protects: one inference, a device's whole window, or one generation"
    )
    dp_clip: int | None = Field(default=None, ge=1, description="a window's inferences and calls at most")
    dp_sensitivity: int | None = Field(default=None, ge=1, description="L1; noise scale = sensitivity / ε")
    capture: Literal["none", "low-confidence", "random"] = Field(
        default="none", description="which raw inputs this device seals to the fleet key"
    )
    deidentified: bool | None = Field(default=None, description="captured text masked; None: no text")


Lengths = Annotated[
    tuple[Count, ...], Field(min_length=len(LENGTH_EDGES) + 1, max_length=len(LENGTH_EDGES) + 1)
]


class GenerationStats(_Strict):
    """A decoder's window: how many generations, and per generation its time to first token,
    decode speed, prompt and new lengths and why it stopped, each a histogram."""

    generations: Count
    ttft_ms: tuple[Count, ...] = Field(
        min_length=len(LATENCY_EDGES_MS) + 1, max_length=len(LATENCY_EDGES_MS) + 1,
        description="time to first token, per LATENCY_EDGES_MS bucket",
    )  # fmt: skip
    tokens_per_s: tuple[Count, ...] = Field(min_length=len(RATE_EDGES) + 1, max_length=len(RATE_EDGES) + 1)
    prompt_tokens: Lengths
    new_tokens: Lengths
    stop_reasons: tuple[Count, ...] = Field(
        min_length=len(STOP_REASONS), max_length=len(STOP_REASONS), description="per STOP_REASONS"
    )


class Report(_Strict):
    v: Literal[1]
    kind: Literal["report"]
    node: Node = Field(description="epoch pseudonym, never the device id")
    epoch: Epoch
    seq: Seq
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    model: ModelRef
    inferences: Count
    calls: Count
    errors: Count
    latency_ms: tuple[Count, ...] = Field(
        min_length=len(LATENCY_EDGES_MS) + 1,
        max_length=len(LATENCY_EDGES_MS) + 1,
        description="counts per LATENCY_EDGES_MS bucket",
    )
    classes: Counts | None
    confidence: tuple[Count, ...] | None = Field(
        max_length=len(CONFIDENCE_EDGES) + 1, description="counts per CONFIDENCE_EDGES bucket"
    )
    feature_bins: Annotated[tuple[Counts, ...], Field(max_length=65536)] | None
    inputs: InputStats | None
    drift: Drift | None
    samples: Count = Field(description="retraining samples captured in this window")
    dropped: int = Field(
        ge=0, le=MAX_SEQ, description="outbox entries this device dropped so far (oldest first, when full)"
    )
    privacy: Privacy
    generation: GenerationStats | None = Field(
        default=None, description="a decoder's generations; its latency_ms is then the time to first token"
    )

    @model_validator(mode="after")
    def _plausible(self, info: ValidationInfo) -> Report:
        """Where the reader passes ``{"now": seconds}`` as the validation context (a
        collector does), the window must be plausible: it ends after it starts, lasts under a
        week, and ends near now. A device does not check its own: its clock may jump (a board
        without a battery-backed clock boots in 1970), and it must still report. Counts are
        not compared with each other: differential privacy noises each on its own."""
        now = (info.context or {}).get("now")
        if now is None:
            return self
        if not self.start <= self.end <= self.start + MAX_WINDOW_S:
            raise ValueError("the window's end must follow its start, within a week")
        if not now - MAX_AGE_S <= self.end <= now + MAX_CLOCK_AHEAD_S:
            raise ValueError("the window is not near now: a month old, or a day ahead, or more")
        return self


class SampleHeader(_Strict):
    """Cleartext part of a sample message; bound into the encryption as HPKE info."""

    v: Literal[1]
    kind: Literal["sample"]
    node: Node
    epoch: Epoch
    seq: Seq
    model: ModelRef
    count: Count


Message = TypeVar("Message", bound=BaseModel)


def read_message(
    schema: type[Message], data: Any, now: float | None = None
) -> tuple[Message, tuple[str, ...]]:
    """Validate ``data`` as ``schema`` under the versioning rule: fields this version does
    not know are dropped (and returned, dotted), everything else is checked strictly, with
    timestamps near ``now`` when given. Raises pydantic's ValidationError for a message this
    version cannot read."""
    known, unknown = _known_fields(schema, data, "")
    return schema.model_validate(known, context={"now": now}), unknown


def _known_fields(schema: type[BaseModel], data: Any, prefix: str) -> tuple[Any, tuple[str, ...]]:
    if not isinstance(data, dict):
        return data, ()
    known: dict[str, Any] = {}
    unknown: list[str] = []
    fields = _fields(schema)
    for name, value in data.items():
        if name not in fields:
            unknown.append(prefix + name)
            continue
        nested = fields[name]
        if nested is not None:
            value, deeper = _known_fields(nested, value, f"{prefix}{name}.")
            unknown += deeper
        known[name] = value
    return known, tuple(unknown)


@functools.cache
def _fields(schema: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Each field's name, with the model it holds if any (read once per schema: a collector
    reads thousands of messages a second)."""
    return {
        name: next((t for t in (field.annotation, *get_args(field.annotation)) if _is_model(t)), None)
        for name, field in schema.model_fields.items()
    }


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
