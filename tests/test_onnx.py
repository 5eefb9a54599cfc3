"""ONNX conversion and quantization: Keras via tf2onnx, and ONNX graphs with real-world traps."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphs
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from edgekit.cli import main
from edgekit.convert import ConvertOptions, ConvertResult, convert
from edgekit.converters.onnx import target_opset
from edgekit.core.bundle import read_bundle
from edgekit.core.profiles import load_profile
from edgekit.views.progress import SilentReporter

Convert = Callable[..., ConvertResult]


def _model(result: ConvertResult) -> tuple[onnx.ModelProto, bytes]:
    manifest, contents = read_bundle(result.output)
    content = contents[manifest.artifacts[0].path]
    return onnx.load_from_string(content), content


def _top1(content: bytes, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float(np.mean(out.argmax(1) == y) * 100)


@pytest.mark.parametrize(
    ("precision", "method"),
    [("fp32", "minmax"), ("fp16", "minmax"), ("dynamic", "minmax"), ("int8", "minmax"),
     ("int8", "entropy"), ("int8", "percentile")],
)
def test_keras_to_onnx_runs_and_keeps_accuracy(
    onnx_converted: Convert, digits_eval: tuple[np.ndarray, np.ndarray], precision: str, method: str
) -> None:
    result = onnx_converted(precision, method)
    model, content = _model(result)
    entry = result.manifest.artifacts[0]
    assert (entry.format, entry.precision, entry.opset) == ("onnx", precision, 17)
    x, y = digits_eval
    float_top1 = result.manifest.artifacts[0].metrics.accuracy.float_model  # type: ignore[union-attr]
    assert abs(float_top1 - _top1(content, x, y)) <= 1.0
    ops = {node.op_type for node in model.graph.node}
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert entry.quantization is not None and entry.quantization.calibration_method == method
        assert entry.quantization.activations == "uint8 asymmetric"  # a CPU profile
    if precision == "fp16":
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        assert entry.inputs[0].dtype == "float32"  # float32 in and out
    if precision == "dynamic":
        assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}


def test_jetson_int8_is_symmetric_qdq_for_tensorrt(onnx_converted: Convert) -> None:
    result = onnx_converted("int8", profile="jetson-orin-nano")
    model, _ = _model(result)
    zero_points = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("zero_point")]
    assert zero_points and all(not zp.any() for zp in zero_points)
    assert all(zp.dtype in (np.int8, np.int32) for zp in zero_points)
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and any(a.name == "axis" for a in n.attribute)]  # fmt: skip
    assert per_channel, "weights are quantized per channel"
    quantization = result.manifest.artifacts[0].quantization
    assert quantization is not None and quantization.target == "tensorrt"


def test_opset_follows_the_tensorrt_version(digits_files: dict[str, Path], tmp_path: Path) -> None:
    assert target_opset(load_profile("jetson-nano")) == 13  # TensorRT 8.2
    assert target_opset(load_profile("jetson-orin-nano")) == 17
    result = convert(ConvertOptions(model=digits_files["model"], profile=load_profile("jetson-nano"),
                                    output=tmp_path / "n.ekb", precision="fp16"))
    assert (result.manifest.artifacts[0].format, result.manifest.artifacts[0].opset) == ("onnx", 13)


def _data(tmp_path: Path, shape: tuple[int, ...], n: int = 120, name: str = "calib") -> Path:
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=np.random.default_rng(len(name)).normal(0, 1, (n, *shape)).astype(np.float32))
    return path


def _convert_onnx(
    model_path: Path, tmp_path: Path, shape: tuple[int, ...], **options
) -> tuple[ConvertResult, SilentReporter]:  # type: ignore[no-untyped-def]
    """Random graphs have small top-1 margins, so agreement may move by a few points."""
    options.setdefault("max_accuracy_drop", 5.0)
    reporter = _NoteCollector()
    result = convert(
        ConvertOptions(model=model_path, profile=load_profile("x86-gateway"), output=tmp_path / "out.ekb",
                       calibration=_data(tmp_path, shape), evaluation=_data(tmp_path, shape, name="eval"),
                       **options),
        reporter,
    )
    return result, reporter


class _NoteCollector(SilentReporter):
    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def _agreement(result: ConvertResult) -> float:
    accuracy = result.manifest.artifacts[0].metrics.accuracy
    assert accuracy is not None and accuracy.metric == "agreement"
    return accuracy.artifact


def test_opset_11_model_is_upgraded_for_per_channel_int8(tmp_path: Path) -> None:
    path = onnx_graphs.save(onnx_graphs.conv_classifier(opset=11), tmp_path / "paddle_like.onnx")
    result, reporter = _convert_onnx(path, tmp_path, (3, 8, 8), precision="int8")
    entry = result.manifest.artifacts[0]
    assert entry.opset == 13 and entry.quantization is not None and entry.quantization.per_channel
    assert any("upgraded the model from opset 11 to 13" in n for n in reporter.notes)
    assert _agreement(result) >= 95 and entry.metrics.accuracy.cosine > 0.99  # type: ignore[union-attr]
    assert result.manifest.preprocessing.layout == "NCHW"


def test_dynamic_dims_are_fixed_from_the_calibration_data(tmp_path: Path) -> None:
    path = onnx_graphs.save(onnx_graphs.conv_classifier(opset=13, spatial=("h", "w")), tmp_path / "dyn.onnx")
    result, reporter = _convert_onnx(path, tmp_path, (3, 12, 12), precision="int8")
    assert any(
        "fixed the dynamic dims of input 'image' from the calibration data: (3, 12, 12)" in n
        for n in reporter.notes
    )
    assert result.manifest.artifacts[0].inputs[0].shape == (None, 3, 12, 12)  # batch stays dynamic
    assert _agreement(result) >= 95


def test_dims_sharing_one_symbolic_name_are_fixed_by_position(tmp_path: Path) -> None:
    """A real opset-11 OCR classifier names both H and W '?': fixing H must not fix W."""
    path = onnx_graphs.save(onnx_graphs.conv_classifier(opset=11, spatial=("?", "?")), tmp_path / "ocr.onnx")
    result, reporter = _convert_onnx(path, tmp_path, (3, 6, 24), precision="int8")
    assert any(
        "fixed the dynamic dims of input 'image' from the calibration data: (3, 6, 24)" in n
        for n in reporter.notes
    )
    assert result.manifest.artifacts[0].inputs[0].shape == (None, 3, 6, 24)
    assert _agreement(result) >= 95


def test_input_shape_option_fixes_dims(tmp_path: Path) -> None:
    path = onnx_graphs.save(onnx_graphs.conv_classifier(opset=13, spatial=("h", "w")), tmp_path / "dyn.onnx")
    result, _ = _convert_onnx(path, tmp_path, (3, 10, 10), precision="fp32", input_shape=(None, 3, 10, 10))
    assert result.manifest.artifacts[0].inputs[0].shape == (None, 3, 10, 10)


def test_failing_symbolic_shape_inference_falls_back_and_says_so(tmp_path: Path) -> None:
    path = onnx_graphs.save(onnx_graphs.concat_bias_mlp(), tmp_path / "concat.onnx")
    result, reporter = _convert_onnx(path, tmp_path, (16,), precision="int8")
    assert any(
        "symbolic shape inference failed (AssertionError" in n and "fell back" in n for n in reporter.notes
    )
    assert result.manifest.artifacts[0].metrics.accuracy.cosine > 0.99  # type: ignore[union-attr]


def test_external_data_weights_are_read_and_inlined(tmp_path: Path) -> None:
    path = onnx_graphs.save(onnx_graphs.conv_classifier(opset=13), tmp_path / "ext.onnx", external=True)
    assert (tmp_path / "ext.weights").stat().st_size > 1000
    result, _ = _convert_onnx(path, tmp_path, (3, 8, 8), precision="int8")
    assert result.manifest.source.size_bytes > (tmp_path / "ext.weights").stat().st_size
    model, _ = _model(result)
    assert not any(t.external_data for t in model.graph.initializer)
    assert _agreement(result) >= 95


def test_int8_fallback_keeps_the_lossy_layer_in_float(tmp_path: Path) -> None:
    path = onnx_graphs.save(onnx_graphs.outlier_mlp(), tmp_path / "outlier.onnx")
    result, reporter = _convert_onnx(path, tmp_path, (16,), precision="int8", max_accuracy_drop=1.0)
    entry = result.manifest.artifacts[0]
    assert any("missed the accuracy budget" in n for n in reporter.notes), reporter.notes
    assert entry.quantization is not None and "layer3" in entry.quantization.float_nodes
    assert "layer1" not in entry.quantization.float_nodes
    assert entry.metrics.accuracy is not None and entry.metrics.accuracy.gate == "passed"
    model, _ = _model(result)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # the rest stays int8


def test_keep_float_by_hand_and_a_pattern_that_matches_nothing(tmp_path: Path) -> None:
    path = onnx_graphs.save(onnx_graphs.conv_classifier(opset=13), tmp_path / "m.onnx")
    result, _ = _convert_onnx(path, tmp_path, (3, 8, 8), precision="int8", keep_float=("f*",))
    assert result.manifest.artifacts[0].quantization.float_nodes == ("flatten", "fc")  # type: ignore[union-attr]
    code, stderr = _cli("convert", str(path), "-t", "x86-gateway", "-p", "int8", "-c", str(_data(tmp_path, (3, 8, 8))),
                        "--keep-float", "zzz*", "-o", str(tmp_path / "z.ekb"))
    assert code == 2 and "--keep-float 'zzz*' matches no node" in stderr and not (tmp_path / "z.ekb").exists()


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stderr


def test_auto_on_a_cpu_profile_picks_the_fastest_that_passes(
    onnx_converted: Convert, digits_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "auto.ekb"
    code, _ = _cli("convert", str(digits_files["model"]), "-t", "x86-gateway", "--format", "onnx",
                   "-c", str(digits_files["calibration"]), "--eval", str(digits_files["evaluation"]), "-o", str(out))
    assert code == 0
    entry = read_bundle(out)[0].artifacts[0]
    selection = entry.selection
    assert selection is not None and selection.method == "measured-fastest"
    assert [c.precision for c in selection.candidates] == list(
        load_profile("x86-gateway").runtime.precisions_for("onnx")
    )
    passing = [c for c in selection.candidates if not c.problems]
    assert entry.precision == min(passing, key=lambda c: c.host_latency_ms).precision


def test_auto_on_a_gpu_profile_follows_the_order_and_says_it_did_not_measure(
    digits_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "gpu.ekb"
    code, _ = _cli("convert", str(digits_files["model"]), "-t", "jetson-orin-nano",
                   "-c", str(digits_files["calibration"]), "--eval", str(digits_files["evaluation"]), "-o", str(out))
    assert code == 0
    entry = read_bundle(out)[0].artifacts[0]
    assert (entry.format, entry.precision) == ("onnx", "int8")  # the profile's GPU path, first in order
    assert entry.selection is not None and entry.selection.method == "profile-order"
    assert "not measured: this host cannot run TensorrtExecutionProvider" in entry.selection.reason


def test_format_both_ships_tflite_and_onnx(digits_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "both.ekb"
    code, stderr = _cli("convert", str(digits_files["model"]), "-t", "raspberry-pi-5", "--format", "both",
                        "-p", "fp32", "-o", str(out))
    assert code == 0, stderr
    manifest, contents = read_bundle(out)
    assert sorted(a.format for a in manifest.artifacts) == ["onnx", "tflite"]
    assert set(contents) == {"model.fp32.tflite", "model.fp32.onnx"}
    inspected = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).stdout)
    assert len(inspected["artifacts"]) == 2


def test_onnx_source_cannot_become_tflite(tmp_path: Path) -> None:
    path = onnx_graphs.save(onnx_graphs.conv_classifier(opset=13), tmp_path / "m.onnx")
    code, stderr = _cli(
        "convert", str(path), "-t", "raspberry-pi-5", "--format", "tflite", "-o", str(tmp_path / "m.ekb")
    )
    assert code == 2 and "an ONNX model converts to --format onnx" in stderr


def test_bad_onnx_inputs_get_one_line_and_no_bundle(tmp_path: Path) -> None:
    good = onnx_graphs.save(onnx_graphs.conv_classifier(opset=13), tmp_path / "good.onnx").read_bytes()
    (tmp_path / "text.onnx").write_text("this is not a model")
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    onnx_graphs.save(onnx_graphs.custom_op_model(), tmp_path / "custom.onnx")
    (tmp_path / "good.onnx").write_bytes(good)
    wrong = _data(tmp_path, (3, 9, 9), name="wrong")
    cases = {
        "text.onnx": ([], "not a valid ONNX model"),
        "truncated.onnx": ([], "not a valid ONNX model"),
        "custom.onnx": ([], "ONNX Runtime has no kernel for the op 'com.example:Frobnicate'"),
        "good.onnx": (
            ["-p", "int8", "-c", str(wrong)],
            "x has shape (120, 3, 9, 9), the model takes (batch, 3, 8, 8)",
        ),
    }
    for name, (extra, message) in cases.items():
        out = tmp_path / f"{name}.ekb"
        code, stderr = _cli("convert", str(tmp_path / name), "-t", "x86-gateway", *extra, "-o", str(out))
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 2, (name, stderr)
        assert len(errors) == 1 and message in errors[0], (name, stderr)
        assert "Traceback" not in stderr and not out.exists()


@pytest.fixture(scope="module")
def normalized_mlp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tabular MLP whose first layer is a Normalization adapted on the data, as the Keras
    docs teach, on scikit-learn's breast-cancer features (0.0005 to 4,000)."""
    import keras
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), data.target
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    model = keras.Sequential([keras.Input((30,)), norm, keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:400], y[:400], epochs=20, verbose=0)
    folder = tmp_path_factory.mktemp("normalized")
    model.save(folder / "mlp.keras")
    np.savez(folder / "calib.npz", x=x[:200])
    np.savez(folder / "eval.npz", x=x[400:], y=y[400:])
    return {
        "model": folder / "mlp.keras",
        "calibration": folder / "calib.npz",
        "evaluation": folder / "eval.npz",
    }


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_normalization_layer_becomes_constants_not_inputs(
    normalized_mlp: dict[str, Path], tmp_path: Path, precision: str
) -> None:
    result = convert(ConvertOptions(
        model=normalized_mlp["model"], profile=load_profile("x86-gateway"), output=tmp_path / "mlp.ekb",
        precision=precision, calibration=normalized_mlp["calibration"], evaluation=normalized_mlp["evaluation"],
    ))
    entry = result.manifest.artifacts[0]
    model, _ = _model(result)
    assert len(model.graph.input) == 1  # the data only: mean and variance are constants, not inputs
    assert [t.name for t in entry.inputs] == [model.graph.input[0].name] and entry.inputs[0].shape == (
        None,
        30,
    )
    assert entry.metrics.accuracy is not None and entry.metrics.accuracy.gate == "passed"


