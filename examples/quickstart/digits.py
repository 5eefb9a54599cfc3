"""Train the small digits CNN that the quickstart, the tests and the benchmarks convert.

scikit-learn ships the 8x8 digits dataset, so nothing is downloaded. The split is fixed:
calibration comes from the training part, evaluation is held out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def digits_splits(seed: int = 0) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return {"x_train": x_train, "y_train": y_train, "x_eval": x_eval, "y_eval": y_eval}


def build_digits_cnn():  # type: ignore[no-untyped-def]
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_cnn",
    )


def train_digits(out: Path, epochs: int = 20, seed: int = 0) -> dict[str, Path]:
    """Train, then write digits.keras, calib.npz (200 training images) and eval.npz."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(seed)
    data = digits_splits(seed)
    model = build_digits_cnn()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data["x_train"], data["y_train"], epochs=epochs, batch_size=32, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "model": out / "digits.keras",
        "calibration": out / "calib.npz",
        "evaluation": out / "eval.npz",
    }
    model.save(paths["model"])
    np.savez(paths["calibration"], x=data["x_train"][:200])
    np.savez(paths["evaluation"], x=data["x_eval"], y=data["y_eval"])
    return paths
