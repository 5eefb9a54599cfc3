"""What each decoder precision buys and costs, side by side in one run, batch 1, 2 threads:
file size, peak memory with the cache at 256 tokens, time to first token (64 prompt tokens)
and decode tokens/s (64 new tokens), and perplexity against fp32 on text the fp32 model
wrote itself (its own greedy continuations, so fp32 finds them likely). Also the same fp32
model without the cache (the whole sequence recomputed for each token), and
onnxruntime-genai's own loop on it.

    python benchmarks/generate_quality.py                 # about 2 minutes on 2 cores
    python benchmarks/generate_quality.py --layers 8      # a bigger decoder

The decoder is GPT-class, built by ``tests/decoder_graphs.py`` with random weights (nothing
may be downloaded): 4 layers, hidden 256, 4 heads, vocabulary 2,000. Each precision runs in
a fresh process that reports its own peak resident memory (VmHWM) and perplexity; the speeds
are measured in fresh processes too, in 3 rounds of every precision (each the median of 7
generations after one to warm up), and the median round is reported, so that a machine that
slows down for a while slows no precision alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PRECISIONS = ("fp32", "fp16", "int8", "int4", "dynamic")
PROMPT, NEW, CONTEXT, RUNS, ROUNDS = 64, 64, 256, 7, 3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: one artifact, JSON out
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, _, name = args.one.partition(":")
        print(json.dumps(speed(args.folder, name) if kind == "speed" else measure(args.folder, args.one)))
        return
    with tempfile.TemporaryDirectory(prefix="edgekit-generate-bench-") as tmp:
        folder = Path(tmp)
        make(folder, args.layers)
        rows = {name: _child(folder, name) for name in (*PRECISIONS, "fp32-recompute")}
        timed = (*PRECISIONS, *(("fp32-genai",) if _has_genai() else ()))
        rounds = [{name: _child(folder, f"speed:{name}") for name in timed} for _ in range(ROUNDS)]
        for name in timed:
            found = [r[name] for r in rounds]
            medians = {key: float(np.median([f[key] for f in found])) for key in found[0]}
            rows.setdefault(name, {}).update(medians)
    report(rows, args.layers)


def _child(folder: Path, name: str) -> dict[str, Any]:
    child = [sys.executable, __file__, "--one", name, "--folder", str(folder)]
    done = subprocess.run(child, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def make(folder: Path, layers: int) -> None:
    """The float decoder, each precision of it, and the held-out text fp32 writes."""
    import onnx
    from decoder_graphs import build_decoder

    from edgekit.convert.decoder_artifacts import dynamic_onnx
    from edgekit.converters.onnx_fp16 import to_float16
    from edgekit.converters.onnx_weights import weight_only

    path = build_decoder(folder / "fp32.onnx", vocab=2000, layers=layers, heads=4, head_size=64, seed=1)
    model = onnx.load(str(path))
    (folder / "fp16.onnx").write_bytes(to_float16(model, outputs_apart=True).SerializeToString())
    for bits in (8, 4):
        (folder / f"int{bits}.onnx").write_bytes(weight_only(model, bits)[0].SerializeToString())
    (folder / "dynamic.onnx").write_bytes(dynamic_onnx(model))
    decoder = load(folder / "fp32.onnx")
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(8):
        prompt = [int(t) for t in rng.integers(2, 2000, 8)]
        texts.append(prompt + greedy(decoder, prompt, 56))
    (folder / "texts.json").write_text(json.dumps(texts))


def load(path: Path) -> object:
    import onnxruntime as ort

    from edgekit.core.manifest import GenerationSpec
    from edgekit.runtime.generate import Decoder

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    cache = [(i.name, i.name.replace("past_key_values", "present")) for i in session.get_inputs()[3:]]
    shape = session.get_inputs()[3].shape
    spec = GenerationSpec(
        ids="input_ids", mask="attention_mask", positions="position_ids", logits="logits", cache=tuple(cache),
        layers=len(cache) // 2, heads=shape[1], head_size=shape[3], vocab_size=2000, max_context=CONTEXT + 1,
    )  # fmt: skip
    return Decoder(lambda feed: session.run(None, feed), names, spec)


def greedy(decoder: object, prompt: list[int], new: int) -> list[int]:
    from edgekit.runtime.generate import Generation, Sampling

    return list(decoder.tokens(prompt, Sampling(max_new_tokens=new), Generation()))  # type: ignore[attr-defined]


def measure(folder: Path, name: str) -> dict[str, float]:
    precision = name.removesuffix("-recompute").removesuffix("-genai")
    decoder = load(folder / f"{precision}.onnx")
    prompt = [int(t) for t in np.random.default_rng(1).integers(2, 2000, PROMPT)]
    greedy(decoder, prompt[:8], 4)  # warm up
    if name.endswith("-recompute"):
        started = time.perf_counter()
        ids = list(prompt)
        for _ in range(NEW):  # no cache: the whole sequence again for every token
            ids.append(int(decoder.logits_of(ids)[-1].argmax()))  # type: ignore[attr-defined]
        return {"tokens_per_s": NEW / (time.perf_counter() - started)}
    greedy(decoder, prompt[:1], CONTEXT - 1)  # the cache at its full 256 tokens, for the peak
    texts = json.loads((folder / "texts.json").read_text())
    total, scored = 0.0, 0
    for ids in texts:
        logits = decoder.logits_of(ids)[:-1]  # type: ignore[attr-defined]
        logits -= logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float(log_probs[np.arange(len(ids) - 1), ids[1:]].sum())
        scored += len(ids) - 1
    return {
        "size": (folder / f"{precision}.onnx").stat().st_size, "perplexity": float(np.exp(total / scored)),
        "peak_mb": _peak_mb(),
    }  # fmt: skip


def speed(folder: Path, name: str) -> dict[str, float]:
    """Time to first token and decode tokens/s of one precision (or of onnxruntime-genai's
    loop on fp32): the medians of RUNS generations after one to warm up."""
    from edgekit.runtime.generate import Generation, Sampling

    prompt = [int(t) for t in np.random.default_rng(1).integers(2, 2000, PROMPT)]
    decoder = load(folder / f"{name.removesuffix('-genai')}.onnx")

    def ours() -> tuple[list[int], float, float]:
        started = time.perf_counter()
        tokens = decoder.tokens(prompt, Sampling(max_new_tokens=NEW), Generation())  # type: ignore[attr-defined]
        found = [next(tokens)]
        first = time.perf_counter() - started
        found += list(tokens)
        return found, first, (len(found) - 1) / (time.perf_counter() - started - first)

    run = _genai(folder, prompt) if name.endswith("-genai") else ours
    runs = [run() for _ in range(RUNS + 1)][1:]
    found = {"first_ms": 1000 * float(np.median([r[1] for r in runs])),
             "tokens_per_s": float(np.median([r[2] for r in runs]))}  # fmt: skip
    if name.endswith("-genai"):
        found["same"] = float(runs[0][0] == greedy(decoder, prompt, NEW))
    return found


def _has_genai() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime_genai") is not None


def _genai(folder: Path, prompt: list[int]) -> Any:
    """One greedy generation of the fp32 model through onnxruntime-genai's own loop (its model
    folder: the ONNX file and a genai_config.json naming the same inputs and cache)."""
    import onnxruntime_genai as og
    from decoder_graphs import genai_folder

    model = og.Model(str(genai_folder(folder / "fp32.onnx", folder / "genai", heads=4, head_size=64)))

    def run() -> tuple[list[int], float, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + NEW, do_sample=False)
        started = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)  # the prefill
        tokens, first = [], 0.0
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            first = first or time.perf_counter() - started
        return tokens, first, (len(tokens) - 1) / (time.perf_counter() - started - first)

    return run


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report(rows: dict[str, dict[str, float]], layers: int) -> None:
    base = rows["fp32"]
    print(f"\nGPT-class decoder, {layers} layers, hidden 256, vocabulary 2000; batch 1, 2 threads\n")
    print(
        "| precision | file | file vs fp32 | peak memory, 256-token cache | time to first token (64 tokens) "
        "| decode tokens/s (64 new) | decode vs fp32 | perplexity | vs fp32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in PRECISIONS:
        r = rows[name]
        print(
            f"| {name} | {r['size'] / 1e6:.2f} MB | {r['size'] / base['size']:.2f}× | {r['peak_mb']:.0f} MB "
            f"| {r['first_ms']:.1f} ms | {r['tokens_per_s']:.0f} "
            f"| {r['tokens_per_s'] / base['tokens_per_s']:.2f}× | "
            f"{r['perplexity']:.3f} | {100 * (r['perplexity'] / base['perplexity'] - 1):+.2f}% |"
        )
    genai = rows.get("fp32-genai")
    if genai is not None:
        print(
            f"\nonnxruntime-genai's own loop on the fp32 model: {genai['tokens_per_s']:.0f} tokens/s, "
            f"time to first token {genai['first_ms']:.1f} ms, the same greedy tokens: "
            f"{bool(genai['same'])}; edgekit's loop decodes at "
            f"{base['tokens_per_s'] / genai['tokens_per_s']:.2f}× its speed"
        )
    recompute = rows["fp32-recompute"]["tokens_per_s"]
    print(f"\nfp32 without the cache: {recompute:.0f} tokens/s at {PROMPT} + {NEW} tokens; the cache is "
          f"{base['tokens_per_s'] / recompute:.1f}× faster")


if __name__ == "__main__":
    main()
