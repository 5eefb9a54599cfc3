from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.convert.data import check_dataset, load_dataset
from edgekit.converters.source import TensorSpec
from edgekit.core.errors import DataError, ShapeError

SPEC = TensorSpec("image", (None, 8, 8, 1), "float32")


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _check(tmp_path: Path, x: np.ndarray, y: np.ndarray | None = None, force: bool = False):  # type: ignore[no-untyped-def]
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    return check_dataset(load_dataset(_npz(tmp_path, **arrays), "calibration"), [SPEC], "calibration", force)


def test_good_data_is_cast_to_the_input_dtype(tmp_path: Path) -> None:
    data, warnings = _check(tmp_path, np.zeros((120, 8, 8, 1), np.float64), np.arange(120) % 10)
    assert data.x.dtype == np.float32 and data.y is not None and data.y.dtype == np.int64
    assert warnings == []


def test_npy_holds_x_only(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.ones((12, 8, 8, 1), np.float32))
    data = load_dataset(path, "calibration")
    assert data.y is None and data.x.shape == (12, 8, 8, 1)


def test_shape_mismatch_says_what_the_model_takes_and_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ShapeError) as err:
        _check(tmp_path, np.zeros((50, 8, 8), np.float32))
    assert "(50, 8, 8)" in str(err.value) and "(batch, 8, 8, 1)" in str(err.value)
    assert "x[..., None]" in str(err.value)
    with pytest.raises(ShapeError, match="takes"):
        _check(tmp_path, np.zeros((50, 9, 8, 1), np.float32))


def test_nan_and_inf_are_counted_and_located(tmp_path: Path) -> None:
    x = np.zeros((50, 8, 8, 1), np.float32)
    x[7, 0, 0, 0] = np.nan
    x[9, 1, 1, 0] = np.inf
    with pytest.raises(DataError, match=r"1 NaN and 1 Inf values in 2 samples \(first: sample 7\)"):
        _check(tmp_path, x)


def test_sample_count_thresholds(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="only 5 samples; at least 10"):
        _check(tmp_path, np.zeros((5, 8, 8, 1), np.float32))
    _, warnings = _check(tmp_path, np.zeros((5, 8, 8, 1), np.float32), force=True)
    assert "only 5 samples" in warnings[0]
    _, warnings = _check(tmp_path, np.zeros((50, 8, 8, 1), np.float32))
    assert "100+" in warnings[0]


