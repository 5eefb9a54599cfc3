"""Calibration and evaluation data: ``.npz`` (``x``, optional ``y``) or ``.npy`` (``x``).

Data is checked against the model input before any conversion starts.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.errors import DataError, ShapeError

MIN_SAMPLES = 10
RECOMMENDED_SAMPLES = 100
MAX_FEATURE_SPREAD = 100.0
"""Past this ratio between the widest and the narrowest feature range, one int8 input scale
rounds the narrow features away (raw tabular sensor data: 0.0005 next to 4,000)."""


class InputSpec(Protocol):
    @property
    def shape(self) -> tuple[int | None, ...]: ...

    @property
    def dtype(self) -> str: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Dataset:
    path: Path
    x: np.ndarray
    y: np.ndarray | None

    def __len__(self) -> int:
        return len(self.x)


def load_dataset(path: Path, role: str) -> Dataset:
    """Read ``path`` without trusting it: no pickles, clear errors for every bad case."""
    if not path.is_file():
        raise DataError(f"{role} data {path}: no such file")
    try:
        if path.suffix == ".npy":
            return Dataset(path, np.load(path, allow_pickle=False), None)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if "x" not in archive.files:
                    found = ", ".join(archive.files) or "nothing"
                    raise DataError(
                        f"{role} data {path}: no array 'x' (found {found}); save it with "
                        "np.savez(path, x=inputs, y=labels)"
                    )
                y = archive["y"] if "y" in archive.files else None
                return Dataset(path, archive["x"], y)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{role} data {path}: not a readable numpy file ({exc})") from exc
    raise DataError(f"{role} data {path}: expected a .npz (arrays x, y) or a .npy file")


def check_dataset(
    data: Dataset, spec: InputSpec, role: str, force: bool = False
) -> tuple[Dataset, list[str]]:
    """Validate ``data`` against the model input; return it cast to the input dtype, and warnings."""
    where = f"{role} data {data.path}"
    x = data.x
    if x.dtype.kind not in "fiu":
        raise ShapeError(f"{where}: x has dtype {x.dtype}; the model takes {spec.describe()}")
    _check_shape(x.shape, spec, where)
    bad = ~np.isfinite(x) if x.dtype.kind == "f" else np.zeros(x.shape, dtype=bool)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
        raise DataError(
            f"{where}: x holds {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} Inf "
            f"values in {len(rows)} samples (first: sample {rows[0]}); remove or fix those samples"
        )
    warnings = []
    if len(x) < MIN_SAMPLES and not force:
        raise DataError(
            f"{where}: only {len(x)} samples; at least {MIN_SAMPLES} are needed "
            f"({RECOMMENDED_SAMPLES}+ recommended), or pass --force"
        )
    if len(x) < RECOMMENDED_SAMPLES:
        warnings.append(f"{where}: only {len(x)} samples; {RECOMMENDED_SAMPLES}+ give reliable results")
    y = _check_labels(data.y, len(x), where)
    return Dataset(data.path, x.astype(spec.dtype, copy=False), y), warnings


def _check_shape(shape: tuple[int, ...], spec: InputSpec, where: str) -> None:
    expected = spec.shape
    fits = len(shape) == len(expected) and all(
        want is None or want == got for want, got in zip(expected[1:], shape[1:], strict=True)
    )
    if fits:
        return
    hint = ""
    if len(shape) + 1 == len(expected) and expected[-1] == 1:
        hint = "; add the channel axis with x[..., None]"
    elif len(shape) == len(expected) - 1:
        hint = "; x needs a leading sample axis"
    raise ShapeError(f"{where}: x has shape {tuple(shape)}, the model takes {spec.describe()}{hint}")


def _check_labels(y: np.ndarray | None, count: int, where: str) -> np.ndarray | None:
    if y is None:
        return None
    if y.ndim == 2:  # one-hot
        y = y.argmax(axis=1)
    if (
        y.ndim != 1
        or y.dtype.kind not in "iu"
        and not (y.dtype.kind == "f" and np.array_equal(y, np.round(y)))
    ):
        raise DataError(f"{where}: y must hold integer class labels, one per sample")
    if len(y) != count:
        raise DataError(f"{where}: y has {len(y)} labels for {count} samples")
    return y.astype(np.int64)


def load_input(path: Path, manifest: Any, tensor: Any) -> np.ndarray:
    """An input batch for ``edgekit run``: an image file (preprocessed as the bundle says),
    a ``.npy``, or an ``.npz`` with array ``x``."""
    from edgekit.runtime.preprocess import IMAGE_SUFFIXES, load_image

    if path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image(path, manifest, tensor)
    return load_dataset(path, "input").x


def feature_spread_warning(x: np.ndarray, where: str) -> str | None:
    """A warning when the features (the last axis) span ranges more than MAX_FEATURE_SPREAD
    apart, measured between the 1st and 99th percentiles; None otherwise."""
    if x.ndim < 2 or x.shape[-1] < 2 or x.dtype.kind != "f":
        return None
    low, high = np.percentile(x.reshape(-1, x.shape[-1]).astype(np.float64), [1, 99], axis=0)
    spans = np.where(high - low > 0, high - low, np.nan)
    if np.count_nonzero(~np.isnan(spans)) < 2:
        return None
    narrow, wide = int(np.nanargmin(spans)), int(np.nanargmax(spans))
    ratio = spans[wide] / spans[narrow]
    if ratio <= MAX_FEATURE_SPREAD:
        return None
    return (
        f"{where}: feature ranges differ {ratio:,.0f}x (feature {narrow} spans {spans[narrow]:.3g}, "
        f"feature {wide} {spans[wide]:.3g}); full-integer int8 gives the whole input one scale, so "
        "expect an accuracy loss there; --precision dynamic or fp16 keep the input in float"
    )
