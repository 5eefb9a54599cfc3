"""scikit-learn models exported by skl2onnx (ONNX-ML operators): a RandomForest with its default
ZipMap output converts, and precisions that would change nothing (no ONNX-ML operator has an
int8 or fp16 kernel) are refused in one line, or skipped by ``auto``, which says why."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.core.bundle import read_bundle
from edgekit.runtime import Model

pytest.importorskip("skl2onnx", reason="skl2onnx is in edgekit[dev]")


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder = tmp_path_factory.mktemp("iris")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(x, y)
    (folder / "forest.onnx").write_bytes(to_onnx(forest, x[:1]).SerializeToString())  # ZipMap: the default
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    linear = to_onnx(pipeline, x[:1], options={"zipmap": False})
    (folder / "linear.onnx").write_bytes(linear.SerializeToString())
    np.savez(folder / "iris.npz", x=x, y=y)
    return {"forest": folder / "forest.onnx", "linear": folder / "linear.onnx", "data": folder / "iris.npz"}


def _convert(model: Path, data: Path, out: Path, precision: str, *extra: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [
        "convert", str(model), "--target", "x86-gateway", "--precision", precision, "--eval", str(data),
        "--calibration", str(data), "-o", str(out), "--force", *extra,
    ])  # fmt: skip


def test_a_zipmap_output_becomes_the_probabilities_tensor(iris: dict[str, Path], tmp_path: Path) -> None:
    result = _convert(iris["forest"], iris["data"], tmp_path / "f.ekb", "fp32")
    assert result.exit_code == 0, result.output
    assert "was a ZipMap" in result.output and "'zipmap': False" in result.output
    manifest = read_bundle(tmp_path / "f.ekb")[0]
    probabilities = next(o for o in manifest.artifacts[0].outputs if o.name == "output_probability")
    assert probabilities.dtype == "float32" and probabilities.shape[-1] == 3
    with np.load(iris["data"]) as data:
        x, y = data["x"], data["y"]
    with Model.load(tmp_path / "f.ekb", allow_unsigned=True) as model:
        scores = model.predict(x)["output_probability"]
    assert np.allclose(scores.sum(axis=1), 1, atol=1e-5) and (scores.argmax(axis=1) == y).mean() > 0.9


def test_int8_of_a_graph_with_nothing_to_quantize_is_one_line(iris: dict[str, Path], tmp_path: Path) -> None:
    result = _convert(iris["linear"], iris["data"], tmp_path / "l.ekb", "int8")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: int8 changes nothing in this model: none of its operators (Scaler, LinearClassifier, "
        "Normalizer) runs at int8 in ONNX Runtime, so the artifact would be the float model under another "
        "label; use --precision fp32"
    )
    assert not (tmp_path / "l.ekb").exists()


def test_auto_ships_fp32_and_says_why(iris: dict[str, Path], tmp_path: Path) -> None:
    result = _convert(iris["forest"], iris["data"], tmp_path / "f.ekb", "auto", "--format", "onnx")
    assert result.exit_code == 0, result.output
    entry = read_bundle(tmp_path / "f.ekb")[0].artifacts[0]
    assert entry.precision == "fp32" and entry.quantization is None
    assert entry.selection is not None and [c.precision for c in entry.selection.candidates] == ["fp32"]
    assert "skipped int8, fp16, dynamic: they would change nothing" in entry.selection.reason
    assert entry.metrics.float_parameter_bytes > 0  # the trees' thresholds live in attributes


def test_a_file_larger_than_its_weights_says_it_grew(iris: dict[str, Path], tmp_path: Path) -> None:
    result = _convert(iris["linear"], iris["data"], tmp_path / "l.ekb", "fp32")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())  # the summary wraps at 80 columns
    assert re.search(r"float32 weights → [\d.]+ K?B \([1-9][\d.]*×, larger than the float32 weights\)", flat)


def test_csv_data_with_a_label_column_converts_a_tabular_model(iris: dict[str, Path], tmp_path: Path) -> None:
    with np.load(iris["data"]) as data:
        x, y = data["x"], data["y"]
    rows = ["sepal_length,sepal_width,fault,petal_length,petal_width"]
    rows += [f"{a},{b},{label},{c},{d}" for (a, b, c, d), label in zip(x.tolist(), y.tolist(), strict=True)]
    (tmp_path / "line.csv").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(main, [
        "convert", str(iris["linear"]), "--target", "x86-gateway", "--precision", "fp32",
        "--calibration", str(tmp_path / "line.csv"), "--eval", str(tmp_path / "line.csv"),
        "--label-column", "fault", "-o", str(tmp_path / "l.ekb"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    accuracy = read_bundle(tmp_path / "l.ekb")[0].artifacts[0].metrics.accuracy
    assert accuracy is not None and accuracy.metric == "top1" and accuracy.samples == 150
    assert accuracy.float_model > 90  # the label column was read as labels, the rest as features in order
