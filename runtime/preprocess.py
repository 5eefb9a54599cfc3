"""Image files to model input, from the bundle's preprocessing: layout and calibrated range."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.core.errors import InputError, MissingDependencyError
from edgekit.core.manifest import Manifest
from edgekit.runtime.backends import TensorInfo

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_image(path: Path, manifest: Manifest, spec: TensorInfo) -> np.ndarray:
    """A batch of one: resized to the input, gray or RGB by its channels, pixel values 0-255
    mapped linearly onto the range the model was calibrated on."""
    layout, value_range = manifest.preprocessing.layout, manifest.preprocessing.input_range
    if layout not in ("NHWC", "NCHW") or value_range is None:
        raise InputError(
            f"{path}: this bundle defines no image preprocessing (it needs an image layout and a "
            "calibrated input range); pass the input as a .npy array"
        )
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError("pillow", "image", "image input") from exc
    _, *dims = spec.shape
    height, width, channels = dims if layout == "NHWC" else (dims[1], dims[2], dims[0])
    if height is None or width is None or channels not in (1, 3):
        raise InputError(f"{path}: the model input {spec.shape} is not a fixed-size gray or RGB image")
    try:
        with Image.open(path) as image:
            pixels = image.convert("L" if channels == 1 else "RGB").resize((width, height))
            array = np.asarray(pixels, dtype=np.float32).reshape(height, width, channels)
    except OSError as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc
    low, high = value_range
    array = low + array / 255.0 * (high - low)
    if layout == "NCHW":
        array = array.transpose(2, 0, 1)
    return array[np.newaxis]
