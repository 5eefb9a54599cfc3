"""Why ``Model.predict`` shares one TFLite interpreter behind a lock across threads.

    python benchmarks/runtime_threads.py [--calls 200] [--threads 8]

TFLite interpreters are not thread-safe, so a model used from several threads needs either
one interpreter guarded by a lock, or one interpreter per thread. This script measures
both on the digits CNN (int8 and fp32): throughput of N threads x M calls, and the peak
memory each design adds, measured in a fresh process (Linux).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_quality import make_digits  # noqa: E402
from runtime_overhead import build  # noqa: E402

_MEMORY_PROBE = """
import sys, numpy as np
from pathlib import Path
from edgekit.runtime import Model
from edgekit.runtime.backends.tflite import import_interpreter
import_interpreter()
x = np.zeros((1, 8, 8, 1), np.float32)
Path("/proc/self/clear_refs").write_text("5")
status = lambda key: int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key)))
base = status("VmRSS:")
models = [Model.load(sys.argv[1], allow_unsigned=True) for _ in range(int(sys.argv[2]))]
for m in models:
    m.predict(x)
print((status("VmHWM:") - base) * 1024)
"""


def memory_added(bundle: Path, interpreters: int) -> int:
    """Peak memory that loading and running ``interpreters`` copies adds, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(bundle), str(interpreters)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def throughput(predicts: list, x: np.ndarray, calls: int) -> float:  # type: ignore[type-arg]
    def worker(predict) -> None:  # type: ignore[no-untyped-def]
        for _ in range(calls):
            predict(x)

    threads = [threading.Thread(target=worker, args=(p,)) for p in predicts]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(threads) * calls / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    from edgekit.runtime import Model

    print(f"| artifact | design | calls/s ({args.threads} threads) | memory added |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_digits(Path(tmp))
        for precision in ("fp32", "int8"):
            bundle = build("digits", paths, Path(tmp), "tflite", precision)
            x = np.zeros((1, 8, 8, 1), np.float32)
            shared = Model.load(bundle, allow_unsigned=True)
            own = [
                Model.load(bundle, allow_unsigned=True) for _ in range(args.threads)
            ]  # one interpreter each
            rows = (
                ("one interpreter, lock", throughput([shared.predict] * args.threads, x, args.calls),
                 memory_added(bundle, 1)),
                ("interpreter per thread", throughput([m.predict for m in own], x, args.calls),
                 memory_added(bundle, args.threads)),
            )
            for design, rate, memory in rows:
                print(f"| digits tflite {precision} | {design} | {rate:,.0f} | {memory / 2**20:.1f} MB |")


if __name__ == "__main__":
    main()
