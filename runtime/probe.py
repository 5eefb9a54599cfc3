"""Measure what one artifact costs on this host, in a fresh process.

Run as ``python -m edgekit.runtime.probe FORMAT MODULE [FEED.npz] < artifact``: MODULE is
where FORMAT's backend is defined (imported first, so a backend registered outside edgekit
is found too), FEED holds one call's inputs by name (default: zeros, dynamic dims as 1). It
prints JSON with the peak resident memory that loading and invoking the artifact added to
the process.
A child process keeps the parent's heap (TensorFlow, data) out of the number.

On Linux the kernel's high-water mark (VmHWM) is reset after the imports by writing 5
to /proc/self/clear_refs, so the peak covers exactly the model bytes, the interpreter,
its tensor arena and one invoke. Elsewhere the growth of ru_maxrss is the fallback,
which undercounts what fits in memory the imports already touched.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
from pathlib import Path

import numpy as np

from edgekit.core.memory import status_kib


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return status_kib("VmHWM") is not None


def _max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux, bytes on macOS


def main() -> None:
    from edgekit.runtime.backends import backend_for, zeros_feed

    importlib.import_module(sys.argv[2])
    backend_class = backend_for(sys.argv[1])
    backend_class.import_engine()
    np.zeros(1, dtype=np.float32)  # numpy's first allocation, out of the measurement
    precise = _reset_peak()
    baseline = status_kib("VmRSS") * 1024 if precise else _max_rss_bytes()  # type: ignore[operator]
    backend = backend_class(sys.stdin.buffer.read())
    if len(sys.argv) > 3:
        with np.load(sys.argv[3], allow_pickle=False) as archive:
            feed = {name: archive[name] for name in archive.files}
    else:
        feed = zeros_feed(backend.inputs)
    backend.run(feed)
    peak = status_kib("VmHWM") * 1024 if precise else _max_rss_bytes()  # type: ignore[operator]
    print(json.dumps({"peak_bytes": max(peak - baseline, 0), "engine": backend.engine}))


if __name__ == "__main__":
    main()
