"""Anonymized, durable MQTT telemetry from the device (see docs/telemetry.md)."""

from edgekit.runtime.telemetry.config import TelemetryConfig, TelemetryConfigError
from edgekit.runtime.telemetry.device import Telemetry

__all__ = ["Telemetry", "TelemetryConfig", "TelemetryConfigError"]
