"""Calibration and evaluation data: ``.npz`` (``x`` or one array per input name, optional
``y``) or ``.npy`` (``x``). How arrays map to calls: ``edgekit.core.samples``.

Data is checked against the model input before any conversion starts.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgekit.convert.tabular import read_csv
from edgekit.core.errors import DataError, ShapeError
from edgekit.core.samples import Feed, Samples
from edgekit.core.text import TextData, read_jsonl

if TYPE_CHECKING:
    from edgekit.core.manifest import Manifest
    from edgekit.runtime.backends import TensorInfo

MIN_SAMPLES = 10
RECOMMENDED_SAMPLES = 100
MAX_FEATURE_SPREAD = 100.0
"""Past this ratio between the widest and the narrowest feature range, one int8 input scale
rounds the narrow features away (raw tabular sensor data: 0.0005 next to 4,000)."""


class InputSpec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int | None, ...]: ...

    @property
    def dtype(self) -> str: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Dataset:
    """Model inputs (as read: array ``x``, or one array per input name) and optional labels."""

    path: Path
    samples: Samples
    y: np.ndarray | None
    text: TextData | None = None
    """A .jsonl file's texts and labels, until the tokenizer turns them into ``samples``."""

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def x(self) -> np.ndarray:
        """The inputs of a single-input model."""
        return self.samples.only


def load_dataset(path: Path, role: str, label_column: str | None = None) -> Dataset:
    """Read ``path`` without trusting it: no pickles, clear errors for every bad case.
    ``label_column``: a CSV file's column of labels (default: one named y)."""
    if not path.is_file():
        raise DataError(f"{role} data {path}: no such file")
    if path.suffix == ".jsonl":
        return Dataset(path, Samples({}), None, read_jsonl(path, role))
    if path.suffix == ".csv":
        x, labels = read_csv(path, role, label_column)
        return Dataset(path, Samples.of("x", x), labels)
    try:
        if path.suffix == ".npy":
            return Dataset(path, Samples.of("x", np.load(path, allow_pickle=False)), None)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files if name != "y"}
                y = archive["y"] if "y" in archive.files else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{role} data {path}: not a readable numpy file ({exc})") from exc
    if path.suffix != ".npz":
        raise DataError(
            f"{role} data {path}: expected a .npz (arrays x, y), a .npy, a .csv (a header row, then "
            "rows) or, for text, a .jsonl file"
        )
    if not arrays:
        raise DataError(
            f"{role} data {path}: no input arrays; save them with np.savez(path, x=inputs, y=labels), "
            "or one array per input name"
        )
    return Dataset(path, Samples(arrays), y)


def check_dataset(
    data: Dataset, specs: Sequence[InputSpec], role: str, force: bool = False
) -> tuple[Dataset, list[str]]:
    """Validate ``data`` against the model inputs; return it by input name, cast to each
    input's dtype, with the per-call inputs marked; and warnings."""
    where = f"{role} data {data.path}"
    arrays = _by_input_name(dict(data.samples.arrays), specs, where)
    checked: dict[str, np.ndarray] = {}
    per_call = set()
    for spec in specs:
        checked[spec.name], call = _check_array(arrays[spec.name], spec, where, len(specs) > 1)
        if call:
            per_call.add(spec.name)
    counts = {name: len(a) for name, a in checked.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{name}' {count}" for name, count in counts.items())
        raise DataError(f"{where}: the inputs hold different sample counts ({listed}); give each the same")
    count = next(iter(counts.values()))
    warnings = []
    if count < MIN_SAMPLES and not force:
        raise DataError(
            f"{where}: only {count} samples; at least {MIN_SAMPLES} are needed "
            f"({RECOMMENDED_SAMPLES}+ recommended), or pass --force"
        )
    if count < RECOMMENDED_SAMPLES:
        warnings.append(f"{where}: only {count} samples; {RECOMMENDED_SAMPLES}+ give reliable results")
    tagged = data.text is not None and data.y is not None and data.y.ndim == 2
    y = data.y if tagged else _check_labels(data.y, count, where)  # tags: a label per token
    return Dataset(data.path, Samples(checked, frozenset(per_call)), y), warnings


def _by_input_name(
    arrays: dict[str, np.ndarray], specs: Sequence[InputSpec], where: str
) -> dict[str, np.ndarray]:
    names = [spec.name for spec in specs]
    if len(specs) == 1 and "x" in arrays and names[0] not in arrays:
        return {names[0]: arrays["x"]}  # other arrays (collected samples' pred, seq...) are metadata
    found = ", ".join(arrays)
    missing = [name for name in names if name not in arrays]
    if missing:
        model = "the model takes " + ", ".join(f"'{n}'" for n in names)
        raise DataError(
            f"{where}: no array for input '{missing[0]}' ({model}; found {found}); "
            "save one array per input name, as np.savez(path, **{name: array}, y=labels)"
            if len(specs) > 1
            else f"{where}: no array 'x' (found {found}); save it with np.savez(path, x=inputs, y=labels)"
        )
    extra = [name for name in arrays if name not in names]
    if extra:
        raise DataError(
            f"{where}: array '{extra[0]}' is not a model input (inputs: {', '.join(names)}); remove it"
        )
    return {name: arrays[name] for name in names}


def _check_array(x: np.ndarray, spec: InputSpec, where: str, named: bool) -> tuple[np.ndarray, bool]:
    """``x`` cast to the input's dtype, and whether ``x[i]`` is one call's value."""
    what = f"input '{spec.name}'" if named else "x"
    want = np.dtype(spec.dtype)
    fits = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}.get(want.kind, "fiu")
    if x.dtype.kind not in fits:
        takes = "numbers" if want.kind == "f" else f"{want.name} values"
        raise ShapeError(f"{where}: {what} has dtype {x.dtype}; the model takes {takes} {spec.describe()}")
    per_call = _check_shape(x.shape, spec, where, what)
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
            raise DataError(
                f"{where}: {what} holds {int(np.isnan(x).sum())} NaN and {int(np.isinf(x).sum())} Inf "
                f"values in {len(rows)} samples (first: sample {rows[0]}); remove or fix those samples"
            )
    return x.astype(want, copy=False), per_call


