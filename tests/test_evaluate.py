"""``edgekit evaluate``: float and each artifact side by side on the digits CNN (TFLite int8,
ONNX fp16), a tabular model and an ONNX-only source; the per-class report equals
scikit-learn's; the report renders in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphs
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.convert import ConvertOptions, convert
from edgekit.core.errors import DataError
from edgekit.core.profiles import load_profile
from edgekit.evaluate import EvaluateOptions, evaluate
from edgekit.evaluate.scores import calibration, probabilities
from edgekit.runtime import Model


def test_calibration_error_on_known_cases() -> None:
    labels = np.array([0, 1, 0, 1])
    confident_and_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert calibration(confident_and_right, labels)[0] == pytest.approx(0.0)
    confident_and_half_wrong = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    error, bins = calibration(confident_and_half_wrong, labels)
    assert error == pytest.approx(40.0)  # confidence 0.9, accuracy 0.5
    assert sum(b.count for b in bins) == 4 and len(bins) == 15
    logits = np.log(confident_and_half_wrong)
    np.testing.assert_allclose(probabilities(logits), confident_and_half_wrong)


def test_rank_correlation_is_spearmans_with_ties() -> None:
    from scipy.stats import spearmanr

    from edgekit.evaluate.explain import rank_correlation, top_overlap

    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 4, 64).astype(float)
        b = a + rng.normal(0, 1, 64)
        assert rank_correlation(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert rank_correlation(np.zeros(9), np.arange(9.0)) == 0.0
    assert (
        top_overlap(np.arange(100.0), np.arange(100.0)) == 1.0
        and top_overlap(np.arange(100.0), -np.arange(100.0)) == 0.0
    )


def _sklearn_report(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import classification_report

    return classification_report(labels, predicted, output_dict=True, zero_division=0)


def test_digits_int8_tflite_and_fp16_onnx(
    converted: Any, onnx_converted: Any, digits_files: dict[str, Path], digits_eval: Any, tmp_path: Path
) -> None:
    x, y = digits_eval
    for bundle, name in (
        (converted("int8").output, "tflite int8"),
        (onnx_converted("fp16").output, "onnx fp16"),
    ):
        result = evaluate(
            EvaluateOptions(bundle, digits_files["model"], digits_files["evaluation"], quick=True)
        )
        assert result.kind == "image" and result.samples == 200 and result.severities == [1, 3, 5]
        assert [a.evaluation.name for a in result.artifacts] == [name]
        artifact = result.artifacts[0]
        with Model.load(bundle) as model:
            predicted = np.asarray(model.predict(x[:200])).argmax(axis=1)
        expected = _sklearn_report(y[:200], predicted)
        report = artifact.evaluation.report
        for index, row in enumerate(report.classes):
            got = {
                "precision": row.precision,
                "recall": row.recall,
                "f1-score": row.f1,
                "support": row.support,
            }
            assert got == pytest.approx(expected[str(index)])
        assert report.accuracy == pytest.approx(expected["accuracy"])
        assert report.macro.f1 == pytest.approx(expected["macro avg"]["f1-score"])
        assert report.weighted.f1 == pytest.approx(expected["weighted avg"]["f1-score"])
        assert np.asarray(artifact.evaluation.confusion).sum() == 200
        assert artifact.agreement > 97 and len(artifact.disagreements) == round(
            200 * (1 - artifact.agreement / 100)
        )
        for model in (result.float_model, artifact.evaluation):
            noise = model.robustness.corruptions["gaussian noise"]
            assert noise[0] > noise[-1]  # severity 5 hurts more than severity 1
            attacked = model.robustness.adversarial
            assert attacked is not None and attacked["pgd"][0] < 100 * model.report.accuracy - 20
            assert attacked["pgd"][0] <= attacked["fgsm"][0] + 1  # PGD is at least as strong
        assert abs(artifact.robustness_drop) < 5 and 0.7 < artifact.mce_ratio < 1.4
        assert "Adversarial Robustness Toolbox" in result.attack


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory, publisher: Path) -> dict[str, Path]:
    """A Keras MLP on scikit-learn's wine data (13 features, 3 classes), standardized."""
    import keras
    from sklearn.datasets import load_wine

    folder = tmp_path_factory.mktemp("wine")
    data = load_wine()
    x = ((data.data - data.data.mean(0)) / data.data.std(0)).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((13,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:120], y[:120], epochs=60, verbose=0)
    model.save(folder / "wine.keras")
    np.savez(folder / "calib.npz", x=x[:120])
    np.savez(folder / "eval.npz", x=x[120:], y=y[120:])
    bundle = convert(ConvertOptions(
        model=folder / "wine.keras", profile=load_profile("raspberry-pi-5"), output=folder / "wine.ekb",
        format="tflite", precision="int8", calibration=folder / "calib.npz", evaluation=folder / "eval.npz",
        sign_key=publisher, force=True,
    )).output
    return {"model": folder / "wine.keras", "bundle": bundle, "eval": folder / "eval.npz"}


