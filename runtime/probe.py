"""Measure what one artifact costs on this host, in a fresh process.

Run as ``python -m edgekit.runtime.probe FORMAT < artifact``. It prints JSON with the
peak resident memory that loading and invoking the artifact added to the process.
Measuring in a child process keeps the parent's heap (TensorFlow, data) out of it.
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np


def _peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux and bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def main() -> None:
    from edgekit.runtime.backends import backend_for

    backend_class = backend_for(sys.argv[1])
    backend_class.import_engine()
    baseline = _peak_rss_bytes()
    content = sys.stdin.buffer.read()
    backend = backend_class(content)
    info = backend.inputs[0]
    shape = tuple(1 if d is None else d for d in info.shape)
    backend.run(np.zeros(shape, dtype=np.float32))
    print(json.dumps({"peak_bytes": _peak_rss_bytes() - baseline, "engine": backend.engine}))


if __name__ == "__main__":
    main()