def _check_shape(shape: tuple[int, ...], spec: InputSpec, where: str, what: str) -> bool:
    expected = spec.shape
    batched = len(shape) == len(expected) and len(shape) > 0 and _fits(shape[1:], expected[1:])
    per_call = len(shape) == len(expected) + 1 and _fits(shape[1:], expected)
    if batched or per_call:
        return per_call and not batched
    hint = ""
    if len(shape) + 1 == len(expected) and expected[-1] == 1:
        hint = "; add the channel axis with x[..., None]"
    elif len(shape) == len(expected) - 1:
        hint = f"; {what} needs a leading sample axis"
    raise ShapeError(f"{where}: {what} has shape {tuple(shape)}, the model takes {spec.describe()}{hint}")


def _fits(shape: Sequence[int], expected: Sequence[int | None]) -> bool:
    return all(want is None or want == got for want, got in zip(expected, shape, strict=True))


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


def load_inputs(
    values: Sequence[str], manifest: Manifest, tensors: Sequence[TensorInfo]
) -> Feed | np.ndarray:
    """One call's inputs for ``edgekit run``: for a single-input model, an image file
    (preprocessed as the bundle says), a ``.npy`` or an ``.npz`` with array ``x``; for any
    model, ``NAME=file`` per input, or one ``.npz`` with an array per input name."""
    names = [t.name for t in tensors]
    if len(values) == 1 and "=" not in values[0]:
        path = Path(values[0])
        if path.suffix == ".npz":
            arrays = dict(_read(path).samples.arrays)
            if len(tensors) == 1 and "x" in arrays:
                return arrays["x"]
            return arrays  # the model names what is missing or extra
        if len(tensors) == 1:
            return _read_one(path, manifest, tensors[0])
        raise DataError(
            f"--input {path}: the model takes {len(tensors)} inputs ({', '.join(names)}); pass "
            "--input NAME=FILE.npy for each, or one .npz with an array per input name"
        )
    feed = {}
    for value in values:
        name, _, file = value.partition("=")
        if not file or name not in names:
            raise DataError(f"--input {value}: give NAME=FILE, with NAME one of {', '.join(names)}")
        feed[name] = _read_one(Path(file), manifest, tensors[names.index(name)])
    return feed


def _read_one(path: Path, manifest: Manifest, tensor: TensorInfo) -> np.ndarray:
    from edgekit.runtime.preprocess import IMAGE_SUFFIXES, load_image

    if path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image(path, manifest, tensor)
    return _read(path).samples.only


def _read(path: Path) -> Dataset:
    data = load_dataset(path, "input")
    if path.suffix == ".npz" and data.y is not None:
        raise DataError(f"input {path}: holds labels y; pass only the model's inputs")
    return data


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
