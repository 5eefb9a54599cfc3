"""What each TFLite precision buys and costs, measured side by side in one run.

    python benchmarks/convert_quality.py [--models digits,mobilenetv2] [--threads 2] [--runs 50]

For each model and precision it prints, against fp32 of the same model:
- size ratio of the .tflite file;
- accuracy (digits: top-1 on held-out labels) or agreement with the float model
  (MobileNetV2: random weights with BatchNorm statistics set from data, since nothing may
  be downloaded; agreement and cosine of its logits measure numeric fidelity only);
- latency ratio in the bare TFLite interpreter (ai_edge_litert, batch 1, same threads);
- edgekit's whole convert (load, checks, SavedModel export, conversion, evaluation of float
  and artifact, memory probe, latency, bundle) as a ratio to the bare
  ``tf.lite.TFLiteConverter`` call with the same settings, and to the minimal hand-written
  Keras 3 path (``model.export()`` then the converter), since ``from_keras_model`` fails on
  Keras 3 models. One untimed conversion of each kind warms TensorFlow up first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "quickstart"))

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


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


def measure(name: str, paths: dict[str, Path], folder: Path, threads: int, runs: int) -> list[dict]:
    import keras

    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.bundle import read_bundle
    from edgekit.core.profiles import load_profile

    calibration = np.load(paths["calibration"])["x"]

    def edgekit_convert(precision: str) -> Path:
        options = ConvertOptions(
            model=paths["model"], profile=load_profile("x86-gateway"), precision=precision,
            output=folder / f"{name}-{precision}.ekb", calibration=paths["calibration"],
            evaluation=paths["evaluation"], allow_accuracy_drop=True, allow_over_budget=True,
        )
        return convert(options).output

    def export() -> tuple[Path, float]:
        started = time.perf_counter()
        target = folder / f"{name}_savedmodel_{time.monotonic_ns()}"
        keras.models.load_model(paths["model"]).export(str(target), verbose=False)
        return target, time.perf_counter() - started

    warm, _ = export()
    bare_convert(warm, "fp32", calibration)
    edgekit_convert("fp32")
    rows = []
    for precision in PRECISIONS:
        saved_model, export_s = export()
        content, bare_s = bare_convert(saved_model, precision, calibration)
        started = time.perf_counter()
        output = edgekit_convert(precision)
        edgekit_s = time.perf_counter() - started
        manifest, contents = read_bundle(output)
        entry = manifest.artifacts[0]
        accuracy = entry.metrics.accuracy
        assert accuracy is not None
        rows.append(
            {
                "model": name,
                "precision": precision,
                "bytes": len(contents[entry.path]),
                "metric": accuracy.metric,
                "float": accuracy.float_model,
                "artifact": accuracy.artifact,
                "cosine": accuracy.cosine,
                "latency_ms": bare_latency_ms(content, threads, runs),
                "bare_s": bare_s,
                "export_s": export_s,
                "edgekit_s": edgekit_s,
            }  # fmt: skip
        )
        print(f"  measured {name} {precision}", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | precision | size | size vs fp32 | accuracy vs float | cosine | latency | "
          "latency vs fp32 | convert: bare / export+bare / edgekit | edgekit vs bare | "
          "edgekit vs export+bare |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        fp32 = next(r for r in rows if r["model"] == row["model"] and r["precision"] == "fp32")
        what = "top-1" if row["metric"] == "top1" else "agreement"
        print(
            f"| {row['model']} | {row['precision']} | {row['bytes'] / 1024:,.0f} KB | "
            f"{row['bytes'] / fp32['bytes']:.2f}× | {what} {row['float']:.1f}% → {row['artifact']:.1f}% | "
            f"{row['cosine']:.4f} | {row['latency_ms']:.3f} ms | "
            f"{row['latency_ms'] / fp32['latency_ms']:.2f}× | {row['bare_s']:.1f} s / "
            f"{row['bare_s'] + row['export_s']:.1f} s / {row['edgekit_s']:.1f} s | "
            f"{row['edgekit_s'] / row['bare_s']:.1f}× | "
            f"{row['edgekit_s'] / (row['bare_s'] + row['export_s']):.1f}× |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mobilenetv2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    makers = {"digits": make_digits, "mobilenetv2": make_mobilenetv2}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            rows += measure(name, makers[name](folder), folder, args.threads, args.runs)
    print_table(rows)


if __name__ == "__main__":
    main()
