"""Why ``Model.predict`` shares one TFLite interpreter behind a lock across threads.

    python benchmarks/runtime_threads.py [--calls 200] [--threads 8]

TFLite interpreters are not thread-safe, so a model used from several threads needs either
one interpreter guarded by a lock, or one interpreter per thread. This script measures
both on the digits CNN (int8 and fp32): throughput of N threads x M calls, and the resident
memory each design adds, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
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


def rss_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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
            before = rss_bytes()
            shared = Model.load(bundle)
            shared.predict(x)
            shared_mem = rss_bytes() - before
            before = rss_bytes()
            own = [Model.load(bundle) for _ in range(args.threads)]  # one interpreter each
            for m in own:
                m.predict(x)
            own_mem = rss_bytes() - before
            rows = (
                (
                    "one interpreter, lock",
                    throughput([shared.predict] * args.threads, x, args.calls),
                    shared_mem,
                ),
                ("interpreter per thread", throughput([m.predict for m in own], x, args.calls), own_mem),
            )
            for design, rate, memory in rows:
                print(f"| digits tflite {precision} | {design} | {rate:,.0f} | {memory / 2**20:.1f} MB |")
    print(
        f"\n(peak RSS of the whole run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"
    )


if __name__ == "__main__":
    main()
