"""What each ONNX precision buys and costs in ONNX Runtime on this CPU, side by side.

    python benchmarks/onnx_quality.py [--models digits,mobilenetv2] [--threads 2] [--runs 50]

Per model (Keras → tf2onnx via edgekit) and precision: size ratio to fp32, agreement with
the float model (and top-1 for digits), and the bare ONNX Runtime CPU session's latency
ratio to fp32, batch 1, measured in the same run. Then what ``--precision auto`` chose for
the x86-gateway profile (ONNX first, CPU only, so auto measures) and why.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_quality import make_digits, make_mobilenetv2  # noqa: E402

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


def ort_latency_ms(content: bytes, threads: int, runs: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(content, sess_options=options, providers=["CPUExecutionProvider"])
    arg = session.get_inputs()[0]
    sample = {arg.name: np.zeros([d if isinstance(d, int) else 1 for d in arg.shape], np.float32)}
    for _ in range(5):
        session.run(None, sample)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, sample)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def measure(
    name: str, paths: dict[str, Path], folder: Path, threads: int, runs: int
) -> tuple[list[dict], str]:
    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.bundle import read_bundle
    from edgekit.core.profiles import load_profile

    # Random-weight MobileNetV2 has tiny top-1 margins; measure raw fidelity, no fallback.
    max_drop = None if name == "digits" else 100.0

    def run(precision: str) -> tuple[dict, bytes]:
        options = ConvertOptions(
            model=paths["model"], profile=load_profile("x86-gateway"), format="onnx", precision=precision,
            output=folder / f"{name}-{precision}.ekb", calibration=paths["calibration"],
            evaluation=paths["evaluation"], max_accuracy_drop=max_drop,
        )
        manifest, contents = read_bundle(convert(options).output)
        entry = manifest.artifacts[0]
        return entry.model_dump(mode="json"), contents[entry.path]

    rows = []
    for precision in PRECISIONS:
        entry, content = run(precision)
        accuracy = entry["metrics"]["accuracy"]
        rows.append({
            "model": name, "precision": precision, "bytes": len(content), "agreement": accuracy["agreement"],
            "metric": accuracy["metric"], "float": accuracy["float_model"], "artifact": accuracy["artifact"],
            "latency_ms": ort_latency_ms(content, threads, runs),
            "float_nodes": len((entry["quantization"] or {}).get("float_nodes", [])),
        })
        print(f"  measured {name} onnx {precision}", file=sys.stderr, flush=True)
    auto, _ = run("auto")
    selection = auto["selection"]
    timings = ", ".join(f"{c['precision']} {c['host_latency_ms']:.3f} ms" for c in selection["candidates"])
    return rows, f"{name}: auto chose **{auto['precision']}**: {selection['reason']} ({timings})"


def print_table(rows: list[dict]) -> None:
    print("| model | precision | size | size vs fp32 | agreement with float | top-1 | ORT latency "
          "| latency vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        fp32 = next(r for r in rows if r["model"] == row["model"] and r["precision"] == "fp32")
        top1 = f"{row['float']:.1f}% → {row['artifact']:.1f}%" if row["metric"] == "top1" else "-"
        print(
            f"| {row['model']} | {row['precision']} | {row['bytes'] / 1024:,.0f} KB | "
            f"{row['bytes'] / fp32['bytes']:.2f}× | {row['agreement']:.1f}% | {top1} | "
            f"{row['latency_ms']:.3f} ms | {row['latency_ms'] / fp32['latency_ms']:.2f}× |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mobilenetv2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    makers = {"digits": make_digits, "mobilenetv2": make_mobilenetv2}
    rows, choices = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            model_rows, choice = measure(name, makers[name](folder), folder, args.threads, args.runs)
            rows += model_rows
            choices.append(choice)
    print_table(rows)
    print()
    for choice in choices:
        print(f"- {choice}")


if __name__ == "__main__":
    main()
