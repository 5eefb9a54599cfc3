"""The on-device runtime: Model.load/predict against the bare engines, providers, threads, errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from click.testing import CliRunner
from third_party import third_party_model

from edgekit.cli import main
from edgekit.core.bundle import read_bundle, sha256, write_bundle
from edgekit.core.errors import EdgekitError, RuntimeBackendError, ShapeError
from edgekit.core.signing import Trust
from edgekit.core.validation import updated
from edgekit.runtime import Model
from edgekit.runtime.backends.onnx import ONNXBackend, ProviderSettings, provider_options
from edgekit.runtime.bench import bare_call, bench

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def _bare_tflite(content: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=content)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    scale, zero_point = detail["quantization"]
    feed = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8) if scale else x
    interpreter.set_tensor(detail["index"], feed)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    value = interpreter.get_tensor(out["index"])
    scale, zero_point = out["quantization"]
    return (value.astype(np.float32) - zero_point) * scale if scale else value


def _bare_onnx(content: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(content, providers=[CPU])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_predict_equals_the_bare_engine_and_keeps_accuracy(
    converted,
    onnx_converted,
    digits_eval: tuple[np.ndarray, np.ndarray],
    fmt: str,
    precision: str,  # type: ignore[no-untyped-def]
) -> None:
    result = converted(precision) if fmt == "tflite" else onnx_converted(precision)
    manifest, contents = read_bundle(result.output)
    x, y = digits_eval
    model = Model.load(result.output)
    assert (model.info.format, model.info.precision) == (fmt, precision)
    ours = model.predict(x)
    content = contents[manifest.artifacts[0].path]
    bare = _bare_tflite(content, x) if fmt == "tflite" else _bare_onnx(content, x)
    np.testing.assert_array_equal(ours, bare)
    accuracy = manifest.artifacts[0].metrics.accuracy
    assert accuracy is not None
    assert accuracy.float_model - np.mean(ours.argmax(1) == y) * 100 <= 1.0


def test_info_says_what_runs(converted) -> None:  # type: ignore[no-untyped-def]
    model = Model.load(converted("int8").output, threads=1)
    info = model.info
    assert info.engine.startswith("ai-edge-litert ") and info.provider is None
    assert info.threads == 1 and info.load_ms > 0 and info.name == "digits"
    assert info.inputs[0].dtype == "int8" and info.inputs[0].scale is not None


def test_tensorrt_options_follow_the_precision(tmp_path: Path) -> None:
    int8 = provider_options(
        TRT, ProviderSettings(precision="int8", trt_cache_dir=tmp_path, trt_workspace_bytes=1 << 28)
    )
    assert int8 == {
        "trt_max_workspace_size": str(1 << 28), "trt_fp16_enable": "True", "trt_int8_enable": "True",
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path), "trt_timing_cache_enable": "True",
    }  # fmt: skip
    fp32 = provider_options(TRT, ProviderSettings(precision="fp32"))
    assert (
        fp32["trt_fp16_enable"] == fp32["trt_int8_enable"] == "False" and "trt_engine_cache_path" not in fp32
    )
    assert provider_options(CUDA, ProviderSettings()) == {"device_id": "0"}
    assert provider_options(CPU, ProviderSettings()) == {}


def test_gpu_providers_fall_back_to_cuda_then_cpu(onnx_converted, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    manifest, contents = read_bundle(onnx_converted("int8", profile="jetson-orin-nano").output)
    content = contents[manifest.artifacts[0].path]
    requests: list[list[tuple[str, dict]]] = []

    def session_factory(model: bytes, sess_options: object, providers: list[tuple[str, dict]]) -> object:
        requests.append(providers)
        first = providers[0][0]
        if first in (TRT, CUDA):  # no GPU here: the real session would fail the same way
            raise RuntimeError(f"{first}: CUDA driver not found\nmore detail")
        return ort.InferenceSession(model, sess_options=sess_options, providers=providers)

    caplog.set_level(logging.WARNING, "edgekit.runtime")
    backend = ONNXBackend(content, providers=[TRT, CUDA, CPU], settings=ProviderSettings(precision="int8"),
                          available=[TRT, CUDA, CPU], session_factory=session_factory)
    assert [[name for name, _ in r] for r in requests] == [[TRT, CUDA, CPU], [CUDA, CPU], [CPU]]
    assert requests[0][0][1]["trt_int8_enable"] == "True"
    assert backend.provider == CPU
    assert backend.fallbacks == [f"{TRT} failed to start ({TRT}: CUDA driver not found)",
                                 f"{CUDA} failed to start ({CUDA}: CUDA driver not found)"]  # fmt: skip
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"edgekit: running on {CPU}: {TRT} failed")


def test_missing_providers_are_reported_in_info(onnx_converted) -> None:  # type: ignore[no-untyped-def]
    model = Model.load(onnx_converted("fp32", profile="jetson-orin-nano").output)
    assert model.info.provider == CPU
    assert f"{TRT} is not in this onnxruntime build" in model.info.fallbacks


def test_two_format_bundle_picks_what_this_device_runs(digits_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "both.ekb"
    result = CliRunner().invoke(main, ["convert", str(digits_files["model"]), "-t", "jetson-orin-nano",
                                       "--format", "both", "-p", "fp32", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    # jetson-orin-nano lists onnx first; without a GPU provider that order still holds.
    assert Model.load(out, allow_unsigned=True).info.format == "onnx"
    assert Model.load(out, format="tflite", allow_unsigned=True).info.format == "tflite"


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_eight_threads_get_the_serial_results(converted, onnx_converted, digits_eval, fmt: str) -> None:  # type: ignore[no-untyped-def]
    model = Model.load((converted if fmt == "tflite" else onnx_converted)("int8").output)
    x, _ = digits_eval
    batches = [x[i % 40 : i % 40 + 1 + i % 3] for i in range(200)]
    expected = [model.predict(b) for b in batches]
    results: dict[int, list[np.ndarray]] = {}

    def worker(index: int) -> None:
        results[index] = [model.predict(b) for b in batches]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index in range(8):
        for got, want in zip(results[index], expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_bad_inputs_are_clear_and_leave_the_model_usable(converted, digits_eval) -> None:  # type: ignore[no-untyped-def]
    model = Model.load(converted("int8").output)
    x, _ = digits_eval
    name = model.info.inputs[0].name
    cases = [
        (
            x[0],
            f"input '{name}' takes rank 4 (batch, 8, 8, 1), got shape (8, 8, 1); add the batch axis with x[None]",
        ),
        (x[:, :4], f"input '{name}' takes (batch, 8, 8, 1), got shape (450, 4, 8, 1)"),
        (np.array([["a"]]), "takes numbers (batch, 8, 8, 1), got dtype <U1"),
        ({"pixels": x}, f"'pixels' is not an input of this model; it takes {name}"),
        ({}, f"input '{name}' is missing; the model takes {name}"),
        (x[:0], "is an empty batch"),
    ]
    for bad, message in cases:
        with pytest.raises(ShapeError) as err:
            model.predict(bad)
        assert message in str(err.value)
    with pytest.raises(ShapeError) as err:  # rank one short, but the dims are wrong: not one sample
        model.predict(x[0, :4])
    assert str(err.value) == f"input '{name}' takes rank 4 (batch, 8, 8, 1), got shape (4, 8, 1)"
    assert model.predict({name: x[:2]}).shape == (2, 10)  # still usable


def test_corrupt_artifact_and_custom_op_fail_at_load(converted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest, contents = read_bundle(converted("fp32").output)
    entry = manifest.artifacts[0]
    garbage = b"TFL3" + bytes(range(256)) * 4
    fake = updated(entry, sha256=sha256(garbage), size=len(garbage))
    corrupt = tmp_path / "corrupt.ekb"
    write_bundle(corrupt, updated(manifest, artifacts=(fake,)), {entry.path: garbage})
    with pytest.raises(RuntimeBackendError, match="the TFLite runtime could not load the model"):
        Model.load(corrupt, allow_unsigned=True)
    custom = third_party_model("face_landmark_with_attention.tflite")
    from edgekit.runtime.backends import TFLiteBackend

    with pytest.raises(RuntimeBackendError, match="needs the custom op 'Landmarks2TransformMatrix'"):
        TFLiteBackend(custom.read_bytes())


def test_ready_made_tflite_ships_as_it_is(tmp_path: Path) -> None:
    model_file = third_party_model("face_detection_short_range.tflite")
    out = tmp_path / "face.ekb"
    result = CliRunner().invoke(
        main, ["convert", str(model_file), "-t", "raspberry-pi-4", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert any("no accuracy gate was run" in w for w in report["warnings"])
    manifest, contents = read_bundle(out)
    entry = manifest.artifacts[0]
    assert contents[entry.path] == model_file.read_bytes()  # byte for byte
    assert (entry.format, entry.precision, manifest.source.kind) == ("tflite", "fp16", "tflite")
    assert entry.inputs[0].shape == (1, 128, 128, 3) and len(entry.outputs) == 2
    assert entry.metrics.peak_memory_bytes > 0 and entry.metrics.accuracy is None
    model = Model.load(out, allow_unsigned=True)
    outputs = model.predict(np.zeros((3, 128, 128, 3), np.float32))  # batch 3 on a batch-1 model
    assert isinstance(outputs, dict) and [v.shape for v in outputs.values()] == [(3, 896, 16), (3, 896, 1)]
    failing = CliRunner().invoke(
        main, ["convert", str(model_file), "-t", "raspberry-pi-4", "-p", "int8", "-o", str(out)]
    )
    assert failing.exit_code == 2 and "is already fp16" in failing.stderr


def test_running_a_bundle_imports_no_tensorflow(converted, onnx_converted) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import sys, numpy as np\nfrom edgekit.runtime import Model\n"
        f"for path in {[str(converted('int8').output), str(onnx_converted('int8').output)]!r}:\n"
        "    Model.load(path).predict(np.zeros((1, 8, 8, 1), np.float32))\n"
        "print([m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_cli_prints_top_k_labels(converted, digits_eval, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, y = digits_eval
    np.save(tmp_path / "sample.npy", x[:4])
    result = CliRunner().invoke(main, ["run", str(converted("int8").output), "-i", str(tmp_path / "sample.npy"),
                                       "--top-k", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    top = json.loads(result.stdout)["top_k"]
    assert len(top) == 4 and all(len(t) == 3 for t in top)
    assert [t[0]["class"] for t in top] == list(y[:4])  # the digits model gets these right
    bad = CliRunner().invoke(main, ["run", str(converted("int8").output), "-i", str(tmp_path / "nope.npy")])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: input data")


def test_bench_measures_and_compares_with_the_bare_engine(converted, onnx_converted) -> None:  # type: ignore[no-untyped-def]
    for result in (converted("int8"), onnx_converted("int8")):
        model = Model.load(result.output)
        report = bench(model, runs=50, warmup=5, compare_bare=True)
        assert report.bare is not None and report.overhead_ratio is not None
        assert 0 < report.edgekit.p50_ms <= report.edgekit.p90_ms <= report.edgekit.p99_ms
        assert report.peak_rss_bytes > 0 and report.latency_budget_ms is None
        bare = bare_call(model, np.zeros((1, 8, 8, 1), np.float32))()
        assert len(bare) == 1
    cli = CliRunner().invoke(main, ["bench", str(converted("int8").output), "--runs", "20", "--json"])
    assert cli.exit_code == 0 and json.loads(cli.stdout)["edgekit"]["p50_ms"] > 0


def test_bench_takes_a_batch_and_several_callers_at_once(converted) -> None:  # type: ignore[no-untyped-def]
    bundle = str(converted("int8").output)
    cli = CliRunner().invoke(main, ["bench", bundle, "--runs", "40", "--batch", "4", "--concurrency", "3", "--json"])
    assert cli.exit_code == 0, cli.output
    report = json.loads(cli.stdout)
    assert (report["batch"], report["concurrency"], report["runs"]) == (4, 3, 40)
    assert report["edgekit"]["throughput_per_s"] > 0 and report["bare"] is None
    refused = CliRunner().invoke(main, ["bench", bundle, "--concurrency", "2", "--compare-bare"])
    assert refused.exit_code == 2 and "leave --concurrency at 1" in refused.stderr


def test_bench_fails_a_blown_latency_budget(digits_files, write_profile, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import tomli_w
    import tomllib

    path = write_profile()
    data = tomllib.loads(path.read_text())
    data["budget"]["latency_ms"] = 0.000001
    path.write_text(tomli_w.dumps(data))
    out = tmp_path / "slow.ekb"
    assert CliRunner().invoke(main, ["convert", str(digits_files["model"]), "-t", str(path), "-p", "fp32",
                                     "-o", str(out)]).exit_code == 0
    result = CliRunner().invoke(main, ["bench", str(out), "--runs", "20", "--allow-unsigned"])
    assert result.exit_code == 1 and "breaks the profile's 1e-06 ms budget" in result.stderr


def test_unsigned_bundles_need_an_explicit_yes(
    digits_files, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "unsigned.ekb"
    assert CliRunner().invoke(main, ["convert", str(digits_files["model"]), "-t", "raspberry-pi-5",
                                     "-p", "fp32", "-o", str(out)]).exit_code == 0
    with pytest.raises(EdgekitError, match="is not signed; sign it with: edgekit sign"):
        Model.load(out)
    caplog.set_level(logging.WARNING, "edgekit")
    Model.load(out, allow_unsigned=True)
    assert any("UNSIGNED" in r.getMessage() for r in caplog.records)


def test_bundle_bytes_never_touch_the_disk(
    converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import tempfile

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the runtime wrote a temp file")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    monkeypatch.setattr(zipfile.ZipFile, "extract", refuse)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", refuse)
    assert Model.load(converted("int8").output).predict(np.zeros((1, 8, 8, 1), np.float32)).shape == (1, 10)


LEGACY_BUNDLES = ROOT / "build" / "runtime-bundles"


def test_export_bundles_for_the_legacy_runtime_leg(converted, onnx_converted, digits_eval, publisher) -> None:  # type: ignore[no-untyped-def]
    """Bundles, their publisher's key and their outputs, for tests/legacy to run under
    tflite-runtime 2.14 and numpy<2."""
    LEGACY_BUNDLES.mkdir(parents=True, exist_ok=True)
    (LEGACY_BUNDLES / "trust").mkdir(exist_ok=True)
    for old in (LEGACY_BUNDLES / "trust").glob("*.pub"):
        old.unlink()
    Trust(LEGACY_BUNDLES / "trust").add(publisher.with_suffix(".pub"))
    x, _ = digits_eval
    expected = {"x": x[:32]}
    sources = {f"tflite-{p}": converted(p).output for p in PRECISIONS}
    sources["onnx-int8"] = onnx_converted("int8").output
    for name, path in sources.items():
        (LEGACY_BUNDLES / f"{name}.ekb").write_bytes(path.read_bytes())
        expected[name] = Model.load(path).predict(x[:32])
    np.savez(LEGACY_BUNDLES / "expected.npz", **expected)
    assert len(list(LEGACY_BUNDLES.glob("*.ekb"))) == 5


def test_run_takes_an_image_when_the_bundle_defines_preprocessing(
    converted, digits_eval, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    x, y = digits_eval
    image = tmp_path / "digit.png"
    Image.fromarray((x[0, :, :, 0] * 255).round().astype(np.uint8), mode="L").resize((32, 32)).save(image)
    bundle = str(converted("int8").output)  # calibrated on [0, 1], NHWC
    result = CliRunner().invoke(main, ["run", bundle, "-i", str(image), "--top-k", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["top_k"][0][0]["class"] == y[0]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = CliRunner().invoke(main, ["run", bundle, "-i", str(tmp_path / "broken.png")])
    assert broken.exit_code == 2 and "not a readable image" in broken.stderr


def test_threads_default_from_the_profile_and_warmup_runs_at_load(
    onnx_converted, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    calls: list[dict[str, tuple[int, ...]]] = []
    original = ONNXBackend.run

    def spy(self, feed):  # type: ignore[no-untyped-def]
        calls.append({name: x.shape for name, x in feed.items()})
        return original(self, feed)

    monkeypatch.setattr(ONNXBackend, "run", spy)
    path = onnx_converted("fp32").output  # x86-gateway: threads = 4, capped at this machine's cores
    calls.clear()  # the conversion itself may just have run the backend
    model = Model.load(path, warmup=True)
    assert calls == [{"image": (1, 8, 8, 1)}]
    import os

    assert model.info.threads == min(4, os.cpu_count() or 1)
    assert Model.load(path).info.threads == model.info.threads and len(calls) == 1