def test_bad_files_and_arrays(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.npz", "calibration")
    with pytest.raises(DataError, match="no array 'x' \\(found images\\)"):
        data = load_dataset(_npz(tmp_path, images=np.zeros(3)), "calibration")
        check_dataset(data, [SPEC], "calibration")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable numpy file"):
        load_dataset(bad, "calibration")
    text = tmp_path / "data.txt"
    text.write_text("1,2")
    with pytest.raises(DataError, match=r"expected a .npz \(arrays x, y\), a .npy, a .csv"):
        load_dataset(text, "calibration")
    with pytest.raises(ShapeError, match="dtype"):
        _check(tmp_path, np.array([["a"] * 8] * 8))


def test_labels_are_checked(tmp_path: Path) -> None:
    x = np.zeros((20, 8, 8, 1), np.float32)
    with pytest.raises(DataError, match="19 labels for 20 samples"):
        _check(tmp_path, x, np.zeros(19, np.int64))
    with pytest.raises(DataError, match="integer class labels"):
        _check(tmp_path, x, np.full(20, 0.5))
    one_hot = np.eye(10)[np.arange(20) % 10]
    data, _ = _check(tmp_path, x, one_hot)
    assert data.y is not None and list(data.y[:3]) == [0, 1, 2]


def test_feature_ranges_far_apart_are_warned_about_before_int8() -> None:
    from sklearn.datasets import load_breast_cancer, load_digits

    from edgekit.convert.data import feature_spread_warning

    tabular = load_breast_cancer().data.astype(np.float32)  # 0.0005 to 4,000, as raw sensors are
    warning = feature_spread_warning(tabular, "calibration data c.npz")
    assert warning is not None and "\n" not in warning and "--precision dynamic or fp16" in warning
    images = load_digits().images[..., None].astype(np.float32) / 16  # one channel: one feature
    assert feature_spread_warning(images, "calibration data c.npz") is None
    rgb = np.random.default_rng(0).uniform(0, 255, (50, 8, 8, 3)).astype(np.float32)
    assert feature_spread_warning(rgb, "calibration data c.npz") is None


IDS = TensorSpec("ids", (None, 6), "int64")
MASK = TensorSpec("mask", (None, 6), "bool")
STATE = TensorSpec("state", (2, None, 4), "float32")
RATE = TensorSpec("sr", (), "int64")


def _named(tmp_path: Path, specs: list[TensorSpec], **arrays: np.ndarray):  # type: ignore[no-untyped-def]
    return check_dataset(load_dataset(_npz(tmp_path, **arrays), "calibration"), specs, "calibration")


def test_one_array_per_input_name_batched_or_one_call_per_entry(tmp_path: Path) -> None:
    ids = np.arange(120 * 6).reshape(120, 6) % 50
    data, _ = _named(tmp_path, [IDS, MASK], ids=ids.astype(np.int32), mask=ids > 3)
    assert data.samples.arrays["ids"].dtype == np.int64 and data.samples.per_call == frozenset()
    feed, count = next(data.samples.batches(32))
    assert count == 32 and feed["ids"].shape == (32, 6) and feed["mask"].dtype == bool
    # A state whose batch axis is second and a scalar: rank + 1, so arr[i] is one call's value.
    data, _ = _named(tmp_path, [STATE, RATE], state=np.zeros((120, 2, 1, 4)), sr=np.full(120, 16000))
    assert data.samples.per_call == {"state", "sr"}
    feed, count = next(data.samples.batches(32))
    assert count == 1 and feed["state"].shape == (2, 1, 4) and feed["sr"].shape == ()


def test_multi_input_data_errors_name_the_input(tmp_path: Path) -> None:
    ids = np.zeros((20, 6), np.int64)
    with pytest.raises(DataError, match="no array for input 'mask' \\(the model takes 'ids', 'mask'; found ids\\)"):
        _named(tmp_path, [IDS, MASK], ids=ids)
    with pytest.raises(DataError, match="array 'extra' is not a model input \\(inputs: ids, mask\\)"):
        _named(tmp_path, [IDS, MASK], ids=ids, mask=ids > 0, extra=ids)
    with pytest.raises(DataError, match="different sample counts \\('ids' 20, 'mask' 19\\)"):
        _named(tmp_path, [IDS, MASK], ids=ids, mask=ids[:19] > 0)
    with pytest.raises(ShapeError, match="input 'ids' has dtype float32; the model takes int64 values"):
        _named(tmp_path, [IDS, MASK], ids=ids.astype(np.float32), mask=ids > 0)
    with pytest.raises(ShapeError, match="input 'state' has shape \\(20, 2, 1, 5\\)"):
        _named(tmp_path, [STATE, RATE], state=np.zeros((20, 2, 1, 5)), sr=np.full(20, 16000))


def test_csv_data_reads_features_and_the_label_column(tmp_path: Path) -> None:
    path = tmp_path / "line.csv"
    path.write_text("\ufefftemp,vibration,fault,current\n21.5,0.02,0,3.1\n22.0,0.31,2,3.4\n")  # a BOM, as Excel writes
    data = load_dataset(path, "evaluation", "fault")
    np.testing.assert_allclose(data.samples.arrays["x"], [[21.5, 0.02, 3.1], [22.0, 0.31, 3.4]], rtol=1e-6)
    assert data.y is not None and data.y.tolist() == [0, 2]
    assert load_dataset(path, "calibration").y is None  # no column named y: all features, no labels
    assert load_dataset(path, "calibration").samples.arrays["x"].shape == (2, 4)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("a,b\n1,2\n", "fault", "no column 'fault'; its columns are a, b"),
        ("a,b\n1,2,3\n", None, "line 2: 3 values; the header names 2"),
        ("a,b\n1,\n", None, "line 2, column 'b' is empty; fill in or drop such rows"),
        ("a,b\n1,high\n", None, "line 2, column 'b' holds 'high', not a number"),
        ("a,y\n1,bearing\n", None, "line 2: the label column 'y' holds 'bearing'; labels are class indices"),
        ("a,b\n", None, "a header row and at least one row of values are needed"),
    ],
)  # fmt: skip
def test_bad_csv_data_is_one_line_naming_the_line_and_column(
    tmp_path: Path, text: str, column: str | None, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        load_dataset(path, "evaluation", column)
    assert message in str(error.value) and "\n" not in str(error.value)
