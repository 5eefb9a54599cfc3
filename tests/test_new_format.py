"""A new artifact format touches three places: its name in ``edgekit/core/formats.py``, a
converter and a backend (tests/dummy_format.py holds all three). Everything else reaches
formats through the registries: the CLI's choices, planning, the accuracy gate, the memory
probe in its own process, the manifest, loading on the device and the serve platform name.

It runs in a child process, so the third format stays out of this session's registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from onnx_graphs import conv_classifier, save

TESTS = Path(__file__).resolve().parent

SCRIPT = """
import json, sys
import dummy_format
import numpy as np
from edgekit.cli import main
from edgekit.runtime import Model
from edgekit.runtime.backends import backend_for
from edgekit.core.bundle import read_manifest

model, data, bundle = sys.argv[1:4]
try:
    main(["convert", model, "--target", "x86-gateway", "--format", "dummy", "--precision", "fp32",
          "--eval", data, "-o", bundle, "--json"])
except SystemExit as done:
    assert done.code in (0, None), done.code
entry = read_manifest(bundle).artifacts[0]
x = np.load(data)["x"][:4]
with Model.load(bundle, allow_unsigned=True) as loaded:
    out = loaded.predict(x)
    engine = loaded.info.engine
print(json.dumps({"format": entry.format, "path": entry.path, "peak": entry.metrics.peak_memory_bytes,
                  "gate": entry.metrics.accuracy.gate, "cosine": entry.metrics.accuracy.cosine,
                  "engine": engine, "platform": backend_for("dummy").platform, "out": np.asarray(out).tolist()}))
"""


def test_a_third_format_converts_loads_and_runs_through_the_registries(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = conv_classifier(opset=17)
    path = save(model, tmp_path / "cnn.onnx")
    x = np.random.default_rng(0).normal(0, 1, (24, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(tmp_path / "eval.npz"), str(tmp_path / "d.ekb")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["format"] == "dummy" and found["path"] == "model.fp32.dummy"
    assert found["engine"].startswith("dummy 1 over onnxruntime") and found["platform"] == "dummy_v1"
    assert found["peak"] > 0  # measured in a child that imported the backend's module
    assert found["gate"] == "passed" and found["cosine"] > 0.9999
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"image": x[i : i + 1]})[0] for i in range(4)])
    np.testing.assert_allclose(np.asarray(found["out"]), expected, rtol=1e-5, atol=1e-6)
