"""One Keras decoder, run as ONNX on ONNX Runtime and as TFLite on LiteRT, side by side in one
run, batch 1, 2 threads, through edgekit's own loop and backends: file size, peak memory
with the cache at 256 tokens, time to first token (64 prompt tokens), decode tokens/s (64
new tokens), each the median of 7 generations after one to warm up, and how many of ONNX
fp32's 64 greedy tokens each artifact repeats.

    python benchmarks/generate_tflite.py              # about a minute on 2 cores

The decoder is the one docs/generate.md shows (4 blocks, hidden 256, 4 heads, vocabulary
2,000, random weights: nothing may be downloaded). Each artifact runs in a fresh process that
reports its own peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ARTIFACTS = ("onnx-fp32", "onnx-dynamic", "tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8",
             "tflite-int4")
PROMPT, NEW, CONTEXT, VOCAB, RUNS = 64, 64, 256, 2000, 7


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: one artifact, JSON out
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.folder, args.one)))
        return
    with tempfile.TemporaryDirectory(prefix="edgekit-tflite-bench-") as tmp:
        folder = Path(tmp)
        make(folder)
        rows = {}
        for name in ARTIFACTS:
            child = [sys.executable, __file__, "--one", name, "--folder", str(folder)]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
            rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    report(rows)


def make(folder: Path) -> None:
    """The Keras decoder and each artifact of it, made as edgekit convert makes them."""
    import keras
    from keras import layers

    from edgekit.convert.decoder_artifacts import dynamic_onnx, make_tflite
    from edgekit.converters.keras_decoder import keras_decoder_to_onnx

    keras.utils.set_random_seed(1)
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    positions = keras.Input((None,), dtype="int32", name="position_ids")
    x = layers.Add()([layers.Embedding(VOCAB, 256)(ids), layers.Embedding(512, 256)(positions)])
    for _ in range(4):
        h = layers.LayerNormalization()(x)
        x = layers.Add()([x, layers.MultiHeadAttention(4, 64)(h, h, use_causal_mask=True)])
        h = layers.Dense(1024, activation="gelu")(layers.LayerNormalization()(x))
        x = layers.Add()([x, layers.Dense(256)(h)])
    head = layers.Dense(VOCAB, kernel_initializer=keras.initializers.RandomNormal(stddev=0.3))
    model = keras.Model([ids, positions], head(layers.LayerNormalization()(x)), name="tinygpt")
    onnx_model = keras_decoder_to_onnx(model)
    (folder / "onnx-fp32").write_bytes(onnx_model.SerializeToString())
    (folder / "onnx-dynamic").write_bytes(dynamic_onnx(onnx_model))
    for precision in ("fp32", "fp16", "dynamic", "int8", "int4"):
        (folder / f"tflite-{precision}").write_bytes(make_tflite(model, precision)[0])


def load(folder: Path, name: str) -> object:
    from edgekit.core.manifest import GenerationSpec
    from edgekit.runtime.backends.base import backend_for
    from edgekit.runtime.generate import Decoder

    fmt = name.split("-")[0]
    backend = backend_for(fmt)(folder.joinpath(name).read_bytes(), 2)
    if fmt == "onnx":
        past, present = "past_key_values.{i}.{k}", "present.{i}.{k}"
    else:
        past, present = "past_{i}_{k}", "present_{i}_{k}"
    pairs = [(i, k) for i in range(4) for k in ("key", "value")]
    cache = tuple((past.format(i=i, k=k), present.format(i=i, k=k)) for i, k in pairs)
    spec = GenerationSpec(
        ids="input_ids", mask="attention_mask" if fmt == "onnx" else None, positions="position_ids",
        logits="logits", cache=cache, layers=4, heads=4, head_size=64, vocab_size=VOCAB,
        max_context=CONTEXT + 1,
    )  # fmt: skip
    return Decoder(backend.run, [o.name for o in backend.outputs], spec)


def greedy(decoder: object, prompt: list[int], new: int) -> list[int]:
    from edgekit.runtime.generate import Generation, Sampling

    return list(decoder.tokens(prompt, Sampling(max_new_tokens=new), Generation()))  # type: ignore[attr-defined]


def measure(folder: Path, name: str) -> dict[str, float]:
    from edgekit.runtime.generate import Generation, Sampling

    decoder = load(folder, name)
    prompt = [int(t) for t in np.random.default_rng(1).integers(2, VOCAB, PROMPT)]
    greedy(decoder, prompt, NEW)  # warm up at the measured lengths: XNNPACK plans each new shape once
    firsts, rates = [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        tokens = decoder.tokens(prompt, Sampling(max_new_tokens=NEW), Generation())  # type: ignore[attr-defined]
        found = [next(tokens)]
        firsts.append(time.perf_counter() - started)
        found += list(tokens)
        rates.append((len(found) - 1) / (time.perf_counter() - started - firsts[-1]))
    first, decode = float(np.median(firsts)), float(np.median(rates))
    greedy(decoder, prompt[:1], CONTEXT - 1)  # the cache at its full 256 tokens, for the peak
    reference = found if name == "onnx-fp32" else greedy(load(folder, "onnx-fp32"), prompt, NEW)
    same = sum(a == b for a, b in zip(found, reference, strict=True)) / len(reference)
    return {"size": folder.joinpath(name).stat().st_size, "first_ms": 1000 * first, "tokens_per_s": decode,
            "peak_mb": _peak_mb(), "same": same}  # fmt: skip


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report(rows: dict[str, dict[str, float]]) -> None:
    base = rows["onnx-fp32"]
    print("\nKeras decoder, 4 blocks, hidden 256, vocabulary 2000; batch 1, 2 threads\n")
    print("| artifact | file | file vs ONNX fp32 | peak memory, 256-token cache | time to first token "
          "(64 tokens) | decode tokens/s (64 new) | decode vs ONNX fp32 "
          "| greedy tokens as ONNX fp32 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ARTIFACTS:
        r = rows[name]
        print(
            f"| {name} | {r['size'] / 1e6:.2f} MB | {r['size'] / base['size']:.2f}× | {r['peak_mb']:.0f} MB "
            f"| {r['first_ms']:.1f} ms | {r['tokens_per_s']:.0f} "
            f"| {r['tokens_per_s'] / base['tokens_per_s']:.2f}× | {100 * r['same']:.0f}% |"
        )


if __name__ == "__main__":
    main()