def test_a_tabular_model_gets_feature_corruptions(tabular: dict[str, Path]) -> None:
    result = evaluate(EvaluateOptions(tabular["bundle"], tabular["model"], tabular["eval"]))
    assert result.kind == "tabular" and result.samples == 58 and result.severities == [1, 2, 3, 4, 5]
    corruptions = result.float_model.robustness.corruptions
    assert set(corruptions) == {"feature noise", "dropout", "drift"}
    assert all(len(values) == 5 for values in corruptions.values())
    assert result.float_model.report.accuracy > 0.8 and result.artifacts[0].agreement > 90
    attribution = result.artifacts[0].attribution
    assert (
        attribution is not None
        and attribution.method == "SHAP permutation"
        and attribution.top_overlap is None
    )
    assert len(attribution.moved) == 5 and set(attribution.per_class) == {"0", "1", "2"}
    assert attribution.rank_correlation > 0.5  # int8 keeps the float model's feature ranking mostly


def test_a_sensor_window_gets_attributions_over_time_and_channels(tmp_path: Path, publisher: Path) -> None:
    """A 1-D convolution on (64, 3) accelerometer windows: evaluate ended in a reshape error,
    since attributions picked samples only for image, tabular and text inputs."""
    import keras

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 160)
    t = np.arange(64)[None, :, None]
    x = (np.sin(2 * np.pi * (1 + y)[:, None, None] * t / 64 + rng.uniform(0, 6, (160, 1, 3)))
         + rng.normal(0, 0.1, (160, 64, 3))).astype(np.float32)  # fmt: skip
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64, 3)), keras.layers.Conv1D(8, 5, activation="relu"),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3, activation="softmax")])  # fmt: skip
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:120], y[:120], epochs=30, verbose=0)
    model.save(tmp_path / "activity.keras")
    np.savez(tmp_path / "eval.npz", x=x[120:], y=y[120:])
    bundle = convert(ConvertOptions(
        model=tmp_path / "activity.keras", profile=load_profile("raspberry-pi-5"), output=tmp_path / "a.ekb",
        format="tflite", precision="fp16", evaluation=tmp_path / "eval.npz", sign_key=publisher, force=True,
    )).output  # fmt: skip
    result = evaluate(EvaluateOptions(bundle, tmp_path / "activity.keras", tmp_path / "eval.npz",
                                      report=tmp_path / "report.html", quick=True))  # fmt: skip
    assert result.kind == "sequence" and len(result.explained) > 0
    attribution = result.artifacts[0].attribution
    assert attribution is not None and attribution.method == "time-window occlusion"
    assert attribution.rank_correlation > 0.9  # fp16 keeps float's order of what matters
    assert "attributions over time and channels" in (tmp_path / "report.html").read_text()


