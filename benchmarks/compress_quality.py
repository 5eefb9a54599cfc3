"""What pruning and distillation buy, against the unpruned float model in the same run.

    python benchmarks/compress_quality.py [--runs 300]

Rows: parameters (non-zero for magnitude pruning), fp32 and int8 TFLite file size,
gzip'd fp32 size (what magnitude pruning's zeros save in transit), fp32 TFLite latency
(bare interpreter, batch 1, 1 thread) as a ratio to the float baseline, and top-1.
Digits: the quickstart CNN; 50% structured and magnitude pruning with 5 and 3 epochs of
fine-tuning; a distilled student with a quarter of the parameters (20 epochs) and the
same student trained alone. MobileNetV2 (random weights, so no accuracy): magnitude
pruning only, since structured pruning refuses its residual adds.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "quickstart"))

from convert_quality import bare_latency_ms  # noqa: E402


def tflite(model: Any, folder: Path, calibration: np.ndarray | None) -> tuple[bytes, bytes | None]:
    import tensorflow as tf

    path = folder / f"export-{id(model)}"
    model.export(str(path), verbose=False)
    fp32 = tf.lite.TFLiteConverter.from_saved_model(str(path)).convert()
    if calibration is None:
        return fp32, None
    converter = tf.lite.TFLiteConverter.from_saved_model(str(path))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return fp32, converter.convert()


def row(name: str, model: Any, folder: Path, runs: int, calibration: Any, data: Any = None) -> dict[str, Any]:
    from edgekit.compress.pruning import nonzero_parameters, parameter_count

    fp32, int8 = tflite(model, folder, calibration)
    top1 = None
    if data is not None:
        top1 = 100 * float((model.predict(data["x_eval"], verbose=0).argmax(1) == data["y_eval"]).mean())
    return {
        "name": name,
        "params": parameter_count(model),
        "nonzero": nonzero_parameters(model),
        "fp32": len(fp32),
        "int8": len(int8) if int8 else None,
        "gzip": len(gzip.compress(fp32)),
        "latency": bare_latency_ms(fp32, 1, runs),
        "top1": top1,
    }


def student() -> Any:
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    import keras
    from convert_quality import make_mobilenetv2
    from digits import build_digits_cnn, digits_splits

    from edgekit import compress
    from edgekit.compress.pruning import PruningError

    data = digits_splits(0)
    train = (data["x_train"], data["y_train"])
    calibration = data["x_train"][:200]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keras.utils.set_random_seed(0)
        base = build_digits_cnn()
        base.compile("adam", "sparse_categorical_crossentropy")
        base.fit(*train, epochs=20, batch_size=32, verbose=0)
        rows.append(row("digits float", base, folder, args.runs, calibration, data))
        structured = compress.prune(base, 0.5, train, structured=True, epochs=5)
        rows.append(row("digits 50% structured", structured, folder, args.runs, calibration, data))
        magnitude = compress.prune(base, 0.5, train, epochs=3)
        rows.append(row("digits 50% magnitude", magnitude, folder, args.runs, calibration, data))
        keras.utils.set_random_seed(0)
        alone = student()
        alone.compile("adam", "sparse_categorical_crossentropy")
        alone.fit(*train, epochs=20, batch_size=32, verbose=0)
        rows.append(row("digits student alone", alone, folder, args.runs, calibration, data))
        keras.utils.set_random_seed(0)
        distilled = compress.distill(base, student(), train, epochs=20)
        rows.append(row("digits student distilled", distilled, folder, args.runs, calibration, data))
        mobilenet = keras.models.load_model(make_mobilenetv2(folder)["model"])
        rows.append(row("MobileNetV2 float", mobilenet, folder, max(args.runs // 10, 20), None))
        try:
            compress.prune(mobilenet, 0.5, structured=True)
        except PruningError as exc:
            print(f"MobileNetV2 structured pruning: refused ({exc})")
        sparse = compress.prune(mobilenet, 0.5)
        rows.append(row("MobileNetV2 50% magnitude", sparse, folder, max(args.runs // 10, 20), None))
    print(
        "| model | parameters (non-zero) | fp32 TFLite | gzip'd | int8 TFLite "
        "| fp32 latency vs float | top-1 |"
    )
    print("|---|---|---|---|---|---|---|")
    baseline = {r["name"].split()[0]: r for r in rows if r["name"].endswith("float")}
    for r in rows:
        base_row = baseline[r["name"].split()[0]]
        int8 = f"{r['int8'] / 1024:.0f} KB" if r["int8"] else "-"
        top1 = f"{r['top1']:.2f}%" if r["top1"] is not None else "-"
        print(
            f"| {r['name']} | {r['params']:,} ({r['nonzero']:,}) | {r['fp32'] / 1024:.0f} KB | "
            f"{r['gzip'] / 1024:.0f} KB | {int8} | {r['latency'] / base_row['latency']:.2f}× | {top1} |"
        )


if __name__ == "__main__":
    main()
