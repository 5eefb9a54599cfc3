"""Inference backends, one per artifact format, registered under that format's key."""

from __future__ import annotations

from edgekit.runtime.backends.base import Backend, Placement, TensorInfo, backend_for, zeros_feed
from edgekit.runtime.backends.onnx import ONNXBackend
from edgekit.runtime.backends.tflite import TFLiteBackend

__all__ = ["Backend", "ONNXBackend", "Placement", "TFLiteBackend", "TensorInfo", "backend_for", "zeros_feed"]
