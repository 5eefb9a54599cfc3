"""Any v2 client works: NVIDIA's Triton client (tritonclient, over HTTP with binary and JSON
tensors, and over gRPC) calls ``edgekit serve`` and gets what ``Model.predict`` gives.

tritonclient pins protobuf<7 and ml-dtypes<=0.5.4, which TensorFlow's do not meet, so it
lives in a virtualenv of its own under ``build/test-clients/``, made from the package
registry on first use and reused after; without a reachable registry the test skips,
saying why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_graphs
import pytest
from serve_helpers import serving

from edgekit.convert import ConvertOptions, convert
from edgekit.core.profiles import load_profile
from edgekit.runtime import Model

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "build" / "test-clients" / "triton-2.73.0"
PACKAGES = ("tritonclient[http,grpc]==2.73.0", "numpy")


def triton_python() -> Path:
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--clear", str(VENV)], capture_output=True, text=True
    )
    install = made.returncode == 0 and subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *PACKAGES],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not install or install.returncode != 0:
        problem = (install.stderr if install else made.stderr).strip().splitlines()[-1:]
        subprocess.run(["rm", "-rf", str(VENV)], check=False)
        pytest.skip(f"cannot install {PACKAGES[0]}: {problem} (is the package registry reachable?)")
    return python


@pytest.mark.slow
def test_the_triton_client_calls_edgekit_serve(tmp_path: Path, publisher: Path) -> None:
    python = triton_python()
    fusion = onnx_graphs.save(onnx_graphs.image_and_ids(), tmp_path / "fusion.onnx")
    bundle = convert(ConvertOptions(
        model=fusion, profile=load_profile("x86-gateway"), output=tmp_path / "fusion.ekb", format="onnx",
        precision="fp32", sign_key=publisher,
    )).output
    inputs = onnx_graphs.image_and_ids_data(3, seed=9)
    np.savez(tmp_path / "case.npz", **inputs)
    with Model.load(bundle) as model:
        expected = model.predict(inputs)
    assert isinstance(expected, dict)
    with serving(str(bundle), log=tmp_path / "serve.log") as server:
        rest = server.rest.removeprefix("http://")
        check = ROOT / "tests" / "clients" / "triton_check.py"
        run = subprocess.run([str(python), str(check), rest, server.grpc, str(tmp_path / "case.npz"),
                              str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as answers:
        assert sorted(answers) == sorted(f"{way}-{name}" for way in ("http-binary", "http-json", "grpc-binary")
                                         for name in ("boxes", "scores"))
        for key in answers:
            np.testing.assert_allclose(answers[key], expected[key.rsplit("-", 1)[1]], rtol=1e-6, atol=1e-6)
