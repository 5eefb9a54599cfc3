"""Several inputs and outputs, integer inputs and streaming state: convert, gate, run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx_graphs
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.convert import ConvertOptions, convert
from edgekit.core.errors import InputError, ShapeError
from edgekit.core.profiles import load_profile
from edgekit.runtime import Model


def _save(tmp_path: Path, name: str, **arrays: np.ndarray) -> Path:
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def fusion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fusion")
    return onnx_graphs.save(onnx_graphs.image_and_ids(), folder / "fusion.onnx")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_two_inputs_two_outputs_convert_gate_and_run(fusion: Path, tmp_path: Path, precision: str) -> None:
    calibration = _save(tmp_path, "calib", **onnx_graphs.image_and_ids_data(64, seed=1))
    evaluation = onnx_graphs.image_and_ids_data(100, seed=2)
    result = convert(ConvertOptions(
        model=fusion, profile=load_profile("x86-gateway"), output=tmp_path / "fusion.ekb", precision=precision,
        calibration=calibration, evaluation=_save(tmp_path, "eval", **evaluation), max_accuracy_drop=5.0,
    ))
    entry = result.manifest.artifacts[0]
    assert [(t.name, t.dtype) for t in entry.inputs] == [
        ("image", "float32"),
        ("ids", "int64"),
    ]  # ids stay ints
    accuracy = entry.metrics.accuracy
    assert (
        accuracy is not None and accuracy.output == "scores"
    )  # the only (batch, classes) softmax-like output
    assert accuracy.outputs is not None and set(accuracy.outputs) == {"boxes", "scores"}
    floor = 0.999 if precision == "fp32" else 0.9
    assert all(each.cosine >= floor for each in accuracy.outputs.values()), accuracy.outputs
    assert result.manifest.primary_output == "scores"
    model = Model.load(result.output, allow_unsigned=True)
    outputs = model.predict({"image": evaluation["image"][:7], "ids": evaluation["ids"][:7]})
    assert (
        isinstance(outputs, dict) and outputs["boxes"].shape == (7, 4) and outputs["scores"].shape == (7, 3)
    )


def test_bad_multi_input_calls_name_the_input_and_leave_the_model_usable(
    fusion: Path, tmp_path: Path
) -> None:
    result = convert(ConvertOptions(model=fusion, profile=load_profile("x86-gateway"), output=tmp_path / "f.ekb",
                                    precision="fp32"))
    model = Model.load(result.output, allow_unsigned=True)
    data = onnx_graphs.image_and_ids_data(3)
    cases = [
        (data["image"], "the model takes 2 inputs (image, ids); pass a dict by input name"),
        ({"image": data["image"]}, "input 'ids' is missing; the model takes image, ids"),
        ({**data, "mask": data["ids"]}, "'mask' is not an input of this model; it takes image, ids"),
        ({**data, "ids": data["ids"].astype(np.float32)}, "input 'ids' takes int64 values (batch, 5), got dtype float32"),
        ({**data, "ids": data["ids"][0]}, "input 'ids' takes rank 2 (batch, 5), got shape (5,); add the batch axis with x[None]"),
    ]  # fmt: skip
    for bad, message in cases:
        with pytest.raises(ShapeError) as err:
            model.predict(bad)
        assert str(err.value) == message
    assert model.predict(data)["scores"].shape == (3, 3)  # type: ignore[index]


def test_multi_output_eval_asks_which_output_unless_one_stands_out(tmp_path: Path) -> None:
    graph = onnx_graphs.image_and_ids()
    graph.graph.output[1].name = graph.graph.node[-1].output[0] = "head2"  # no longer named like scores
    model = onnx_graphs.save(graph, tmp_path / "heads.onnx")
    options = ConvertOptions(model=model, profile=load_profile("x86-gateway"), output=tmp_path / "h.ekb",
                             precision="fp32", evaluation=_save(tmp_path, "eval", **onnx_graphs.image_and_ids_data(20)))
    with pytest.raises(
        InputError, match="the model has 2 outputs \\(boxes, head2\\); name the one --eval checks"
    ):
        convert(options)
    with pytest.raises(
        InputError, match="--eval-output z: the model has no such output \\(outputs: boxes, head2\\)"
    ):
        convert(replace(options, eval_output="z"))
    accuracy = convert(replace(options, eval_output="head2")).manifest.artifacts[0].metrics.accuracy
    assert accuracy is not None and accuracy.output == "head2" and accuracy.drop == 0


def _stream_data(count: int) -> dict[str, np.ndarray]:
    """One call per entry: x batched as (count, 1, 4) would be ambiguous, so every input has
    rank + 1 (arr[i] is exactly one call's value)."""
    rng = np.random.default_rng(3)
    return {
        "x": rng.normal(0, 1, (count, 1, 4)).astype(np.float32),
        "state": rng.normal(0, 1, (count, 2, 1, 4)).astype(np.float32),
        "sr": np.full(count, 16000, np.int64),
    }


@pytest.fixture(scope="module")
def vad(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("vad")
    graph = onnx_graphs.leaky_integrator()
    path = onnx_graphs.save(graph, folder / "vad.onnx")
    data = _stream_data(40)
    np.savez(folder / "eval.npz", **data)
    result = convert(ConvertOptions(model=path, profile=load_profile("x86-gateway"), output=folder / "vad.ekb",
                                    precision="fp32", evaluation=folder / "eval.npz", eval_output="y"))
    return result.output, graph


def test_a_streaming_model_carries_its_state_and_streams_never_mix(vad: tuple[Path, object]) -> None:
    bundle, graph = vad
    model = Model.load(bundle, allow_unsigned=True)
    assert [(p.output, p.input) for p in model.manifest.state] == [("stateN", "state")]  # found from names
    rng = np.random.default_rng(4)
    chunks = rng.normal(0, 1, (2, 200, 1, 4)).astype(np.float32)
    streams = [model.stream(), model.stream()]
    states = [np.zeros((2, 1, 4)), np.zeros((2, 1, 4))]
    for step in range(200):
        for index in (0, 1):  # interleaved: each stream must see only its own past
            got = streams[index].step({"x": chunks[index, step], "sr": np.array(16000)})
            want, states[index] = onnx_graphs.integrate(graph, chunks[index, step], states[index], 16000)  # type: ignore[arg-type]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(states[0], states[1])
    streams[0].reset()
    first, _ = onnx_graphs.integrate(graph, chunks[0, 0], np.zeros((2, 1, 4)), 16000)  # type: ignore[arg-type]
    np.testing.assert_allclose(
        streams[0].step({"x": chunks[0, 0], "sr": np.array(16000)}), first, rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ShapeError, match="input 'state' is the stream's state: step\\(\\) feeds it back"):
        streams[1].step({"x": chunks[0, 0], "sr": np.array(16000), "state": np.zeros((2, 1, 4), np.float32)})


def test_a_state_pair_that_does_not_match_is_refused_in_one_line(tmp_path: Path) -> None:
    model = onnx_graphs.save(onnx_graphs.leaky_integrator(), tmp_path / "vad.onnx")
    base = {
        "model": model,
        "profile": load_profile("x86-gateway"),
        "output": tmp_path / "v.ekb",
        "precision": "fp32",
    }
    with pytest.raises(
        InputError, match="--state y:state: the output is \\(batch, 3\\) float32 and the input"
    ):
        convert(ConvertOptions(**base, state=(("y", "state"),)))
    with pytest.raises(
        InputError, match="--state h:state: the model has no output 'h' \\(outputs: y, stateN\\)"
    ):
        convert(ConvertOptions(**base, state=(("h", "state"),)))


def test_cli_runs_inspects_and_benches_a_multi_input_bundle(fusion: Path, tmp_path: Path) -> None:
    data = onnx_graphs.image_and_ids_data(64, seed=5)
    runner = CliRunner()
    bundle = tmp_path / "fusion.ekb"
    convert_args = ["convert", str(fusion), "--target", "x86-gateway", "--precision", "fp32", "-o", str(bundle),
                    "--eval", str(_save(tmp_path, "eval", **data))]  # fmt: skip
    assert runner.invoke(main, convert_args).exit_code == 0
    np.save(tmp_path / "image.npy", data["image"][:2])
    np.save(tmp_path / "ids.npy", data["ids"][:2])
    args = ["run", str(bundle), "--allow-unsigned", "--input", f"image={tmp_path / 'image.npy'}",
            "--input", f"ids={tmp_path / 'ids.npy'}", "--json"]  # fmt: skip
    done = runner.invoke(main, args)
    assert done.exit_code == 0, done.output
    outputs = json.loads(done.stdout)["outputs"]
    assert np.asarray(outputs["boxes"]).shape == (2, 4) and np.asarray(outputs["scores"]).shape == (2, 3)
    bad = runner.invoke(
        main, ["run", str(bundle), "--allow-unsigned", "--input", str(tmp_path / "image.npy")]
    )
    assert (
        bad.exit_code == 2  # a user error
        and "the model takes 2 inputs (image, ids); pass --input NAME=FILE.npy" in bad.output
    )
    shown = runner.invoke(main, ["inspect", str(bundle)])
    assert (
        shown.exit_code == 0
        and "ids" in shown.output
        and "boxes" in shown.output
        and "scores" in shown.output
    )
    bench = runner.invoke(main, ["bench", str(bundle), "--allow-unsigned", "--runs", "10", "--json"])
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.stdout)["edgekit"]["p50_ms"] > 0


@pytest.fixture(scope="module")
def keras_fusion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A functional Keras model: float features and int32 token ids in, class scores and a
    box out, named by their layers."""
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input((8,), name="features")
    ids = keras.Input((5,), dtype="int32", name="ids")
    text = keras.layers.Flatten()(keras.layers.Embedding(20, 3)(ids))
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([features, text]))
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(hidden)
    box = keras.layers.Dense(2, name="box")(hidden)
    model = keras.Model([features, ids], [cls, box])
    rng = np.random.default_rng(6)
    data = {"features": rng.normal(0, 1, (120, 8)).astype(np.float32),
            "ids": rng.integers(0, 20, (120, 5)).astype(np.int32)}  # fmt: skip
    path = tmp_path_factory.mktemp("keras-fusion") / "fusion.keras"
    model.save(path)
    return path, data


@pytest.mark.parametrize(("fmt", "precision"), [("tflite", "fp32"), ("tflite", "int8"), ("onnx", "int8")])
def test_keras_two_input_model_converts_with_named_outputs(
    keras_fusion: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, fmt: str, precision: str
) -> None:
    import keras

    path, data = keras_fusion
    result = convert(ConvertOptions(
        model=path, profile=load_profile("x86-gateway"), output=tmp_path / "k.ekb", format=fmt,
        precision=precision, calibration=_save(tmp_path, "calib", **data),
        evaluation=_save(tmp_path, "eval", **data), max_accuracy_drop=5.0,
    ))
    entry = result.manifest.artifacts[0]
    assert {t.name for t in entry.inputs} == {"features", "ids"} and {t.name for t in entry.outputs} == {
        "cls",
        "box",
    }
    ids = next(t for t in entry.inputs if t.name == "ids")
    assert ids.dtype == "int32" and ids.quantization is None  # token ids pass through, never quantized
    assert result.manifest.primary_output == "cls"
    outputs = Model.load(result.output, allow_unsigned=True).predict(
        {name: a[:10] for name, a in data.items()}
    )
    want_cls, want_box = keras.models.load_model(path).predict(
        [data["features"][:10], data["ids"][:10]], verbose=0
    )
    assert isinstance(outputs, dict)
    tolerance = 1e-4 if precision == "fp32" else 0.15
    np.testing.assert_allclose(outputs["cls"], want_cls, atol=tolerance)
    np.testing.assert_allclose(outputs["box"], want_box, atol=tolerance * 5)


def test_pruning_a_two_input_keras_model(tmp_path: Path) -> None:
    """Magnitude pruning fine-tunes on named inputs; structured pruning refuses the join."""
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input((8,), name="features")
    ids = keras.Input((5,), dtype="int32", name="ids")
    text = keras.layers.Flatten()(keras.layers.Embedding(20, 3)(ids))
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([features, text]))
    keras.Model([features, ids], keras.layers.Dense(3, activation="softmax", name="cls")(hidden)).save(
        tmp_path / "m.keras"
    )
    rng = np.random.default_rng(0)
    train = _save(tmp_path, "train", features=rng.normal(size=(200, 8)).astype(np.float32),
                  ids=rng.integers(0, 20, (200, 5)).astype(np.int32), y=rng.integers(0, 3, 200))
    options = ConvertOptions(model=tmp_path / "m.keras", profile=load_profile("x86-gateway"), output=tmp_path / "p.ekb",
                             precision="fp32", prune=0.5, train_data=train, prune_epochs=1)
    with pytest.raises(
        InputError, match="'concatenate\\w*' \\(Concatenate\\) joins 2 branches.*--prune-mode magnitude"
    ):
        convert(options)
    result = convert(replace(options, prune_mode="magnitude"))
    compression = result.manifest.compression
    assert compression is not None and compression.parameters_after < compression.parameters_before
