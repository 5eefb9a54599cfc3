"""What ``Model.load(..., isolate=True)`` costs per call over the same model in process.

    python benchmarks/isolation.py [--runs 300]

The digits CNN (int8 TFLite) and MobileNetV2 (int8 TFLite, 96x96), batch 1: p50 latency of
``predict`` in process and isolated (the engine in a child process; each call crosses a pipe
as .npz bytes both ways), timed in alternation in one run, and the load times.
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
from runtime_overhead import build  # noqa: E402
from store_load import median_ms  # noqa: E402


def measure(bundle: Path, runs: int) -> dict[str, float]:
    from edgekit.runtime import Model

    started = time.perf_counter()
    here = Model.load(bundle, allow_unsigned=True)
    load_here = time.perf_counter() - started
    started = time.perf_counter()
    isolated = Model.load(bundle, allow_unsigned=True, isolate=True)
    load_isolated = time.perf_counter() - started
    spec = here.info.inputs[0]
    x = np.random.default_rng(0).random((1, *spec.shape[1:]), dtype=np.float32)
    assert np.array_equal(here.predict(x), isolated.predict(x))
    rounds = [(1000 * median_ms(lambda: here.predict(x), runs // 10),
               1000 * median_ms(lambda: isolated.predict(x), runs // 10)) for _ in range(10)]  # fmt: skip
    isolated.close()
    return {
        "in_process_us": statistics.median(r[0] for r in rounds),
        "isolated_us": statistics.median(r[1] for r in rounds),
        "load_in_process_s": load_here,
        "load_isolated_s": load_isolated,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{'model':<14}{'in process':>12}{'isolated':>12}{'added':>10}{'ratio':>8}{'load':>16}")
        for name, make in (("digits", make_digits), ("mobilenetv2", make_mobilenetv2)):
            (folder / name).mkdir()
            paths = make(folder / name)
            result = measure(build(name, paths, folder, "tflite", "int8"), args.runs)
            added = result["isolated_us"] - result["in_process_us"]
            print(
                f"{name:<14}{result['in_process_us']:>10.1f}µs{result['isolated_us']:>10.1f}µs"
                f"{added:>8.1f}µs{result['isolated_us'] / result['in_process_us']:>7.2f}x"
                f"{result['load_in_process_s']:>7.2f}s/{result['load_isolated_s']:.2f}s"
            )


if __name__ == "__main__":
    main()