def test_fp16_that_overflows_keeps_the_overflowing_nodes_in_fp32(tmp_path: Path) -> None:
    """fp16 of a graph with activations past 65,504 gives garbage; the fallback finds the
    tensors from the float model's activations and keeps their nodes in fp32."""
    path = onnx_graphs.save(onnx_graphs.fp16_overflow(), tmp_path / "overflow.onnx")
    x = np.random.default_rng(0).normal(0, 1, (120, 16)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    reporter = _NoteCollector()
    result = convert(ConvertOptions(model=path, profile=load_profile("x86-gateway"), output=tmp_path / "o.ekb",
                                    precision="fp16", evaluation=tmp_path / "eval.npz"), reporter)
    entry = result.manifest.artifacts[0]
    assert any("missed the accuracy budget" in note and "wide" in note for note in reporter.notes)
    assert entry.quantization is not None and "wide" in entry.quantization.float_nodes
    accuracy = entry.metrics.accuracy
    assert accuracy is not None and accuracy.gate == "passed" and accuracy.cosine > 0.99


@pytest.mark.slow
def test_tabular_tflite_int8_keeps_the_input_normalization_in_float(
    normalized_mlp: dict[str, Path], tmp_path: Path
) -> None:
    """Full-integer int8 gives raw features spanning 0.0005 to 4,000 one input scale and
    collapses; the fallback keeps the Normalization's SUB and MUL in float, so the input
    stays float32 and is quantized after them, and int8 passes the gate."""
    reporter = _NoteCollector()
    result = convert(ConvertOptions(
        model=normalized_mlp["model"], profile=load_profile("raspberry-pi-5"), output=tmp_path / "mlp.ekb",
        format="tflite", precision="int8", calibration=normalized_mlp["calibration"],
        evaluation=normalized_mlp["evaluation"],
    ), reporter)
    first = next(note for note in reporter.notes if "missed the accuracy budget" in note)
    assert "normalization" in first.split("keeping")[1]  # the input's normalization, first
    entry = result.manifest.artifacts[0]
    assert entry.quantization is not None and entry.quantization.io == "float32"
    assert entry.inputs[0].dtype == "float32" and entry.inputs[0].quantization is None
    accuracy = entry.metrics.accuracy
    assert accuracy is not None and accuracy.gate == "passed" and accuracy.drop <= 1.0
