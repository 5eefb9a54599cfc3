"""What ``Model.predict`` costs over the bare engine it wraps, interleaved in one process.

    python benchmarks/runtime_overhead.py [--models digits,mobilenetv2,fusion] [--runs 300]

``fusion`` is a two-input model (float features and int32 token ids, two outputs), so the
per-input checks and the dict of outputs are measured too. For each model, TFLite and ONNX,
fp32 and int8: p50 latency of ``Model.predict`` (batch 1)
and of the bare interpreter or session on the same artifact and input, timed in
alternation so both see the same machine state. Targets: at most 3% at p50 for models of
1 ms or more, at most 20 µs per call for smaller ones. Where a target is missed, the
script times the pieces edgekit adds, to show where the overhead goes.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_quality import make_digits, make_mobilenetv2  # noqa: E402

CASES = (("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8"))


def build(name: str, paths: dict[str, Path], folder: Path, fmt: str, precision: str) -> Path:
    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.profiles import load_profile

    options = ConvertOptions(
        model=paths["model"], profile=load_profile("x86-gateway"), format=fmt, precision=precision,
        output=folder / f"{name}-{fmt}-{precision}.ekb", calibration=paths["calibration"],
        max_accuracy_drop=100.0,
    )
    return convert(options).output


def make_fusion(folder: Path) -> dict[str, Path]:
    """A sensor-fusion Keras model: features (8,) and token ids (5,) in; scores and a box out."""
    import keras

    keras.utils.set_random_seed(0)
    features = keras.Input((8,), name="features")
    ids = keras.Input((5,), dtype="int32", name="ids")
    text = keras.layers.Flatten()(keras.layers.Embedding(50, 8)(ids))
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Concatenate()([features, text]))
    outputs = [keras.layers.Dense(4, activation="softmax", name="scores")(hidden),
               keras.layers.Dense(4, name="box")(hidden)]  # fmt: skip
    keras.Model([features, ids], outputs).save(folder / "fusion.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "calibration.npz", features=rng.normal(0, 1, (100, 8)).astype(np.float32),
             ids=rng.integers(0, 50, (100, 5)).astype(np.int32))
    return {"model": folder / "fusion.keras", "calibration": folder / "calibration.npz"}


def where_it_goes(model, x: dict[str, np.ndarray], runs: int = 2000) -> str:  # type: ignore[no-untyped-def]
    """Time the steps edgekit adds around the engine call."""
    from edgekit.runtime.backends.base import dequantize, quantize
    from edgekit.runtime.feeds import check_feed

    def per_call_us(step) -> float:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        for _ in range(runs):
            step()
        return (time.perf_counter() - started) / runs * 1e6

    parts = {"input checks": per_call_us(lambda: check_feed(model.info.inputs, x))}
    info_out = model.info.outputs[0]
    for info_in in model.info.inputs:
        if info_in.quantized:
            step = functools.partial(quantize, x[info_in.name], info_in)
            parts[f"quantize {info_in.name}"] = per_call_us(step)
    if info_out.quantized:
        q = np.zeros(tuple(d or 1 for d in info_out.shape), dtype=info_out.dtype)
        parts["dequantize output"] = per_call_us(lambda: dequantize(q, info_out))
    return ", ".join(f"{k} {v:.1f} µs" for k, v in parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mobilenetv2,fusion")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()

    from edgekit.runtime import Model
    from edgekit.runtime.bench import bench, sample_input

    makers = {"digits": make_digits, "mobilenetv2": make_mobilenetv2, "fusion": make_fusion}
    print("| model | artifact | edgekit p50 | bare p50 | ratio | overhead per call | target |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            paths = makers[name](folder)
            for fmt, precision in CASES:
                model = Model.load(build(name, paths, folder, fmt, precision), allow_unsigned=True)
                result = bench(model, runs=args.runs, warmup=20, compare_bare=True)
                assert result.bare is not None and result.overhead_ratio is not None
                assert result.overhead_us is not None
                big = result.bare.p50_ms >= 1.0
                met = result.overhead_ratio <= 1.03 if big else result.overhead_us <= 20
                target = ("≤ 3%" if big else "≤ 20 µs") + (" ✓" if met else " ✗")
                ours, bare = result.edgekit.p50_ms, result.bare.p50_ms
                print(
                    f"| {name} | {fmt} {precision} | {ours:.3f} ms | {bare:.3f} ms "
                    f"| {result.overhead_ratio:.3f}× | {result.overhead_us:+.1f} µs | {target} |",
                    flush=True,
                )
                if not met:
                    notes.append(f"{name} {fmt} {precision}: {where_it_goes(model, sample_input(model))}")
    for note in notes:
        print(f"- where the overhead goes, {note}")


if __name__ == "__main__":
    main()
