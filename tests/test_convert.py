"""Real TensorFlow conversions of a digits CNN trained in the session."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from click.testing import CliRunner
from helpers import run_one

from edgekit.cli import main
from edgekit.convert import ConvertOptions, ConvertResult, convert
from edgekit.converters import Converter
from edgekit.core.bundle import read_bundle
from edgekit.core.profiles import load_profile, shipped_profile_ids
from edgekit.runtime.backends import TFLiteBackend

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
TESTED_FORMATS = {"tflite": "test_convert.py", "onnx": "test_onnx.py"}
Convert = Callable[..., ConvertResult]


def _artifact(result: ConvertResult) -> bytes:
    manifest, contents = read_bundle(result.output)
    return contents[manifest.artifacts[0].path]


def _tensor_dtypes(content: bytes) -> set[str]:
    interpreter = Interpreter(model_content=content)
    return {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}


def test_every_registered_converter_is_tested() -> None:
    for fmt in Converter.registry:
        assert (Path(__file__).parent / TESTED_FORMATS[fmt]).is_file(), fmt


@pytest.mark.parametrize("profile", ["raspberry-pi-5", pytest.param("x86-gateway", marks=pytest.mark.slow)])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_makes_a_complete_verified_bundle(
    converted: Convert, digits_files: dict[str, Path], precision: str, profile: str
) -> None:
    result = converted(precision, profile)
    manifest, contents = read_bundle(result.output)  # checks every hash and size
    entry = manifest.artifacts[0]
    assert (entry.format, entry.precision) == ("tflite", precision)
    assert contents[entry.path][4:8] == b"TFL3"
    assert manifest.name == "digits" and manifest.version == 2
    assert manifest.profile["id"] == profile
    model_bytes = digits_files["model"].read_bytes()
    assert manifest.source.sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert manifest.tools["tensorflow"] and manifest.tools["edgekit"]
    assert manifest.preprocessing.layout == "NHWC"
    assert entry.inputs[0].shape == (None, 8, 8, 1) and entry.outputs[0].shape == (None, 10)
    metrics = entry.metrics
    assert metrics.size_bytes == entry.size == len(contents[entry.path])
    assert metrics.peak_memory_bytes > entry.size  # the weights alone must be resident
    assert metrics.within_budget
    assert metrics.accuracy is not None and metrics.accuracy.metric == "top1"
    assert metrics.accuracy.samples == 450 and metrics.accuracy.gate == "passed"
    assert metrics.calibration_samples == (200 if precision == "int8" else 0)


def test_int8_is_full_integer(converted: Convert) -> None:
    result = converted("int8")
    entry = result.manifest.artifacts[0]
    for tensor in (*entry.inputs, *entry.outputs):
        assert tensor.dtype == "int8" and tensor.quantization is not None
    content = _artifact(result)
    assert _tensor_dtypes(content) <= {"int8", "int32"}  # int32 holds biases only
    interpreter = Interpreter(model_content=content)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= ops
    kernels = [t for t in interpreter.get_tensor_details() if len(t["shape"]) == 4 and t["shape"][0] == 32]
    assert kernels and all(np.dtype(k["dtype"]) == np.int8 for k in kernels)


def test_int8_is_at_most_030_of_fp32(converted: Convert) -> None:
    int8, fp32 = len(_artifact(converted("int8"))), len(_artifact(converted("fp32")))
    assert int8 <= 0.30 * fp32, (int8, fp32)


def test_int8_accuracy_within_one_point_of_float(
    converted: Convert, digits_files: dict[str, Path], digits_eval: tuple[np.ndarray, np.ndarray]
) -> None:
    import keras

    x, y = digits_eval
    float_top1 = np.mean(keras.models.load_model(digits_files["model"]).predict(x, verbose=0).argmax(1) == y)
    backend = TFLiteBackend(_artifact(converted("int8")))
    int8_top1 = np.mean(run_one(backend, x).argmax(1) == y)
    assert float_top1 > 0.9
    assert abs(float_top1 - int8_top1) * 100 <= 1.0
    accuracy = converted("int8").manifest.artifacts[0].metrics.accuracy
    assert accuracy is not None
    assert accuracy.float_model == pytest.approx(float_top1 * 100, abs=1e-6)
    assert accuracy.artifact == pytest.approx(int8_top1 * 100, abs=1e-6)


def test_fp16_and_dynamic_keep_float_io_with_smaller_weights(converted: Convert) -> None:
    assert "float16" in _tensor_dtypes(_artifact(converted("fp16")))
    dynamic = converted("dynamic")
    assert "int8" in _tensor_dtypes(_artifact(dynamic))
    assert dynamic.manifest.artifacts[0].inputs[0].dtype == "float32"
    assert dynamic.manifest.artifacts[0].inputs[0].quantization is None
    assert len(_artifact(dynamic)) < 0.5 * len(_artifact(converted("fp32")))


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _error_line(stderr: str) -> str:
    """The one error line; progress lines may precede it, nothing else may say 'error'."""
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def test_auto_takes_the_profiles_order(digits_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "auto.ekb"
    code, stdout, _ = _cli("convert", str(digits_files["model"]), "-t", "raspberry-pi-4",
                           "--eval", str(digits_files["evaluation"]), "-o", str(out), "--json")
    assert code == 0
    report = json.loads(stdout)
    assert [t["precision"] for t in report["tried"]] == ["fp16"]  # int8 needs calibration
    code, stdout, _ = _cli("convert", str(digits_files["model"]), "-t", "raspberry-pi-4",
                           "-c", str(digits_files["calibration"]), "-o", str(out), "--json")
    report = json.loads(stdout)
    assert report["manifest"]["artifacts"][0]["precision"] == "int8"
    assert any("accuracy of the converted model is not checked" in w for w in report["warnings"])
    assert report["manifest"]["artifacts"][0]["metrics"]["accuracy"] is None


@pytest.fixture(scope="session")
def bad_calibration(digits_files: dict[str, Path]) -> Path:
    """Calibration data at 2% of the real range: int8 then saturates and loses ~70 points."""
    with np.load(digits_files["calibration"]) as data:
        path = digits_files["calibration"].with_name("bad_calib.npz")
        np.savez(path, x=data["x"] * 0.02)
    return path


def test_auto_falls_back_when_int8_fails_the_gate(
    digits_files: dict[str, Path], bad_calibration: Path, tmp_path: Path
) -> None:
    out = tmp_path / "auto.ekb"
    code, stdout, _ = _cli("convert", str(digits_files["model"]), "-t", "raspberry-pi-4", "-c",
                           str(bad_calibration), "--eval", str(digits_files["evaluation"]),
                           "-o", str(out), "--json")
    assert code == 0
    tried = json.loads(stdout)["tried"]
    assert [t["precision"] for t in tried] == ["int8", "fp16"]
    assert "drop" in tried[0]["problems"][0] and tried[1]["problems"] == []
    assert read_bundle(out)[0].artifacts[0].precision == "fp16"


def test_accuracy_gate_fails_unless_allowed(
    digits_files: dict[str, Path], bad_calibration: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gate.ekb"
    args = ["convert", str(digits_files["model"]), "-t", "raspberry-pi-5", "-p", "int8",
            "-c", str(bad_calibration), "--eval", str(digits_files["evaluation"]), "-o", str(out)]  # fmt: skip
    code, _, stderr = _cli(*args)
    assert code == 1 and not out.exists()
    error = _error_line(stderr)
    assert error.startswith("error: the converted model loses too much accuracy: int8: top-1 accuracy")
    assert "> allowed 1.00 pp" in error and "--allow-accuracy-drop" in error
    code, _, stderr = _cli(*args, "--max-accuracy-drop", "100")
    assert code == 0
    code, _, stderr = _cli(*args, "--allow-accuracy-drop")
    assert code == 0 and "SHIPPING A MODEL THAT BREAKS ITS LIMITS" in stderr
    accuracy = read_bundle(out)[0].artifacts[0].metrics.accuracy
    assert accuracy is not None and accuracy.gate == "overridden" and accuracy.drop > 10


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"model_storage_mb": 0.01}, "storage budget 0.01 MB of custom"),
        ({"model_memory_mb": 0.5}, "peak memory"),
    ],
)
def test_blown_budget_fails_unless_allowed(
    digits_files: dict[str, Path],
    write_profile,
    tmp_path: Path,
    budget: dict,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    out = tmp_path / "big.ekb"
    args = [
        "convert",
        str(digits_files["model"]),
        "-t",
        str(write_profile(**budget)),
        "-p",
        "fp32",
        "-o",
        str(out),
    ]
    code, _, stderr = _cli(*args)
    assert code == 1 and not out.exists()
    error = _error_line(stderr)
    assert error.startswith("error: the model does not fit custom") and message in error
    assert "try a smaller precision (int8)" in error
    assert "--prune 0.5 --train-data TRAIN.npz, or let edgekit fit search" in error
    code, _, stderr = _cli(*args, "--allow-over-budget")
    assert code == 0 and "SHIPPING A MODEL" in stderr
    assert read_bundle(out)[0].artifacts[0].metrics.within_budget is False


def test_h5_and_saved_model_inputs_convert_to_the_same_function(
    converted: Convert, digits_h5: Path, digits_saved_model: Path, tmp_path: Path,
    digits_eval: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = digits_eval
    reference = run_one(TFLiteBackend(_artifact(converted("fp32"))), x)
    for source in (digits_h5, digits_saved_model):
        result = convert(ConvertOptions(model=source, profile=load_profile("generic-arm64"),
                                        output=tmp_path / f"{source.name}.ekb", precision="fp32"))
        assert result.manifest.source.kind == ("h5" if source == digits_h5 else "saved_model")
        np.testing.assert_allclose(run_one(TFLiteBackend(_artifact(result)), x), reference, atol=1e-5)


def _bad_inputs(digits_files: dict[str, Path], tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    model, calib = str(digits_files["model"]), str(digits_files["calibration"])
    corrupt = tmp_path / "corrupt.keras"  # a whole zip archive, but no Keras model in it
    with zipfile.ZipFile(corrupt, "w") as archive:
        archive.writestr("readme.txt", "this is not a keras archive")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(digits_files["model"].read_bytes()[:20000])
    torch = tmp_path / "model.pt"
    torch.write_bytes(b"\x08\x07")
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04")
    x = np.load(digits_files["calibration"])["x"]
    np.savez(tmp_path / "shape.npz", x=x[..., 0])
    nan = x.copy()
    nan[3, 2, 2, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan)
    np.savez(tmp_path / "few.npz", x=x[:5])
    (tmp_path / "labels.txt").write_text("zero\none\n")
    return {
        "missing model": ([str(tmp_path / "nope.keras"), "-t", "raspberry-pi-5"], "no such file or directory"),
        "pytorch": ([str(torch), "-t", "raspberry-pi-5"], "model.pt: a PyTorch file, which edgekit does not read; export the model to ONNX first, with torch.onnx.export("),
        "unsupported": ([str(tmp_path / "model.pkl"), "-t", "raspberry-pi-5"], "unsupported model file '.pkl'; expected a Keras .keras"),
        "corrupt model": ([str(corrupt), "-t", "raspberry-pi-5"], "cannot be loaded as a Keras model"),
        "truncated model": ([str(truncated), "-t", "raspberry-pi-5"], "truncated.keras: not a complete .keras file"),
        "shape": ([model, "-t", "raspberry-pi-5", "-p", "int8", "-c", str(tmp_path / "shape.npz")],
                  "x has shape (200, 8, 8), the model takes (batch, 8, 8, 1) float32; add the channel axis"),
        "nan": ([model, "-t", "raspberry-pi-5", "-p", "int8", "-c", str(tmp_path / "nan.npz")], "1 NaN"),
        "few": ([model, "-t", "raspberry-pi-5", "-p", "int8", "-c", str(tmp_path / "few.npz")],
                "only 5 samples; at least 10"),
        "no calibration": ([model, "-t", "raspberry-pi-5", "-p", "int8"], "--precision int8 needs calibration data"),
        "labels": ([model, "-t", "raspberry-pi-5", "--labels", str(tmp_path / "labels.txt")], "2 labels for 10 model outputs"),
        "unknown profile": ([model, "-t", "raspberry-pi-9", "-c", calib], "unknown device profile"),
        "malformed profile": ([model, "-t", str(tmp_path / "labels.txt")], "not valid TOML"),
    }  # fmt: skip


def test_bad_input_gets_one_line_exit_2_and_no_output(digits_files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "labels.txt").touch()
    for case, (args, message) in _bad_inputs(digits_files, tmp_path).items():
        if case == "malformed profile":
            args[-1] = str(tmp_path / "broken.toml")
            (tmp_path / "broken.toml").write_text("[budget\n")
        out = tmp_path / f"{case}.ekb"
        code, stdout, stderr = _cli("convert", *args, "-o", str(out))
        assert code == 2, (case, stderr)
        assert message in _error_line(stderr), (case, stderr)
        assert stdout == "", case
        assert not out.exists(), case
    assert sorted(p.name for p in tmp_path.glob("*.ekb")) == []
    assert not list(tmp_path.glob(".*.tmp"))


def test_labels_are_stored(digits_files: dict[str, Path], tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)))
    out = tmp_path / "m.ekb"
    code, _, stderr = _cli("convert", str(digits_files["model"]), "-t", "raspberry-pi-5", "-p", "dynamic",
                           "--labels", str(labels), "-o", str(out))
    assert code == 0, stderr
    assert read_bundle(out)[0].labels == tuple(f"digit {i}" for i in range(10))
    inspected = CliRunner().invoke(main, ["inspect", str(out)], env={"COLUMNS": "200"})
    assert "digit 9" in inspected.stdout and "hashes verified" in inspected.stdout
    as_json = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).stdout)
    assert as_json["artifacts"][0]["precision"] == "dynamic"


@pytest.mark.slow
@pytest.mark.parametrize("profile", sorted(shipped_profile_ids()))
def test_every_shipped_profile_converts(digits_files: dict[str, Path], tmp_path: Path, profile: str) -> None:
    result = convert(ConvertOptions(model=digits_files["model"], profile=load_profile(profile),
                                    output=tmp_path / "m.ekb", calibration=digits_files["calibration"]))
    entry = result.manifest.artifacts[0]
    runtime = load_profile(profile).runtime
    assert entry.format == runtime.formats[0]
    assert entry.selection is not None
    if entry.selection.method == "profile-order":
        assert entry.precision == runtime.precisions_for(entry.format)[0]
    else:  # ONNX on a CPU-only profile: the fastest that passed
        passing = [c for c in entry.selection.candidates if not c.problems]
        assert entry.precision == min(passing, key=lambda c: c.host_latency_ms).precision


def test_the_litert_quantizer_makes_int8_from_the_float_model(digits_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "litert.ekb"
    result = CliRunner().invoke(main, [
        "convert", str(digits_files["model"]), "--target", "raspberry-pi-5", "--format", "tflite",
        "--precision", "int8", "--tflite-quantizer", "litert", "--calibration", str(digits_files["calibration"]),
        "--eval", str(digits_files["evaluation"]), "-o", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    entry = read_bundle(out)[0].artifacts[0]
    assert entry.quantization is not None and entry.quantization.scheme == "litert-static"
    assert entry.metrics.accuracy is not None and entry.metrics.accuracy.gate == "passed"
    assert entry.inputs[0].dtype == "int8" and entry.inputs[0].quantization is not None
    interpreter = Interpreter(model_content=read_bundle(out)[1][entry.path])
    kernels = [t for t in interpreter.get_tensor_details() if len(t["shape"]) == 4 and t["shape"][0] == 32]
    assert kernels and all(np.dtype(k["dtype"]) == np.int8 for k in kernels)
    assert entry.size < 0.3 * entry.metrics.float_parameter_bytes


def test_int8_with_every_compute_layer_kept_in_float_is_refused(digits_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "all-float.ekb"
    result = CliRunner().invoke(main, [
        "convert", str(digits_files["model"]), "--target", "raspberry-pi-5", "--format", "tflite",
        "--precision", "int8", "--keep-float", "*", "--calibration", str(digits_files["calibration"]),
        "--eval", str(digits_files["evaluation"]), "-o", str(out),
    ])  # fmt: skip
    assert result.exit_code == 1 and not out.exists()
    assert result.stderr.strip().splitlines()[-1] == (
        "error: int8 kept all 4 compute layers in float, so the artifact would be the float model under "
        "another label; use --precision fp16 or fp32"
    )


def test_labels_that_are_no_class_index_are_refused_before_converting(
    digits_files: dict[str, Path], tmp_path: Path
) -> None:
    with np.load(digits_files["evaluation"]) as data:
        x, y = data["x"], data["y"].copy()
    y[7] = 12  # the digits model has 10 classes
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    code, _, stderr = _cli("convert", str(digits_files["model"]), "-t", "raspberry-pi-5", "-p", "fp32",
                           "--eval", str(tmp_path / "eval.npz"), "-o", str(tmp_path / "m.ekb"))  # fmt: skip
    assert code == 2 and "Converting" not in stderr, stderr
    assert _error_line(stderr) == (
        "error: evaluation labels run from 0 to 12, and the model has 10 classes: labels are class indices "
        "0 .. classes - 1"
    )


def test_an_eval_set_too_small_for_the_limit_is_warned_before_converting(
    digits_files: dict[str, Path], tmp_path: Path
) -> None:
    with np.load(digits_files["evaluation"]) as data:
        np.savez(tmp_path / "eval.npz", x=data["x"][:171], y=data["y"][:171])
    code, _, stderr = _cli("convert", str(digits_files["model"]), "-t", "raspberry-pi-5", "-p", "fp32",
                           "--eval", str(tmp_path / "eval.npz"), "--max-accuracy-drop", "0.1",
                           "-o", str(tmp_path / "m.ekb"))  # fmt: skip
    flat = " ".join(stderr.split())
    assert code == 0, stderr
    assert ("with 171 evaluation samples one sample is 0.58 points of top-1, more than the 0.1-point accuracy "
            "limit: any changed prediction fails the gate; give at least 1000 samples") in flat  # fmt: skip
    assert flat.index("0.58 points") < flat.index("Converting")


def test_the_same_file_for_calibration_and_eval_is_warned(digits_files: dict[str, Path], tmp_path: Path) -> None:
    data = str(digits_files["evaluation"])
    code, _, stderr = _cli("convert", str(digits_files["model"]), "-t", "raspberry-pi-5", "-p", "fp32",
                           "-c", data, "--eval", data, "-o", str(tmp_path / "m.ekb"))  # fmt: skip
    assert code == 0, stderr
    assert "--calibration and --eval are the same file" in " ".join(stderr.split())
