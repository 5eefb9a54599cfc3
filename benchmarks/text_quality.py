"""A BERT-class encoder at every precision, unpruned and pruned, in one table.

    python benchmarks/text_quality.py [--runs 200] [--threads 2]

The model is examples/voice_commands' encoder (4 layers, hidden 256, 4 heads, 8 intents),
trained here on its generated commands. "pruned" is edgekit's head and feed-forward pruning
at 0.5, distilled from the unpruned model, as `convert --prune 0.5` does it; "3 blocks" is
that and one whole block dropped, as `--prune 0.5 --drop-layers 1` does it. Each artifact is
made by edgekit's converters and timed in the bare engine (an ONNX Runtime session, a LiteRT
interpreter) at batch 1, sequence 32 and 128, as a ratio to the unpruned fp32 ONNX model at
the same length. "fused" is ONNX Runtime's transformer optimizer (model_type bert) run on the
fp32 graph (its fusions only, opt_level 0: the ONNX Runtime pass of levels 1+ imports torch); the
counts of what it fused are printed. Top-1 and macro-F1 are on 400 held-out
commands at sequence 32. The 128-token models reuse the trained weights, with the position
table repeated, so they are timed but not scored.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT / "examples" / "voice_commands")]

from corpus import INTENTS, commands, train_tokenizer, write_jsonl  # noqa: E402
from encoder import build_encoder, encode  # noqa: E402
from store_load import median_ms  # noqa: E402

LENGTHS = (32, 128)
ONNX_PRECISIONS = ("fp32", "dynamic", "int8", "fp16")
TFLITE_PRECISIONS = ("fp32", "dynamic", "fp16", "int8")


def train(folder: Path) -> tuple[Any, dict[str, Any]]:
    import keras

    keras.utils.set_random_seed(0)
    records, held = commands(3000, 0), commands(400, 1)
    tokenizer = train_tokenizer(folder / "tokenizer.json", [r["text"] for r in records], vocab=1000)
    write_jsonl(folder / "calib.jsonl", [{"text": r["text"]} for r in records[:200]])
    model = build_encoder(1000, len(INTENTS))
    model.compile(keras.optimizers.Adam(3e-4), "sparse_categorical_crossentropy")
    x, y = (
        encode(str(tokenizer), [r["text"] for r in records]),
        np.array([INTENTS.index(r["label"]) for r in records]),
    )
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    data = {"tokenizer": tokenizer, "x": x, "y": y, "calibration": folder / "calib.jsonl",
            "x_eval": encode(str(tokenizer), [r["text"] for r in held]),
            "y_eval": np.array([INTENTS.index(r["label"]) for r in held])}  # fmt: skip
    return model, data


def pruned(model: Any, data: dict[str, Any], drop: int = 0) -> tuple[Any, Any]:
    """As ``convert --prune 0.5 [--drop-layers drop]`` does it: score, prune, drop blocks, distil."""
    from edgekit.compress.layers import drop_blocks
    from edgekit.compress.pruning import distill
    from edgekit.compress.transformer import LEARNING_RATE, find_units, importance, prune_transformer

    scores = importance(model, find_units(model), data["x"], data["y"])
    student, _ = prune_transformer(model, 0.5, scores)
    dropped: list[str] = []
    if drop:
        student, dropped = drop_blocks(student, drop, data["x"], data["y"])
    student = distill(model, student, (data["x"], data["y"]), epochs=3, learning_rate=LEARNING_RATE)
    return student, (scores, dropped)


def longer(model: Any, length: int, kept: Any) -> Any:
    """The same weights at ``length`` tokens: the position table repeated."""
    from edgekit.compress.layers import find_blocks, rewired
    from edgekit.compress.transformer import prune_transformer

    wide = build_encoder(1000, len(INTENTS), length=length)
    if kept is not None:
        scores, dropped = kept
        wide, _ = prune_transformer(wide, 0.5, scores)
        blocks = find_blocks(wide)
        wide = rewired(wide, blocks, [i for i, b in enumerate(blocks) if b.attention in dropped])
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.name == "positions":
            weights = [np.resize(weights[0], (length, weights[0].shape[1]))]
        if weights:
            wide.get_layer(layer.name).set_weights(weights)
    return wide


def artifacts(model: Any, folder: Path, data: dict[str, Any], length: int) -> dict[str, bytes]:
    from edgekit.convert import ConvertOptions, build
    from edgekit.core.profiles import load_profile

    path = folder / f"{model.name}-{id(model)}.keras"
    model.save(path)
    made = {}
    for fmt, precisions in (("onnx", ONNX_PRECISIONS), ("tflite", TFLITE_PRECISIONS)):
        for precision in precisions:
            options = ConvertOptions(
                model=path, profile=load_profile("x86-gateway"), output=folder / "unused.ekb", format=fmt,
                precision=precision, tokenizer=data["tokenizer"], calibration=data["calibration"],
                max_sequence_length=length, allow_accuracy_drop=True, allow_over_budget=True,
            )
            try:
                result = build(options)
            except Exception as exc:  # a precision that does not convert is a row too
                print(f"  {fmt} {precision} at {length}: {str(exc).splitlines()[0][:100]}", file=sys.stderr)
                continue
            made[f"{fmt} {precision}"] = result.contents[result.manifest.artifacts[0].path]
    made["onnx fused fp32"] = fused(made["onnx fp32"], folder)
    return made


def fused(model: bytes, folder: Path) -> bytes:
    from onnxruntime.transformers.optimizer import optimize_model

    path = folder / "fp32.onnx"
    path.write_bytes(model)
    optimized = optimize_model(str(path), model_type="bert", num_heads=4, hidden_size=256, opt_level=0)
    counts = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    print(f"  ORT transformer optimizer fused: {counts or 'nothing'}", file=sys.stderr)
    out = folder / "fused.onnx"
    optimized.save_model_to_file(str(out))
    return out.read_bytes()


def runner(name: str, content: bytes, threads: int) -> Any:
    if name.startswith("onnx"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        return lambda feed: session.run(
            None, {k: v.astype(_onnx_dtype(session, k)) for k, v in feed.items()}
        )[0]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    signature = interpreter.get_signature_runner()
    details = signature.get_input_details()  # by the signature's own input names
    return lambda feed: next(
        iter(signature(**{k: v.astype(details[k]["dtype"]) for k, v in feed.items()}).values())
    )


def _onnx_dtype(session: Any, name: str) -> Any:
    kind = next(i.type for i in session.get_inputs() if i.name == name)
    return np.int64 if "int64" in kind else np.int32


def scores(run: Any, data: dict[str, Any]) -> tuple[float, float]:
    from edgekit.core.classes import class_report

    x, y = data["x_eval"], data["y_eval"]
    predicted = np.array([np.argmax(run({k: v[i : i + 1] for k, v in x.items()})) for i in range(len(y))])
    report = class_report(y, predicted, len(INTENTS))
    return 100 * report.accuracy, 100 * report.macro.f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from edgekit.compress.pruning import parameter_count

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, data = train(folder)
        small, kept = pruned(model, data)
        shallow, shallow_kept = pruned(model, data, drop=1)
        print(f"  pruned and dropped the block of {shallow_kept[1]}", file=sys.stderr)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        variants = (("unpruned", model, None), ("pruned", small, kept), ("3 blocks", shallow, shallow_kept))
        for label, keras_model, kept in variants:
            for length in LENGTHS:
                variant = keras_model if length == 32 else longer(keras_model, length, kept)
                for name, content in artifacts(variant, folder, data, length).items():
                    run = runner(name, content, args.threads)
                    feed = {
                        k: v[:1]
                        for k, v in encode(str(data["tokenizer"]), ["turn on the lights"], length).items()
                    }
                    row = rows.setdefault((label, name), {"params": parameter_count(keras_model)})
                    row[f"ms{length}"] = median_ms(lambda run=run, feed=feed: run(feed), args.runs)
                    if length == 32:
                        row["size"] = len(content)
                        row["top1"], row["f1"] = scores(run, data)
    print_table(rows, args)


def print_table(rows: dict[tuple[str, str], dict[str, Any]], args: argparse.Namespace) -> None:
    base = rows[("unpruned", "onnx fp32")]
    print(f"\nbatch 1, {args.threads} threads, median of {args.runs}; ratios: unpruned fp32 ONNX time / this")
    print(f"{'model':<9} {'artifact':<17} {'params':>9} {'size KB':>8} {'ms @32':>7} {'×':>5} "
          f"{'ms @128':>8} {'×':>5} {'top-1':>6} {'macro-F1':>8}")
    for (label, name), row in rows.items():
        if "ms32" not in row or "ms128" not in row:
            continue
        print(f"{label:<9} {name:<17} {row['params']:>9,} {row['size'] / 1024:>8.0f} {row['ms32']:>7.3f} "
              f"{base['ms32'] / row['ms32']:>5.2f} {row['ms128']:>8.3f} {base['ms128'] / row['ms128']:>5.2f} "
              f"{row['top1']:>6.1f} {row['f1']:>8.1f}")


if __name__ == "__main__":
    main()
