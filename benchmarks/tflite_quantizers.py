"""The LiteRT Quantizer (litert-quantizer, formerly ai-edge-quantizer) beside the TFLite
converter's own quantization, measured side by side in one run.

    python benchmarks/tflite_quantizers.py [--models digits,mobilenetv2] [--threads 2] [--runs 50]

Google deprecates quantizing inside the TFLite converter in favour of converting to a float
LiteRT model and quantizing that with the LiteRT Quantizer. For each model, both start from
the same Keras model: the converter from its SavedModel (conversion and quantization in one
call), the quantizer from the float .tflite the converter made (its time excludes that
conversion, printed once per model as "float conversion"). Each quantization runs in a child
process of its own, so its peak resident memory is its own (imports included: the converter
needs TensorFlow, the quantizer only LiteRT). Per row:
- size, and cosine of the logits against the float .tflite on the evaluation data;
- accuracy (digits: top-1 on held-out labels; MobileNetV2, random weights: top-1 agreement
  with float);
- median latency in the bare LiteRT interpreter (batch 1, the same threads);
- quantization time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_quality import bare_convert, bare_latency_ms, make_digits, make_mobilenetv2  # noqa: E402

from edgekit.core.memory import peak_bytes  # noqa: E402

METHODS = {  # row label -> (tool, precision or recipe)
    "converter int8 (full integer)": ("converter", "int8"),
    "quantizer static_wi8_ai8": ("quantizer", "static_wi8_ai8"),
    "quantizer static_wi8_ai16": ("quantizer", "static_wi8_ai16"),
    "converter dynamic": ("converter", "dynamic"),
    "quantizer dynamic_wi8_afp32": ("quantizer", "dynamic_wi8_afp32"),
    "quantizer weight_only_wi4_afp32": ("quantizer", "weight_only_wi4_afp32"),
}


def quantize(tool: str, how: str, folder: Path) -> float:
    """In the child: quantize with ``tool``, write ``folder/out.tflite``; the seconds it took."""
    calibration = np.load(folder / "calib.npz")["x"]
    started = time.perf_counter()
    if tool == "converter":
        content, _ = bare_convert(folder / "saved_model", how, calibration)
    else:
        from litert_quantizer import quantizer, recipe

        float_model = bytearray((folder / "float.tflite").read_bytes())
        engine = quantizer.Quantizer(float_model, getattr(recipe, how)())
        qsvs = None
        if engine.need_calibration:
            signature = {"serving_default": [{"image": row[None]} for row in calibration]}
            qsvs = engine.calibrate(signature, num_threads=1)
        content = bytes(engine.quantize(qsvs, enable_progress_report=False).quantized_model)
    seconds = time.perf_counter() - started
    (folder / "out.tflite").write_bytes(content)
    return seconds


def in_child(tool: str, how: str, folder: Path) -> tuple[bytes, float, int]:
    """The quantized model, its time, and the child's peak resident set in bytes."""
    child = subprocess.run([sys.executable, __file__, "--child", tool, how, str(folder)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    if child.returncode != 0:
        raise RuntimeError(f"{tool} {how} failed in its child process")
    result = json.loads(child.stdout)
    return (folder / "out.tflite").read_bytes(), result["seconds"], result["peak"]


def logits(content: bytes, x: np.ndarray) -> np.ndarray:
    """Float logits of every sample, one a call, (de)quantizing integer inputs and outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=2)
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outs = []
    for row in x:
        value = row[None]
        if source["dtype"] != np.float32:
            scale, zero = source["quantization"]
            info = np.iinfo(source["dtype"])
            value = np.clip(np.round(value / scale + zero), info.min, info.max).astype(source["dtype"])
        interpreter.set_tensor(source["index"], value)
        interpreter.invoke()
        out = interpreter.get_tensor(sink["index"]).astype(np.float32)
        if sink["dtype"] != np.float32:
            scale, zero = sink["quantization"]
            out = (out - zero) * scale
        outs.append(out[0])
    return np.array(outs)


def measure(name: str, paths: dict[str, Path], folder: Path, threads: int, runs: int) -> list[dict]:
    import keras
    import tensorflow as tf

    model = keras.models.load_model(paths["model"])
    signature = [tf.TensorSpec((1, *model.inputs[0].shape[1:]), tf.float32, name="image")]
    model.export(str(folder / "saved_model"), input_signature=signature, verbose=False)
    calibration = np.load(paths["calibration"])["x"]
    np.savez(folder / "calib.npz", x=calibration[:100])
    float_model, float_s = bare_convert(folder / "saved_model", "fp32", calibration)
    (folder / "float.tflite").write_bytes(float_model)
    with np.load(paths["evaluation"]) as data:
        x, y = data["x"], data["y"] if "y" in data else None
    reference = logits(float_model, x)
    truth = y if y is not None else reference.argmax(axis=1)

    def row(method: str, content: bytes, seconds: float, peak: int) -> dict:
        got = logits(content, x)
        cosine = float(np.sum(got * reference) / (np.linalg.norm(got) * np.linalg.norm(reference)))
        top1 = float((got.argmax(axis=1) == truth).mean() * 100)
        latency = bare_latency_ms(content, threads, runs)
        return {"model": name, "method": method, "bytes": len(content), "cosine": cosine, "top1": top1,
                "latency_ms": latency, "seconds": seconds, "peak": peak}  # fmt: skip

    rows = [row(f"float .tflite (converter, {float_s:.1f} s)", float_model, float_s, 0)]
    for label, (tool, how) in METHODS.items():
        rows.append(row(label, *in_child(tool, how, folder)))
        print(f"  measured {name} {label}", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| model | method | size | cosine vs float | top-1 (digits) / agreement | latency | "
          "latency vs float | quantize time | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"])
        peak = f"{row['peak'] / 2**30:.2f} GB" if row["peak"] else "–"
        speed = row["latency_ms"] / base["latency_ms"]
        print(f"| {row['model']} | {row['method']} | {row['bytes'] / 1024:,.0f} KB | {row['cosine']:.4f} | "
              f"{row['top1']:.1f}% | {row['latency_ms']:.3f} ms | {speed:.2f}× | {row['seconds']:.2f} s | "
              f"{peak} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mobilenetv2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        seconds = quantize(args.child[0], args.child[1], Path(args.child[2]))
        print(json.dumps({"seconds": seconds, "peak": peak_bytes()}))
        return
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
