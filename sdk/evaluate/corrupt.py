"""Common corruptions at severities 1 to 5, made here and seeded, so a run repeats exactly.

Images (batch, height, width, channels) are corrupted in the unit range of the evaluation
data's own range and mapped back: Gaussian noise, Gaussian blur, brightness, contrast and
JPEG, with Hendrycks & Dietterich's (ImageNet-C, 2019) severities where they carry over to
small images. Tabular and sensor rows (batch, features) get noise scaled to each feature's
spread, features dropped to their mean (a missing reading), and an offset drift.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _noise(unit: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return unit + rng.normal(0, sigma, unit.shape)


def _blur(unit: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.4, 0.6, 0.8, 1.0, 1.5)[severity - 1] * max(unit.shape[1], unit.shape[2]) / 16
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = unit
    for axis in (1, 2):
        padded = np.pad(
            out, [(radius, radius) if a == axis else (0, 0) for a in range(out.ndim)], mode="edge"
        )
        out = sum(
            taps[i] * np.take(padded, range(i, i + out.shape[axis]), axis=axis) for i in range(len(taps))
        )
    return out


def _brightness(unit: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return unit + (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]


def _contrast(unit: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    mean = unit.mean(axis=(1, 2, 3), keepdims=True)
    return (unit - mean) * factor + mean


def _jpeg(unit: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    quality = (25, 18, 15, 10, 7)[severity - 1]
    out = np.empty_like(unit)
    for i, image in enumerate(np.clip(unit, 0, 1)):
        pixels = np.round(image * 255).astype(np.uint8)
        channels = pixels.shape[-1]
        picture = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer), np.float64) / 255
        out[i] = decoded[..., None] if channels == 1 else decoded
    return out


IMAGE: dict[str, Corruption] = {
    "gaussian noise": _noise, "blur": _blur, "brightness": _brightness, "contrast": _contrast, "jpeg": _jpeg,
}  # fmt: skip


def channels_first(x: np.ndarray) -> bool:
    """An NCHW batch (ONNX exports from PyTorch), told from NHWC by where 1 or 3 channels sit."""
    return x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3)


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if channels_first(x) else x


def corrupt_images(x: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``x`` corrupted by ``name`` at ``severity``, in the range of ``x`` itself (NHWC or NCHW)."""
    if channels_first(x):
        return corrupt_images(x.transpose(0, 2, 3, 1), name, severity, seed).transpose(0, 3, 1, 2)
    low, high = float(x.min()), float(x.max())
    span = high - low or 1.0
    unit = (np.asarray(x, np.float64) - low) / span
    if name == "jpeg" and x.shape[-1] not in (1, 3):
        name = "gaussian noise"  # JPEG holds gray or RGB only
    out = np.clip(IMAGE[name](unit, severity, np.random.default_rng(seed + severity)), 0, 1)
    return (out * span + low).astype(x.dtype)


def _feature_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    scale = (0.1, 0.2, 0.3, 0.5, 0.8)[severity - 1]
    return x + rng.normal(0, 1, x.shape) * x.std(axis=0) * scale


def _dropout(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    rate = (0.05, 0.1, 0.2, 0.3, 0.5)[severity - 1]
    return np.where(rng.random(x.shape) < rate, x.mean(axis=0), x)


def _drift(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    shift = (0.1, 0.2, 0.3, 0.5, 0.8)[severity - 1]
    sign = rng.choice([-1.0, 1.0], size=x.shape[1:])
    return x + sign * x.std(axis=0) * shift


TABULAR: dict[str, Corruption] = {"feature noise": _feature_noise, "dropout": _dropout, "drift": _drift}


def corrupt_rows(x: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + severity)
    return TABULAR[name](np.asarray(x, np.float64), severity, rng).astype(x.dtype)


Applied = Callable[[np.ndarray, int], np.ndarray]


def suite(x: np.ndarray) -> tuple[str, dict[str, Applied]]:
    """The corruptions for inputs shaped like ``x``: "image" for rank 4, "tabular" for rank 2,
    and feature noise on the flattened values for any other rank: "sequence" for rank 3
    (time, channels: a sensor window), else "other"."""
    if x.ndim == 4:
        return "image", {name: partial(_image, name=name) for name in IMAGE}
    if x.ndim == 2:
        return "tabular", {name: partial(_rows, name=name) for name in TABULAR}
    return "sequence" if x.ndim == 3 else "other", {"feature noise": _flat_noise}


def _image(x: np.ndarray, severity: int, name: str) -> np.ndarray:
    return corrupt_images(x, name, severity)


def _rows(x: np.ndarray, severity: int, name: str) -> np.ndarray:
    return corrupt_rows(x, name, severity)


def _flat_noise(x: np.ndarray, severity: int) -> np.ndarray:
    return corrupt_rows(x.reshape(len(x), -1), "feature noise", severity).reshape(x.shape)
