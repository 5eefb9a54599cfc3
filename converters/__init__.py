"""Conversion paths, one module each, registered under their format key.

Importing this package is light: converter modules import TensorFlow and friends
only inside the functions that use them.
"""

from __future__ import annotations

from edgekit.converters.base import (
    Artifact,
    ConversionSettings,
    Converter,
    converter_for,
    format_choices,
    precision_choices,
    ready_made,
)
from edgekit.converters.onnx import ONNXConverter
from edgekit.converters.tflite import TFLiteConverter

__all__ = [
    "Artifact",
    "ConversionSettings",
    "Converter",
    "ONNXConverter",
    "TFLiteConverter",
    "converter_for",
    "format_choices",
    "precision_choices",
    "ready_made",
]
