"""ONNX int8 of real PaddleOCR models: edgekit convert beside ONNX Runtime's own tools.

    python benchmarks/onnx_int8_memory.py [--samples 24]

For PP-OCRv4's text recognizer and detector (the rapidocr-onnxruntime 1.4.4 wheel, fetched
once into build/test-models/), on rendered text images, each run in a fresh process:
- bare: ``quant_pre_process`` then ``quantize_static`` (QDQ, per-channel int8, minmax, one
  sample a call), what a user would write by hand;
- edgekit: ``edgekit convert --format onnx --precision int8 --allow-accuracy-drop`` on the same
  file and data (load, checks, float evaluation, pre-processing, quantization, the gate, any
  fallback rounds, the memory probe, the bundle).
It prints wall time and peak resident memory (the process's own high-water mark) of each,
and edgekit's as a ratio to bare.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MODELS = {"PP-OCRv4 rec": ("ch_PP-OCRv4_rec_infer.onnx", (48, 320)),
          "PP-OCRv4 det": ("ch_PP-OCRv4_det_infer.onnx", (320, 320))}  # fmt: skip

BARE = """
import sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
model, data, out = sys.argv[1:4]
x = np.load(data)["x"]
class Reader(CalibrationDataReader):
    def __init__(self): self.rows = iter(x[i:i + 1] for i in range(len(x)))
    def get_next(self):
        row = next(self.rows, None)
        return None if row is None else {"x": row}
quant_pre_process(model, out + ".pre.onnx", skip_symbolic_shape=True)
quantize_static(out + ".pre.onnx", out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
"""

EDGEKIT = """
import sys
from edgekit.cli import main
main(sys.argv[1:], standalone_mode=False)
"""

PEAK = "\nprint([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"


def measure(code: str, args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident GB of ``code`` run with ``args`` in a fresh process."""
    started = time.perf_counter()
    command = [sys.executable, "-c", code + PEAK, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, int(done.stdout.strip().splitlines()[-1]) / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=24)
    samples = parser.parse_args().samples
    from third_party import text_images, third_party_model

    columns = ("bare s", "bare GB", "edgekit s", "edgekit GB", "time x", "memory x")
    print(f"{'model':<14} " + " ".join(f"{c:>10}" for c in columns))
    for name, (file, (height, width)) in MODELS.items():
        model = str(third_party_model(file))
        with tempfile.TemporaryDirectory() as tmp:
            data = f"{tmp}/data.npz"
            np.savez(data, x=text_images(samples, height, width))
            bare = measure(BARE, [model, data, f"{tmp}/bare.onnx"])
            edgekit = measure(EDGEKIT, ["convert", model, "--target", "x86-gateway", "--format", "onnx",
                                        "--precision", "int8", "--calibration", data, "--eval", data,
                                        "--allow-accuracy-drop", "-o", f"{tmp}/m.ekb"])  # fmt: skip
        values = (bare[0], bare[1], edgekit[0], edgekit[1], edgekit[0] / bare[0], edgekit[1] / bare[1])
        print(f"{name:<14} " + " ".join(f"{v:>10.2f}" for v in values), flush=True)


if __name__ == "__main__":
    main()
