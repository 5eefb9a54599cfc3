"""Pruning and distillation of Keras 3 models, on the digits CNN."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import digits
from helpers import run_one

from edgekit import compress
from edgekit.compress.pruning import PruningError, nonzero_parameters, parameter_count


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return digits.digits_splits(0)


@pytest.fixture(scope="module")
def teacher(digits_files: dict[str, Path]) -> Any:
    import keras

    return keras.models.load_model(digits_files["model"])


def top1(model: Any, data: dict[str, np.ndarray]) -> float:
    return float(100 * (model.predict(data["x_eval"], verbose=0).argmax(axis=1) == data["y_eval"]).mean())


def tflite_bytes(model: Any, tmp_path: Path) -> bytes:
    import tensorflow as tf

    folder = tmp_path / f"saved-{model.name}-{id(model)}"
    model.export(str(folder), verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(str(folder)).convert()


@pytest.mark.slow
def test_structured_pruning_builds_a_smaller_model_that_keeps_accuracy(
    teacher: Any, data: dict[str, np.ndarray], tmp_path: Path
) -> None:
    pruned = compress.prune(teacher, 0.5, (data["x_train"], data["y_train"]), structured=True, epochs=5)
    before, after = parameter_count(teacher), parameter_count(pruned)
    assert after <= 0.6 * before  # at least 40% fewer parameters (measured: 74% fewer)
    assert [layer.filters for layer in pruned.layers[:2]] == [8, 16]
    assert pruned.layers[-1].units == 10  # the output is never pruned
    assert top1(pruned, data) >= top1(teacher, data) - 1.5
    size_before, size_after = len(tflite_bytes(teacher, tmp_path)), len(tflite_bytes(pruned, tmp_path))
    assert size_after <= 0.4 * size_before  # the file shrinks with the parameters


@pytest.mark.slow
def test_magnitude_pruning_zeroes_weights_the_file_compresses(
    teacher: Any, data: dict[str, np.ndarray], tmp_path: Path
) -> None:
    pruned = compress.prune(teacher, 0.5, (data["x_train"], data["y_train"]), epochs=3)
    assert parameter_count(pruned) == parameter_count(teacher)
    kernels = [layer.kernel.numpy() for layer in pruned.layers if hasattr(layer, "kernel")]
    assert all(np.mean(k == 0) >= 0.5 for k in kernels)
    assert nonzero_parameters(pruned) < 0.55 * parameter_count(teacher)
    assert top1(pruned, data) >= top1(teacher, data) - 1.5
    zipped_before = len(gzip.compress(tflite_bytes(teacher, tmp_path)))
    zipped_after = len(gzip.compress(tflite_bytes(pruned, tmp_path)))
    assert zipped_after <= 0.75 * zipped_before


def test_one_shot_pruning_without_data(teacher: Any) -> None:
    pruned = compress.prune(teacher, 0.8)
    dense = pruned.layers[-2].kernel.numpy()
    assert np.mean(dense == 0) == pytest.approx(0.8, abs=0.01)
    assert teacher.layers[-2].kernel.numpy().all()  # the original is untouched


def test_structured_pruning_refuses_branches_and_unknown_layers() -> None:
    import keras

    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    b = keras.layers.Conv2D(8, 3, padding="same")(a)
    joined = keras.layers.Add(name="residual")([a, b])
    flat = keras.layers.Flatten()(joined)
    residual = keras.Model(inputs, keras.layers.Dense(10)(flat))
    with pytest.raises(PruningError, match="'residual' \\(Add\\) joins 2 branches"):
        compress.prune(residual, 0.5, structured=True)
    lstm = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.LSTM(4, name="memory"),
            keras.layers.Dense(4),
            keras.layers.Dense(2),
        ]
    )
    with pytest.raises(PruningError, match="'memory' \\(LSTM\\)"):
        compress.prune(lstm, 0.5, structured=True)
    with pytest.raises(ValueError, match="sparsity"):
        compress.prune(lstm, 1.5)


def _student() -> Any:
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


@pytest.mark.slow
def test_distilled_student_matches_or_beats_the_same_student_alone(
    teacher: Any, data: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    import keras

    assert parameter_count(_student()) * 3 <= parameter_count(teacher)
    train = (data["x_train"], data["y_train"])
    alone, distilled = [], []
    for seed in (0, 1, 2):  # one seed's noise (about 1 point on 450 images) hides the effect
        keras.utils.set_random_seed(seed)
        plain = _student()
        plain.compile("adam", "sparse_categorical_crossentropy")
        plain.fit(*train, epochs=20, batch_size=32, verbose=0)
        alone.append(top1(plain, data))
        keras.utils.set_random_seed(seed)  # the same initial weights
        distilled.append(top1(compress.distill(teacher, _student(), train, epochs=20, seed=seed), data))
    with capsys.disabled():
        print(
            f"\ndistillation, top-1 mean of 3 seeds: alone {np.mean(alone):.2f}, distilled {np.mean(distilled):.2f}"
        )
    assert np.mean(distilled) >= np.mean(alone) - 0.5


def _with_an_outlier_channel(data: dict[str, np.ndarray]) -> Any:
    """A digits CNN with two 1x1 convolutions that scale channel 0 up 2000x and back down:
    the same function in float, but the int8 tensor between them (activations have one
    scale per tensor) rounds the other 15 channels to zero."""
    import keras

    keras.utils.set_random_seed(0)
    trained = digits.build_digits_cnn()
    trained.compile("adam", "sparse_categorical_crossentropy")
    trained.fit(data["x_train"], data["y_train"], epochs=10, batch_size=32, verbose=0)
    conv1, conv2, pool, flatten, dense1, dense2 = trained.layers
    inputs = keras.Input((8, 8, 1), name="image")
    outlier = keras.layers.Conv2D(16, 1, use_bias=False, activation="relu", name="outlier")
    restore = keras.layers.Conv2D(16, 1, use_bias=False, name="restore")
    outputs = dense2(dense1(flatten(pool(conv2(restore(outlier(conv1(inputs))))))))
    model = keras.Model(inputs, outputs)
    up = np.eye(16, dtype=np.float32)[None, None]
    down = up.copy()
    up[..., 0, 0], down[..., 0, 0] = 2000.0, 1 / 2000.0
    outlier.set_weights([up])
    restore.set_weights([down])
    return model


@pytest.mark.slow
@pytest.mark.parametrize("quantizer", ["converter", "litert"])
def test_tflite_debugger_finds_the_int8_sensitive_layer_and_float_restores_accuracy(
    data: dict[str, np.ndarray], digits_files: dict[str, Path], tmp_path: Path, quantizer: str
) -> None:
    from edgekit.convert import ConvertOptions, convert
    from edgekit.converters.base import ConversionSettings
    from edgekit.converters.source import load_source
    from edgekit.converters.tflite import TFLiteConverter
    from edgekit.core.profiles import load_profile
    from edgekit.core.samples import Samples
    from edgekit.runtime.backends import TFLiteBackend

    path = tmp_path / "sensitive.keras"
    calibration = np.load(digits_files["calibration"])["x"]
    _with_an_outlier_channel(data).save(path)
    settings = ConversionSettings(load_profile("raspberry-pi-5"), tflite_quantizer=quantizer)  # type: ignore[arg-type]
    with load_source(path, None) as source:
        converter = TFLiteConverter()
        samples = Samples.of(source.inputs[0].name, calibration)
        ranked = converter.rank_sensitive_nodes(source, None, samples, settings)  # type: ignore[arg-type]
        plain = converter.convert(source, "int8", samples, lambda n: None, settings)
    assert "outlier" in ranked[0][0] and "restore" in ranked[0][1]  # the debugger names them first
    outputs = run_one(TFLiteBackend(plain.content), data["x_eval"])
    assert (outputs.argmax(axis=1) == data["y_eval"]).mean() < 0.8  # int8 everywhere breaks it

    def run(**options: Any) -> Any:
        return convert(ConvertOptions(
            model=path, profile=load_profile("raspberry-pi-5"), format="tflite", precision="int8",
            calibration=digits_files["calibration"], evaluation=digits_files["evaluation"],
            output=tmp_path / "out.ekb", tflite_quantizer=quantizer, **options,
        ))

    mixed = run().manifest.artifacts[0]  # the accuracy fallback keeps the first group in float
    assert mixed.metrics.accuracy is not None and mixed.metrics.accuracy.drop <= 1.0
    assert mixed.quantization is not None and len(mixed.quantization.float_nodes) == 2
    assert all(
        any(name in node for node in mixed.quantization.float_nodes) for name in ("outlier", "restore")
    )
    assert mixed.quantization.scheme == ("litert-static" if quantizer == "litert" else "tflite-full-integer")
    if quantizer == "converter":  # the debugger's selective model has float input and output
        assert mixed.quantization.io == "float32"
    by_hand = run(keep_float=("*outlier*", "*restore*")).manifest.artifacts[0]
    assert by_hand.quantization is not None and len(by_hand.quantization.float_nodes) == 2


@pytest.mark.slow
def test_convert_prune_makes_a_smaller_bundle_and_records_it(
    digits_files: dict[str, Path], data: dict[str, np.ndarray], converted: Any, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main
    from edgekit.core.bundle import read_manifest

    np.savez(tmp_path / "train.npz", x=data["x_train"], y=data["y_train"])
    out = tmp_path / "small.ekb"
    args = [
        "convert", str(digits_files["model"]), "--target", "raspberry-pi-5", "--format", "tflite",
        "--precision", "int8", "--prune", "0.5", "--train-data", str(tmp_path / "train.npz"),
        "--calibration", str(digits_files["calibration"]), "--eval", str(digits_files["evaluation"]),
        "-o", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(main, [*args[:-2], "--report", str(tmp_path / "convert.html"), *args[-2:]])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "convert.html").read_text()
    assert "Chosen: <b>tflite int8, pruned 0.5</b>" in page and page.count("<img") == 2
    manifest = read_manifest(out)
    record = manifest.compression
    assert record is not None and record.method == "structured" and record.fine_tune_epochs == 5
    assert record.parameters_after <= 0.6 * record.parameters_before
    assert record.top1_before is not None and record.top1_after is not None
    assert record.top1_after >= record.top1_before - 1.5
    unpruned = converted("int8").manifest.artifacts[0]
    assert manifest.artifacts[0].size <= 0.5 * unpruned.size
    refused = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "x.ekb"), "--prune-epochs", "0"])
    assert refused.exit_code == 1 and "pruning loses too much accuracy" in refused.stderr
    assert not (tmp_path / "x.ekb").exists()


@pytest.mark.slow
def test_fit_picks_what_fits_a_tight_profile_and_refuses_when_nothing_does(
    digits_files: dict[str, Path], data: dict[str, np.ndarray], write_profile: Any, tmp_path: Path
) -> None:
    import json

    from click.testing import CliRunner

    from edgekit.cli import main
    from edgekit.core.bundle import read_manifest

    np.savez(tmp_path / "train.npz", x=data["x_train"], y=data["y_train"])
    tight = write_profile(model_storage_mb=0.05)  # 51 KB: the unpruned int8 file is about 80 KB
    args = [
        "fit", str(digits_files["model"]), "--target", str(tight), "--eval", str(digits_files["evaluation"]),
        "--calibration", str(digits_files["calibration"]), "--train-data", str(tmp_path / "train.npz"),
        "--prune-ratios", "0,0.5", "--format", "tflite", "--precision", "int8", "--precision", "fp16",
    ]  # fmt: skip
    out, report = tmp_path / "best.ekb", tmp_path / "fit.html"
    result = CliRunner().invoke(main, [*args, "--report", str(report), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    chosen = summary["chosen"]
    assert (chosen["prune"], chosen["precision"]) == (0.5, "int8") and chosen[
        "size_bytes"
    ] <= 0.05 * 1024 * 1024
    unpruned = [c for c in summary["candidates"] if c["prune"] == 0]
    assert len(unpruned) == 2 and all("storage" in c["verdict"] and not c["fits"] for c in unpruned)
    assert any(c["pareto"] for c in summary["candidates"])
    manifest = read_manifest(out)
    assert manifest.compression is not None and len(manifest.fit or ()) == 4
    page = report.read_text()
    assert page.count("<img") == 3 and "Chosen: <b>tflite int8, pruned 0.5</b>" in page  # + per-layer SNR
    nothing = write_profile(model_storage_mb=0.01)
    refused = CliRunner().invoke(main, [*args[:3], str(nothing), *args[4:], "-o", str(tmp_path / "none.ekb")])
    assert refused.exit_code == 1 and "no candidate of 4 fits custom" in refused.stderr
    assert not (tmp_path / "none.ekb").exists()
