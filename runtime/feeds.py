"""What ``predict`` checks before any byte reaches an engine: names, dtypes, ranks, dims,
and that float inputs are finite (NaN and Inf are refused; out-of-range values are clipped
where an int8 input quantizes them).

Every error names the input and says what it takes, so one line is enough to fix the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np

from edgekit.core.errors import DataError, ShapeError
from edgekit.core.samples import Feed
from edgekit.runtime.backends import TensorInfo

_TAKES = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


def describe(info: TensorInfo) -> str:
    return (
        "(" + ", ".join("batch" if i == 0 and d is None else str(d) for i, d in enumerate(info.shape)) + ")"
    )


def check_feed(inputs: tuple[TensorInfo, ...], x: Any) -> Feed:
    """``x`` (an array for a single-input model, else a dict by input name) checked against
    ``inputs`` and cast to what each engine input takes."""
    names = [info.name for info in inputs]
    if not isinstance(x, Mapping):
        if len(inputs) != 1:
            raise ShapeError(
                f"the model takes {len(inputs)} inputs ({', '.join(names)}); pass a dict by input name"
            )
        return {names[0]: check_input(inputs[0], x)}
    extra = [name for name in x if name not in names]
    if extra:
        raise ShapeError(f"'{extra[0]}' is not an input of this model; it takes {', '.join(names)}")
    missing = [name for name in names if name not in x]
    if missing:
        raise ShapeError(f"input '{missing[0]}' is missing; the model takes {', '.join(names)}")
    return {info.name: check_input(info, x[info.name]) for info in inputs}


def check_input(info: TensorInfo, value: Any) -> np.ndarray:
    array = np.asarray(value)
    want, kinds, fixed = _rule(info)
    if array.dtype.kind not in kinds:
        takes = "numbers" if want.kind == "f" else f"{want.name} values"  # the shape, then the dtype
        raise ShapeError(f"input '{info.name}' takes {takes} {describe(info)}, got dtype {array.dtype}")
    shape = array.shape
    if len(shape) != len(info.shape):
        hint = "; add the batch axis with x[None]" if _one_sample(info.shape, shape) else ""
        rank = len(info.shape)
        raise ShapeError(f"input '{info.name}' takes rank {rank} {describe(info)}, got shape {shape}{hint}")
    for axis, size in fixed:
        if shape[axis] != size:
            raise ShapeError(f"input '{info.name}' takes {describe(info)}, got shape {shape}")
    if shape and shape[0] == 0:
        raise ShapeError(f"input '{info.name}' is an empty batch")
    if array.dtype.kind == "f" and not np.isfinite(array.sum()) and not np.isfinite(array).all():
        # One sum is the cheap test; only a non-finite sum (NaN, Inf, or an overflow) looks closer.
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise DataError(
            f"input '{info.name}' holds {array[where]} at {list(where)}: inputs must be finite numbers; "
            "replace missing values before predict"
        )
    return array if array.dtype == want else array.astype(want)


def _one_sample(dims: tuple[int | None, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` is one sample of ``dims``: its batch axis alone is missing."""
    if len(shape) != len(dims) - 1:
        return False
    return all(d is None or d == n for d, n in zip(dims[1:], shape, strict=True))


@cache
def _rule(info: TensorInfo) -> tuple[np.dtype, str, tuple[tuple[int, int], ...]]:
    """What ``info`` takes: the dtype to cast to, the dtype kinds accepted, and the fixed
    dims after the batch dim by axis. Computed once per input: ``predict``'s hot path."""
    want = np.dtype("float32" if info.quantized else info.dtype)
    fixed = tuple((axis, size) for axis, size in enumerate(info.shape) if axis > 0 and size is not None)
    return want, _TAKES.get(want.kind, "fiu"), fixed
