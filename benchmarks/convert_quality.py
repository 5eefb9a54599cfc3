"""What each TFLite precision buys and costs, measured side by side in one run.

    python benchmarks/convert_quality.py [--models digits,mobilenetv2] [--threads 2] [--runs 50]

For each model and precision it prints, against fp32 of the same model:
- size ratio of the .tflite file;
- accuracy (digits: top-1 on held-out labels) or agreement with the float model
  (MobileNetV2: random weights with BatchNorm statistics set from data, since nothing may
  be downloaded; agreement and cosine of its logits measure numeric fidelity only);
- latency ratio in the bare TFLite interpreter (ai_edge_litert, batch 1, same threads);
- edgekit's whole convert (load, checks, SavedModel export, conversion, evaluation of float
  and artifact, memory probe, latency, bundle) beside the bare ``tf.lite.TFLiteConverter``
  call with the same settings and the minimal hand-written Keras 3 path (``model.export()``
  then the converter; ``from_keras_model`` fails on Keras 3 models): time, and peak memory.
  Each runs in a fresh process of its own, TensorFlow imported before the clock starts, and
  reports its own peak resident memory;
- a second table: edgekit's time step by step (``ConvertResult.timings``, also in
  ``convert --json``), against export + bare converter + the gate's own inference (running
  the float model and the artifact on the evaluation data).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from edgekit.core.memory import peak_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "quickstart"))

PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int8-litert")
"""int8-litert: int8 by the LiteRT Quantizer on the float model (``--tflite-quantizer litert``)."""


def make_digits(folder: Path) -> dict[str, Path]:
    from digits import train_digits

    return train_digits(folder / "digits", epochs=20)


def make_mobilenetv2(folder: Path) -> dict[str, Path]:
    import keras

    keras.utils.set_random_seed(0)
    # Logits, not softmax: with random weights the softmax is near uniform and int8 rounds it
    # to zero, which would hide the numeric fidelity this column is meant to show.
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(224, 224, 3), classifier_activation=None
    )
    rng = np.random.default_rng(0)
    # Random weights make activations vanish (logits ~1e-11). Setting each BatchNorm's
    # statistics from one batch, as BN recalibration does, gives realistic activation ranges.
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(rng.uniform(-1, 1, (32, 224, 224, 3)).astype(np.float32), training=True)
    for layer in norms:
        layer.momentum = 0.99
    paths = {
        "model": folder / "mobilenetv2.keras",
        "calibration": folder / "mnv2_calib.npz",
        "evaluation": folder / "mnv2_eval.npz",
    }
    model.save(paths["model"])
    np.savez(paths["calibration"], x=rng.uniform(-1, 1, (100, 224, 224, 3)).astype(np.float32))
    np.savez(paths["evaluation"], x=rng.uniform(-1, 1, (100, 224, 224, 3)).astype(np.float32))
    return paths


def bare_convert(saved_model: Path, precision: str, calibration: np.ndarray) -> tuple[bytes, float]:
    """The plain TFLiteConverter call a user would write by hand, timed."""
    import tensorflow as tf

    if precision == "int8-litert":
        return bare_litert(saved_model, calibration)
    started = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if precision != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if precision == "int8":
        converter.representative_dataset = lambda: ([row[None]] for row in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    content = converter.convert()
    return content, time.perf_counter() - started


def bare_litert(saved_model: Path, calibration: np.ndarray) -> tuple[bytes, float]:
    """The float conversion, then the LiteRT Quantizer's static int8 recipe, timed together."""
    from ai_edge_litert.interpreter import Interpreter
    from litert_quantizer import quantizer, recipe

    started = time.perf_counter()
    float_model, _ = bare_convert(saved_model, "fp32", calibration)
    name = Interpreter(model_content=float_model).get_signature_list()["serving_default"]["inputs"][0]
    engine = quantizer.Quantizer(bytearray(float_model), recipe.static_wi8_ai8())
    ranges = engine.calibrate({"serving_default": [{name: row[None]} for row in calibration]})
    content = bytes(engine.quantize(ranges, enable_progress_report=False).quantized_model)
    return content, time.perf_counter() - started


