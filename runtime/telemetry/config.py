"""Telemetry settings: one frozen, validated object.

``Telemetry(broker, fleet, **settings)``, ``Telemetry.from_file`` and ``edgekit run
--telemetry-config`` all build a ``TelemetryConfig``; an unknown setting or a wrong value is
one line that names it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.core.errors import InputError
from edgekit.core.telemetry import check_fleet_name
from edgekit.core.validation import describe
from edgekit.runtime.telemetry.broker import Broker
from edgekit.runtime.telemetry.window import Capture


class TelemetryConfigError(InputError):
    """A telemetry setting is wrong."""


class TelemetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: str = Field(description="mqtt://[user@]host:1883 or mqtts://host:8883")
    fleet: str
    device_id: str | None = Field(default=None, description="default: this machine's id")
    window_s: float = Field(default=60.0, gt=0, description="seconds aggregated into one report")
    k_anonymity: int = Field(default=5, ge=1, description="histogram buckets below this count are zeroed")
    dp_epsilon: float | None = Field(default=None, gt=0, description="differential privacy per window")
    dp_budget: float | None = Field(default=None, gt=0, description="total ε; default 100 windows' worth")
    dp_clip: int | None = Field(
        default=None, ge=1, description="ε protects a device's whole window, scaled to this many inferences"
    )
    capture: str = Field(default="none", description="none, low-confidence[:0.5] or random[:0.01]")
    capture_max: int = Field(default=8, ge=0, description="samples kept per window at most")
    capture_max_bytes: int = Field(default=256 * 1024, ge=0)
    deidentify: bool = Field(
        default=True,
        description="text models: mask numbers, e-mail addresses, URLs and deid_names in captures",
    )
    deid_names: tuple[str, ...] = Field(default=(), description="names masked as [NAME] in captured text")
    deid_model: str | None = Field(
        default=None,
        description="a name tagger (an installed bundle or .ekb path): words it tags as names become [NAME]",
    )
    fleet_dir: Path | None = Field(default=None, description="default: $EDGEKIT_HOME/fleets/FLEET")
    outbox: Path | None = Field(default=None, description="default: $EDGEKIT_HOME/telemetry/FLEET.sqlite")
    ledger: Path | None = Field(default=None, description="default: $EDGEKIT_HOME/privacy/FLEET.ledger")
    outbox_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    outbox_max_age_s: float = Field(default=7 * 86400, gt=0)
    epoch_s: float = Field(default=86400, gt=0, description="how long one pseudonym lasts")
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    username: str | None = None
    password: str | None = Field(default=None, repr=False, description="default: $EDGEKIT_MQTT_PASSWORD")
    backoff_max_s: float = Field(default=30.0, gt=0)
    message_expiry_s: int = Field(default=7 * 86400, gt=0)
    close_timeout_s: float = Field(default=5.0, ge=0)

    @field_validator("fleet")
    @classmethod
    def _fleet_name(cls, value: str) -> str:
        return check_fleet_name(value)

    @field_validator("capture")
    @classmethod
    def _capture(cls, value: str) -> str:
        Capture(value)
        return value

    @classmethod
    def build(cls, where: str = "telemetry", **settings: Any) -> TelemetryConfig:
        """Validated settings, or a TelemetryConfigError that names each bad one."""
        try:
            return cls(**settings)
        except ValidationError as exc:
            problems = describe(exc, "setting")
            raise TelemetryConfigError(f"{where}: {problems} (see docs/telemetry.md)") from None

    @classmethod
    def from_file(cls, path: Path | str, **overrides: Any) -> TelemetryConfig:
        """The ``[telemetry]`` table of a TOML file; ``overrides`` that are not None win."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib

        try:
            table = tomllib.loads(Path(path).read_text()).get("telemetry")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TelemetryConfigError(f"telemetry config {path}: {exc}") from exc
        if not isinstance(table, dict):
            raise TelemetryConfigError(f"telemetry config {path}: no [telemetry] table")
        settings = {**table, **{k: v for k, v in overrides.items() if v is not None}}
        return cls.build(f"telemetry config {path}", **settings)

    @property
    def dp_total(self) -> float | None:
        """The privacy budget in force: dp_budget, or 100 windows' worth of dp_epsilon."""
        if self.dp_budget is not None or self.dp_epsilon is None:
            return self.dp_budget
        return 100 * self.dp_epsilon

    def endpoint(self) -> Broker:
        return Broker.parse(
            self.broker, ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key,
            username=self.username, password=self.password,
        )