def test_an_onnx_only_source_is_stressed_model_agnostically(tmp_path: Path, publisher: Path) -> None:
    source = onnx_graphs.save(onnx_graphs.conv_classifier(), tmp_path / "conv.onnx")
    x = np.random.default_rng(3).uniform(0, 1, (96, 3, 8, 8)).astype(np.float32)
    with Model.load(convert(ConvertOptions(
        model=source, profile=load_profile("x86-gateway"), output=tmp_path / "float.ekb", format="onnx",
        precision="fp32", sign_key=publisher,
    )).output) as reference:
        y = np.asarray(reference.predict(x)).argmax(axis=1)  # labels: what the float model says
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    np.savez(tmp_path / "calib.npz", x=x[:64])
    bundle = convert(ConvertOptions(
        model=source, profile=load_profile("x86-gateway"), output=tmp_path / "int8.ekb", format="onnx",
        precision="int8", calibration=tmp_path / "calib.npz", sign_key=publisher, max_accuracy_drop=100.0,
    )).output
    result = evaluate(EvaluateOptions(bundle, source, tmp_path / "eval.npz", report=tmp_path / "r.html"))
    assert result.float_model.report.accuracy == 1.0 and result.float_model.robustness.adversarial is None
    assert result.attack.startswith("none: the source is not a Keras model") and result.epsilons == []
    assert result.explanation == "occlusion on every model (patches grayed to the image mean)"
    page = (tmp_path / "r.html").read_text()
    assert "the source is not a Keras model" in page and "occlusion on every model" in page
    attribution = result.artifacts[0].attribution
    assert attribution is not None and len(result.explained) == 12 and -1 <= attribution.rank_correlation <= 1
    same = evaluate(EvaluateOptions(tmp_path / "float.ekb", source, tmp_path / "eval.npz", quick=True))
    exact = same.artifacts[0].attribution  # the float model converted at fp32 explains as float does
    assert exact is not None and exact.rank_correlation > 0.99 and exact.top_overlap > 0.95


def test_the_cli_writes_json_and_a_report_that_renders_in_chromium(
    converted: Any, digits_files: dict[str, Path], tmp_path: Path
) -> None:
    report = tmp_path / "eval.html"
    run = CliRunner().invoke(main, [
        "evaluate", str(converted("int8").output), "--source", str(digits_files["model"]),
        "--eval", str(digits_files["evaluation"]), "--quick", "--report", str(report), "--json",
    ])
    assert run.exit_code == 0, run.output
    numbers = json.loads(run.stdout)
    assert numbers["samples"] == 200 and numbers["artifacts"][0]["evaluation"]["name"] == "tflite int8"
    # F1 bars, confusions, reliability, corruptions, attacks, saliency maps; and thumbnails where
    # the models disagree
    figures = 6 + bool(numbers["artifacts"][0]["disagreements"])
    assert report.read_text().count("<img") == figures
    rendered = _render(report, tmp_path / "eval.png")
    assert rendered["errors"] == [] and rendered["images"] == figures and rendered["broken"] == 0