def bare_latency_ms(content: bytes, threads: int, runs: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    sample = np.zeros(detail["shape"], dtype=detail["dtype"])
    for _ in range(5):
        interpreter.set_tensor(detail["index"], sample)
        interpreter.invoke()
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        interpreter.set_tensor(detail["index"], sample)
        interpreter.invoke()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def child_bare(paths: dict[str, Path], precision: str, out: Path) -> dict:
    """In a fresh process: ``model.export()`` and the bare converter, as a user writes them."""
    import keras
    import tensorflow as tf  # noqa: F401 (imported before the clock starts, as edgekit's is)

    calibration = np.load(paths["calibration"])["x"]
    started = time.perf_counter()
    keras.models.load_model(paths["model"]).export(str(out.with_suffix(".savedmodel")), verbose=False)
    export_s = time.perf_counter() - started
    content, bare_s = bare_convert(out.with_suffix(".savedmodel"), precision, calibration)
    out.write_bytes(content)
    return {"export_s": export_s, "bare_s": bare_s, "peak": peak_bytes()}


def child_edgekit(paths: dict[str, Path], precision: str, out: Path) -> dict:
    """In a fresh process: the whole ``convert()``, its steps timed."""
    import tensorflow as tf  # noqa: F401 (imported before the clock starts)

    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.profiles import load_profile

    options = ConvertOptions(
        model=paths["model"], profile=load_profile("x86-gateway"), format="tflite",
        precision="int8" if precision == "int8-litert" else precision,  # type: ignore[arg-type]
        tflite_quantizer="litert" if precision == "int8-litert" else "converter",
        output=out, calibration=paths["calibration"], evaluation=paths["evaluation"],
        allow_accuracy_drop=True, allow_over_budget=True,
    )
    started = time.perf_counter()
    result = convert(options)
    accuracy = result.manifest.artifacts[0].metrics.accuracy
    assert accuracy is not None
    return {"edgekit_s": time.perf_counter() - started, "steps": result.timings, "peak": peak_bytes(),
            "metric": accuracy.metric, "float": accuracy.float_model, "artifact": accuracy.artifact,
            "cosine": accuracy.cosine}  # fmt: skip


def in_child(kind: str, paths: dict[str, Path], precision: str, out: Path) -> dict:
    given = json.dumps({key: str(path) for key, path in paths.items()})
    args = [sys.executable, __file__, "--child", kind, precision, str(out), given]
    run = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def measure(name: str, paths: dict[str, Path], folder: Path, threads: int, runs: int) -> list[dict]:
    from edgekit.core.bundle import read_bundle

    rows = []
    for precision in PRECISIONS:
        bare = in_child("bare", paths, precision, folder / f"{name}-{precision}.tflite")
        ours = in_child("edgekit", paths, precision, folder / f"{name}-{precision}.ekb")
        manifest, contents = read_bundle(folder / f"{name}-{precision}.ekb")
        entry = manifest.artifacts[0]
        content = (folder / f"{name}-{precision}.tflite").read_bytes()
        rows.append({
            "model": name, "precision": precision, "bytes": len(contents[entry.path]),
            "latency_ms": bare_latency_ms(content, threads, runs), "bare_peak": bare.pop("peak"),
            **bare, **ours,
        })  # fmt: skip
        print(f"  measured {name} {precision}", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | precision | size | size vs fp32 | accuracy vs float | cosine | latency | "
          "latency vs fp32 | convert: bare / export+bare / edgekit | edgekit vs export+bare | "
          "peak memory: export+bare / edgekit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        fp32 = next(r for r in rows if r["model"] == row["model"] and r["precision"] == "fp32")
        what = "top-1" if row["metric"] == "top1" else "agreement"
        by_hand = row["bare_s"] + row["export_s"]
        print(
            f"| {row['model']} | {row['precision']} | {row['bytes'] / 1024:,.0f} KB | "
            f"{row['bytes'] / fp32['bytes']:.2f}× | {what} {row['float']:.1f}% → {row['artifact']:.1f}% | "
            f"{row['cosine']:.4f} | {row['latency_ms']:.3f} ms | "
            f"{row['latency_ms'] / fp32['latency_ms']:.2f}× | {row['bare_s']:.1f} s / {by_hand:.1f} s / "
            f"{row['edgekit_s']:.1f} s | {row['edgekit_s'] / by_hand:.2f}× | "
            f"{row['bare_peak'] / 2**30:.2f} GB / {row['peak'] / 2**30:.2f} GB |"
        )


STEPS = ("load (and export)", "float model", "conversion (calibration included)", "gate",
         "fallback: ranking nodes", "memory probe", "latency", "drift reference", "write")  # fmt: skip


def print_steps(rows: list[dict]) -> None:
    """Where edgekit's time goes, beside what a user's own script would spend: ``model.export()``,
    the bare converter, and running both models on the evaluation data (the gate's inference)."""
    print("| model | precision | " + " | ".join(STEPS) + " | edgekit | export+bare+inference | ratio |")
    print("|---|---|" + "---|" * (len(STEPS) + 3))
    for row in rows:
        steps = row["steps"]
        floor = row["export_s"] + row["bare_s"] + steps.get("float model", 0) + steps.get("gate", 0)
        cells = " | ".join(f"{steps.get(step, 0):.2f}" for step in STEPS)
        print(f"| {row['model']} | {row['precision']} | {cells} | {row['edgekit_s']:.2f} | {floor:.2f} | "
              f"{row['edgekit_s'] / floor:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mobilenetv2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, precision, out, paths = args.child
        run = child_bare if kind == "bare" else child_edgekit
        print(json.dumps(run({k: Path(v) for k, v in json.loads(paths).items()}, precision, Path(out))))
        return
    makers = {"digits": make_digits, "mobilenetv2": make_mobilenetv2}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            rows += measure(name, makers[name](folder), folder, args.threads, args.runs)
    print_table(rows)
    print()
    print_steps(rows)


if __name__ == "__main__":
    main()
