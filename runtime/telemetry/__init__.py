"""Anonymized, durable MQTT telemetry from the device (see docs/telemetry.md)."""

from edgekit.runtime.telemetry.device import Telemetry, TelemetryConfigError

__all__ = ["Telemetry", "TelemetryConfigError"]
