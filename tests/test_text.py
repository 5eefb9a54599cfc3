"""Text models: the tokenizer travels in the bundle, .jsonl data is tokenized by it, and the
device runs from text with neither TensorFlow nor transformers imported."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from text_models import INTENTS, encode, write_jsonl

from edgekit.cli import main
from edgekit.convert import ConvertOptions, convert
from edgekit.core.errors import DataError, InputError
from edgekit.core.profiles import load_profile
from edgekit.core.text import TextInputs
from edgekit.runtime import Model
from edgekit.runtime.store import Store

TEXTS = ["turn on the kitchen lights", "set the garage to 21 degrees", "start the office fan"]


@pytest.fixture(scope="module")
def files(intent_files: dict[str, Path]) -> dict[str, Path]:
    return intent_files


@pytest.fixture(scope="module")
def bundles(
    files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, publisher: Path
) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("text-bundles")
    made = {}
    for fmt, precision in (("tflite", "dynamic"), ("onnx", "fp32")):
        made[fmt] = convert(ConvertOptions(
            model=files["model"], profile=load_profile("raspberry-pi-5"), output=folder / f"intent-{fmt}.ekb",
            format=fmt, precision=precision, calibration=files["calibration"], evaluation=files["evaluation"],
            labels=files["labels"], tokenizer=files["tokenizer"], name="intent", sign_key=publisher,
        ))
    return made


def test_the_tokenizer_travels_in_the_bundle_and_the_device_runs_from_text(
    files: dict[str, Path], bundles: dict[str, Any]
) -> None:
    import keras

    keras_model = keras.saving.load_model(files["model"])
    ids, mask = encode(files["tokenizer"], TEXTS)
    expected = np.asarray(keras_model([ids, mask]))
    for fmt, result in bundles.items():
        text = result.manifest.text
        assert text is not None and (text.ids, text.mask, text.type_ids, text.max_length) == (
            "input_ids", "attention_mask", None, 16)
        assert result.manifest.artifacts[0].metrics.accuracy.artifact >= 95.0
        with zipfile.ZipFile(result.output) as archive:
            assert archive.read("tokenizer.json") == files["tokenizer"].read_bytes()
        model = Model.load(result.output)
        scores = model.predict_text(TEXTS)
        np.testing.assert_array_equal(scores.argmax(-1), expected.argmax(-1))  # type: ignore[union-attr]
        if fmt == "onnx":
            np.testing.assert_allclose(scores, expected, atol=1e-4)
        assert [INTENTS[i] for i in scores.argmax(-1)] == ["lights_on", "set_temperature", "fan_on"]  # type: ignore[union-attr]
        assert model.text_truncated == 0
        model.predict_text(
            ["turn on the lights in the kitchen and the bedroom and the garage and the office now"]
        )
        assert model.text_truncated == 1  # cut to 16 tokens, and counted


_DEVICE = """
import sys
from edgekit.runtime import Model
model = Model.load(sys.argv[1])
print(model.predict_text(["turn off the bedroom lights"]).argmax(-1)[0])
print(sorted(m for m in ("tensorflow", "transformers", "torch", "keras") if m in sys.modules))
"""


def test_the_device_side_imports_neither_tensorflow_nor_transformers(bundles: dict[str, Any]) -> None:
    for result in bundles.values():
        done = subprocess.run([sys.executable, "-c", _DEVICE, str(result.output)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == [str(INTENTS.index("lights_off")), "[]"]


def test_run_text_from_the_command_line_and_from_the_store(bundles: dict[str, Any], home: Path) -> None:
    bundle = bundles["tflite"].output
    result = CliRunner().invoke(
        main, ["run", str(bundle), "--text", TEXTS[0], "--text", TEXTS[2], "--top-k", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "lights_on" in result.output and "fan_on" in result.output
    Store().install(bundle)
    stored = home / "models" / "intent" / "1"
    assert (stored / "tokenizer.json.enc").exists() and not (stored / "tokenizer.json").exists()
    assert b"kitchen" not in (stored / "tokenizer.json.enc").read_bytes()  # the vocabulary, encrypted
    assert Model.load("intent").predict_text(TEXTS[:1]).argmax() == 0  # type: ignore[union-attr]
    both = CliRunner().invoke(main, ["run", str(bundle), "--text", "x", "--input", "x.npy"])
    assert both.exit_code == 2 and "--input FILE, or a text model's texts with --text" in both.stderr


def test_text_errors_are_one_line(files: dict[str, Path], bundles: dict[str, Any], tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    def attempt(**fields: Any) -> None:
        options = {"model": files["model"], "profile": load_profile("raspberry-pi-5"), "output": tmp_path / "x.ekb",
                   "format": "tflite", "precision": "fp32", "tokenizer": files["tokenizer"],
                   "evaluation": files["evaluation"], "labels": files["labels"], **fields}  # fmt: skip
        convert(ConvertOptions(**options))

    bigger = Tokenizer.from_file(str(files["tokenizer"]))
    bigger.add_tokens([f"extra{i}" for i in range(400)])
    bigger.save(str(tmp_path / "bigger.json"))
    no_text = write_jsonl(tmp_path / "bad.jsonl", [{"text": "turn on"}, {"words": "oops"}])
    cases = [
        ({"tokenizer": tmp_path / "bigger.json"}, InputError, "more than the model's embedding takes"),
        ({"evaluation": no_text}, DataError, 'line 2: no "text" string'),
        ({"tokenizer": None}, DataError, "pass the model's --tokenizer tokenizer.json"),
        ({"labels": None}, DataError, "labels are names; give --labels FILE"),
        ({"max_sequence_length": 32}, InputError, "the model's 'input_ids' takes 16 tokens"),
    ]
    for fields, error, message in cases:
        with pytest.raises(error, match=message):
            attempt(**fields)
    with pytest.raises(InputError, match="a tokenizer cannot fill image"):
        TextInputs.find(["input_ids", "attention_mask", "image"])
    assert TextInputs.find(["input_ids", "token_type_ids", "attention_mask"]) == TextInputs(
        "input_ids", "attention_mask", "token_type_ids")
    with pytest.raises(InputError, match="takes a list of strings"):
        Model.load(bundles["onnx"].output).predict_text("one string")  # type: ignore[arg-type]


def test_a_model_without_a_tokenizer_says_so(converted: Any) -> None:
    with pytest.raises(InputError, match="not a text model .* convert it with --tokenizer"):
        Model.load(converted("int8").output).predict_text(["hello"])
    result = CliRunner().invoke(main, ["run", str(converted("int8").output), "--text", "hello"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


def test_jsonl_labels_may_be_class_indices(files: dict[str, Path], tmp_path: Path) -> None:
    records = [json.loads(line) for line in files["evaluation"].read_text().splitlines()]
    indexed = write_jsonl(
        tmp_path / "indexed.jsonl", [{**r, "label": INTENTS.index(r["label"])} for r in records]
    )
    result = convert(ConvertOptions(
        model=files["model"], profile=load_profile("raspberry-pi-5"), output=tmp_path / "i.ekb", format="tflite",
        precision="fp32", tokenizer=files["tokenizer"], evaluation=indexed,
    ))
    assert result.manifest.artifacts[0].metrics.accuracy.metric == "top1"  # type: ignore[union-attr]


def test_an_onnx_text_model_as_optimum_exports_it(
    files: dict[str, Path], tmp_path: Path, publisher: Path
) -> None:
    """input_ids, attention_mask and token_type_ids, batch and sequence dynamic: on a CPU the
    sequence stays dynamic (each call padded to its longest text, at most
    --max-sequence-length); on a TensorRT profile it is fixed. All three inputs are filled."""
    from onnx_graphs import bag_of_embeddings, save
    from tokenizers import Tokenizer

    from edgekit.core.text import TextEncoder

    model = save(bag_of_embeddings(300), tmp_path / "text.onnx")
    longest = max(len(e.ids) for e in Tokenizer.from_file(str(files["tokenizer"])).encode_batch(TEXTS))
    assert longest < 24
    for profile, precision, dynamic in (("x86-gateway", "fp32", True), ("x86-gateway", "dynamic", True),
                                        ("jetson-orin-nano", "fp16", False)):
        result = convert(ConvertOptions(
            model=model, profile=load_profile(profile), output=tmp_path / f"{precision}.ekb", format="onnx",
            precision=precision, tokenizer=files["tokenizer"], calibration=files["calibration"],
            evaluation=files["evaluation"], labels=files["labels"], max_sequence_length=24, sign_key=publisher,
            max_accuracy_drop=100.0,
        ))
        text = result.manifest.text
        assert text is not None and (text.mask, text.type_ids, text.max_length, text.dynamic_length) == (
            "attention_mask", "token_type_ids", 24, dynamic)
        device = Model.load(result.output)
        feed = device.text_encoder.encode(TEXTS)
        assert set(feed) == {"input_ids", "attention_mask", "token_type_ids"}
        width = longest if dynamic else 24
        assert all(array.shape == (3, width) and array.dtype == np.int64 for array in feed.values())
        scores = device.predict_text(TEXTS)
        np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-3)  # type: ignore[union-attr]
        roles = TextInputs("input_ids", "attention_mask", "token_type_ids")
        padded = TextEncoder(device.tokenizer_bytes or b"", 24, roles, {n: "int64" for n in feed}).encode(
            TEXTS
        )
        np.testing.assert_allclose(scores, device.predict(padded), atol=1e-3)  # padding changes nothing


def test_the_sequence_length_comes_from_the_option_else_the_profile(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """A model with a dynamic sequence: --max-sequence-length wins, else the profile's
    max_sequence_length (64 on a Raspberry Pi 4, 128 on a Pi 5)."""
    from onnx_graphs import bag_of_embeddings, save

    model = save(bag_of_embeddings(300), tmp_path / "text.onnx")
    for profile, option, length in (("raspberry-pi-4", None, 64), ("raspberry-pi-5", None, 128),
                                    ("raspberry-pi-4", 40, 40)):
        assert load_profile(profile).budget.max_sequence_length in (64, 128)
        result = convert(ConvertOptions(
            model=model, profile=load_profile(profile), output=tmp_path / f"{profile}.ekb", format="onnx",
            precision="fp32", tokenizer=files["tokenizer"], max_sequence_length=option,
        ))
        assert result.manifest.text is not None and result.manifest.text.max_length == length


def test_the_per_class_report_matches_scikit_learn_and_can_gate_on_macro_f1(
    files: dict[str, Path], tmp_path: Path
) -> None:
    from sklearn.metrics import classification_report

    from edgekit.core.classes import class_report

    rng = np.random.default_rng(3)
    labels, predicted = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    predicted[labels == 4] = 4  # a perfect class
    labels[labels == 3] = 0  # a class never labelled, but predicted
    ours = class_report(labels, predicted, 6)  # and class 5: neither
    theirs = classification_report(labels, predicted, labels=range(6), output_dict=True, zero_division=0)
    for index, row in enumerate(ours.classes):
        expected = theirs[str(index)]
        assert (row.precision, row.recall, row.f1, row.support) == pytest.approx(
            (expected["precision"], expected["recall"], expected["f1-score"], expected["support"]))
    for ours_avg, key in ((ours.macro, "macro avg"), (ours.weighted, "weighted avg")):
        assert (ours_avg.precision, ours_avg.recall, ours_avg.f1) == pytest.approx(
            (theirs[key]["precision"], theirs[key]["recall"], theirs[key]["f1-score"]))
    assert ours.accuracy == pytest.approx(np.mean(labels == predicted))
    result = convert(ConvertOptions(
        model=files["model"], profile=load_profile("raspberry-pi-5"), output=tmp_path / "f1.ekb", format="tflite",
        precision="dynamic", tokenizer=files["tokenizer"], evaluation=files["evaluation"], labels=files["labels"],
        gate_metric="macro-f1",
    ))
    accuracy = result.manifest.artifacts[0].metrics.accuracy
    assert accuracy is not None and accuracy.metric == "macro-f1" and accuracy.classes is not None
    assert accuracy.artifact == pytest.approx(100 * accuracy.classes.artifact.macro.f1)
    assert len(accuracy.classes.float_model.classes) == len(INTENTS)
    shown = CliRunner().invoke(main, ["inspect", str(result.output)])
    assert shown.exit_code == 0 and "per class: float → dynamic" in shown.output, shown.output
    assert "macro-F1" in shown.output and "set_temperature" in shown.output and "macro avg" in shown.output


def test_tensorrt_profiles_refuse_dynamic_int8(files: dict[str, Path], tmp_path: Path) -> None:
    """TensorRT cannot run DynamicQuantizeLinear: on a Jetson, text models go QDQ int8 or fp16."""
    with pytest.raises(InputError, match="TensorRT cannot run DynamicQuantizeLinear"):
        convert(ConvertOptions(
            model=files["model"], profile=load_profile("jetson-orin-nano"), output=tmp_path / "j.ekb",
            format="onnx", precision="dynamic", tokenizer=files["tokenizer"],
        ))


@pytest.mark.slow
def test_fit_searches_head_pruning_for_a_text_model(files: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "fit", str(files["model"]), "-t", "raspberry-pi-5", "--tokenizer", str(files["tokenizer"]),
        "--labels", str(files["labels"]), "--eval", str(files["evaluation"]), "--train-data", str(files["train"]),
        "--prune-ratios", "0,0.5", "--format", "onnx", "--precision", "dynamic", "-o", str(tmp_path / "fit.ekb"),
        "--json",
    ])
    assert result.exit_code == 0, result.output
    candidates = json.loads(result.stdout)["candidates"]
    assert [c["prune"] for c in candidates] == [0.0, 0.5]
    assert all(c["top1"] is not None and c["top1"] >= 90 for c in candidates)
    assert (
        candidates[0]["parameters"] is None and 0 < candidates[1]["parameters"] < 18_276
    )  # the unpruned: 18,276
    assert candidates[1]["size_bytes"] < candidates[0]["size_bytes"]


def test_keras_gelu_converts_to_onnx_without_a_false_error_line(
    files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """tf2onnx calls Keras' exact GELU (Erfc) unsupported, and edgekit rewrites it: no ERROR."""
    convert(ConvertOptions(
        model=files["model"], profile=load_profile("x86-gateway"), output=tmp_path / "g.ekb", format="onnx",
        precision="fp32", tokenizer=files["tokenizer"],
    ))
    assert not [r for r in caplog.records if r.levelname == "ERROR" and "Erfc" in r.getMessage()]
