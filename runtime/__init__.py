"""The on-device side of edgekit. Imports stay light: never TensorFlow, and engines lazily."""

from edgekit.runtime.model import Model, ModelInfo
from edgekit.runtime.telemetry import Telemetry

__all__ = ["Model", "ModelInfo", "Telemetry"]