def _render(page: Path, screenshot: Path) -> dict[str, Any]:
    """Open the page in headless Chromium (Debian's, driven by Playwright): console errors,
    images, and how many of them failed to decode."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page()
        errors: list[str] = []
        tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(page.as_uri())
        tab.wait_for_load_state("load")
        images = tab.eval_on_selector_all("img", "all => all.map(i => i.complete && i.naturalWidth > 0)")
        tab.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return {"errors": errors, "images": len(images), "broken": images.count(False)}


def test_evaluate_errors_are_one_line(converted: Any, digits_files: dict[str, Path], tmp_path: Path) -> None:
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((10, 8, 8, 1), np.float32))
    with pytest.raises(DataError, match="no labels; save them as y"):
        evaluate(EvaluateOptions(converted("int8").output, digits_files["model"], tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "badlabels.npz", x=np.zeros((10, 8, 8, 1), np.float32), y=np.full(10, 12))
    with pytest.raises(DataError, match="labels run from 12 to 12, and the model has 10 classes"):
        evaluate(EvaluateOptions(converted("int8").output, digits_files["model"], tmp_path / "badlabels.npz"))


def test_non_finite_inputs_are_refused_and_out_of_range_ones_clipped(
    converted: Any, onnx_converted: Any
) -> None:
    for bundle in (converted("int8").output, onnx_converted("fp32").output):
        with Model.load(bundle) as model:
            x = np.zeros((2, 8, 8, 1), np.float32)
            for bad, shown in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")):
                x[1, 3, 4, 0] = bad
                with pytest.raises(
                    DataError, match=rf"holds {shown} at \[1, 3, 4, 0\]: inputs must be finite"
                ):
                    model.predict(x)
            huge = np.full((1, 8, 8, 1), 1e30, np.float32)
            assert np.isfinite(np.asarray(model.predict(huge))).all()
            assert np.asarray(model.predict(np.zeros((1, 8, 8, 1), np.float32))).shape == (1, 10)


def test_the_robustness_gate_refuses_a_fragile_int8_model_and_passes_a_sound_one(
    digits_files: dict[str, Path], digits_eval: Any, tmp_path: Path
) -> None:
    """Calibrated on dimmed images (0.3× intensity), int8 clips every brighter activation:
    clean top-1 stays within 3 points, and under corruption it loses more than 3. Calibrated
    on the real distribution, the same gate passes, and the manifest records both means."""
    from edgekit.core.errors import AccuracyBudgetError

    with np.load(digits_files["calibration"]) as data:
        np.savez(tmp_path / "dim.npz", x=data["x"] * 0.3)
    common = ["--target", "raspberry-pi-5", "--format", "tflite", "--precision", "int8",
              "--eval", str(digits_files["evaluation"]), "--max-accuracy-drop", "3", "--max-robustness-drop", "3"]  # fmt: skip
    sound = CliRunner().invoke(main, ["convert", str(digits_files["model"]), *common, "--calibration",
                                      str(digits_files["calibration"]), "-o", str(tmp_path / "sound.ekb"), "--json"])
    assert sound.exit_code == 0, sound.output
    accuracy = json.loads(sound.stdout)["manifest"]["artifacts"][0]["metrics"]["accuracy"]
    robustness = accuracy["robustness"]
    assert accuracy["gate"] == "passed" and robustness["drop"] <= 3 and robustness["max_drop"] == 3
    assert robustness["corruptions"] == ["gaussian noise", "blur", "brightness", "contrast", "jpeg"]
    assert 50 < robustness["float_model"] < 100 and robustness["artifact"] > 50
    fragile = ConvertOptions(
        model=digits_files["model"], profile=load_profile("raspberry-pi-5"), output=tmp_path / "fragile.ekb",
        format="tflite", precision="int8", calibration=tmp_path / "dim.npz", evaluation=digits_files["evaluation"],
        max_accuracy_drop=3.0, max_robustness_drop=3.0,
    )
    with pytest.raises(
        AccuracyBudgetError, match=r"top-1 under common corruptions [\d.]+% vs float [\d.]+%: drop"
    ):
        convert(fragile)
    assert not (tmp_path / "fragile.ekb").exists()


def test_a_text_classifier_gets_text_corruptions_and_token_attributions(
    intent_files: dict[str, Path], tmp_path: Path, publisher: Path
) -> None:
    made = {}
    for fmt, precision in (("onnx", "fp32"), ("tflite", "dynamic")):
        made[fmt] = convert(ConvertOptions(
            model=intent_files["model"], profile=load_profile("raspberry-pi-5"), output=tmp_path / f"{fmt}.ekb",
            format=fmt, precision=precision, tokenizer=intent_files["tokenizer"], labels=intent_files["labels"],
            name="intent", sign_key=publisher,
        )).output
    for fmt, bundle in made.items():
        report = tmp_path / f"{fmt}.html"
        result = evaluate(EvaluateOptions(bundle, intent_files["model"], intent_files["evaluation"], quick=True,
                                          report=report))
        assert result.kind == "text" and result.attack.startswith("none: a text model takes token ids")
        assert set(result.float_model.robustness.corruptions) == {"typos", "dropped words", "swapped words"}
        assert result.labels is not None and set(result.float_model.report.classes[0].model_dump()) >= {"f1"}
        attribution = result.artifacts[0].attribution
        assert attribution is not None and attribution.method == "token occlusion"
        if fmt == "onnx":  # fp32: the float model's own attributions
            assert attribution.rank_correlation > 0.99
        page = report.read_text()
        assert "token occlusion on every model" in page and page.count("<span style=") > 20
