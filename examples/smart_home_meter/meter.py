"""The meter camera: scikit-learn's digits as a hub's camera sees them, and the reader model.

A meter reader crops each digit wheel from the camera frame; ``camera`` turns clean digits
into such crops. ``INSTALLED`` is the variation a freshly mounted camera sees (a pixel of
shift, slight blur, some contrast change); ``FOGGED`` is the same meter months later, with
condensation on its window: washed out, brighter, blurrier, noisier. The reader is trained
on ``INSTALLED`` and meets ``FOGGED`` in the field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Conditions:
    shift: int  # pixels, each way
    blur: tuple[float, float]  # Gaussian sigma range, pixels
    contrast: tuple[float, float]  # multiplies the ink
    brightness: tuple[float, float]  # added to every pixel
    noise: float  # sensor noise, standard deviation


INSTALLED = Conditions(shift=1, blur=(0.0, 0.5), contrast=(0.8, 1.1), brightness=(-0.05, 0.05), noise=0.02)
FOGGED = Conditions(shift=1, blur=(0.5, 0.8), contrast=(0.5, 0.7), brightness=(0.15, 0.25), noise=0.04)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits in [0, 1], shape (n, 8, 8, 1), and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[..., np.newaxis], data.target.astype(np.int64)


def camera(x: np.ndarray, conditions: Conditions, rng: np.random.Generator) -> np.ndarray:
    """Each image in ``x`` as the camera sees it under ``conditions``, clipped to [0, 1]."""
    from scipy.ndimage import gaussian_filter

    out = np.empty_like(x)
    for i, image in enumerate(x[..., 0]):
        dy, dx = rng.integers(-conditions.shift, conditions.shift + 1, size=2)
        image = np.roll(image, (dy, dx), axis=(0, 1))
        sigma = rng.uniform(*conditions.blur)
        if sigma > 0:
            image = gaussian_filter(image, sigma, mode="constant")
        image = image * rng.uniform(*conditions.contrast) + rng.uniform(*conditions.brightness)
        image = image + rng.normal(0, conditions.noise, image.shape)
        out[i, ..., 0] = np.clip(image, 0, 1)
    return out


def build_reader():  # type: ignore[no-untyped-def]
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="digit"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="meter_reader",
    )
