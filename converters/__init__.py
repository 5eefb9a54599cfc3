"""Conversion paths, one module each, registered under their format key.

Importing this package is light: converter modules import TensorFlow and friends
only inside the functions that use them.
"""

from __future__ import annotations

from edgekit.converters.base import Artifact, Converter, converter_for
from edgekit.converters.tflite import TFLiteConverter

__all__ = ["Artifact", "Converter", "TFLiteConverter", "converter_for"]
