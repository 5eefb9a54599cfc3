"""The CLI as a real process: what a user's terminal shows, and a kill -9 mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.core.bundle import read_bundle

NOISE = ("I0000", "W0000", "WARNING: All log messages", "oneDNN", "cuda", "Traceback", "absl")


def _edgekit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_convert_output_is_free_of_tensorflow_noise(digits_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "d.ekb"
    proc = _edgekit("convert", str(digits_files["model"]), "-t", "raspberry-pi-5", "-p", "int8",
                    "-c", str(digits_files["calibration"]), "--eval", str(digits_files["evaluation"]),
                    "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    for marker in NOISE:
        assert marker not in proc.stderr + proc.stdout, marker
    assert f"wrote {out}" in proc.stdout.replace("\n", "")
    assert read_bundle(out)[0].artifacts[0].precision == "int8"


@pytest.mark.slow
def test_user_error_is_one_line_and_debug_shows_the_traceback(
    digits_files: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "few.npz"
    import numpy as np

    np.savez(bad, x=np.zeros((3, 8, 8, 1), np.float32))
    args = ("convert", str(digits_files["model"]), "-t", "raspberry-pi-5", "-p", "int8", "-c", str(bad))
    proc = _edgekit(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: calibration data") and "only 3 samples" in proc.stderr
    debug = _edgekit("--debug", *args)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


_WRITER = """
import sys
from pathlib import Path
from edgekit.core.bundle import write_bundle
sys.path.insert(0, {tests!r})
from test_bundle import _manifest
content = bytes(range(256)) * (1 << 20)  # 256 MiB: slow to deflate
print("writing", flush=True)
write_bundle(Path({target!r}), _manifest(content), {{"model.int8.tflite": content}})
"""


def test_kill_9_mid_write_keeps_the_old_bundle(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_bundle import CONTENT, _manifest

    from edgekit.core.bundle import write_bundle

    target = tmp_path / "m.ekb"
    write_bundle(target, _manifest(), {"model.int8.tflite": CONTENT})
    script = _WRITER.format(tests=str(Path(__file__).parent), target=str(target))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    manifest, contents = read_bundle(target)  # still the complete old bundle
    assert contents["model.int8.tflite"] == CONTENT


_FULL_DISK = """
import os, resource, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_bundle import _manifest
from edgekit.core.bundle import write_bundle
from edgekit.core.errors import BundleError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
content = os.urandom(256 * 1024)  # incompressible, so the zip outgrows the limit
try:
    write_bundle(Path({target!r}), _manifest(content), {{"model.int8.tflite": content}})
except BundleError as exc:
    print(exc)
"""


def test_full_disk_is_a_clear_error_and_keeps_the_old_bundle(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_bundle import CONTENT, _manifest

    from edgekit.core.bundle import write_bundle

    target = tmp_path / "m.ekb"
    write_bundle(target, _manifest(), {"model.int8.tflite": CONTENT})
    script = _FULL_DISK.format(tests=str(Path(__file__).parent), target=str(target))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"cannot write {target}: File too large; free some disk space")
    assert read_bundle(target)[1]["model.int8.tflite"] == CONTENT
    assert [p.name for p in tmp_path.iterdir()] == ["m.ekb"]  # the temp file is gone


@pytest.mark.slow
def test_the_readme_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "quickstart" / "run.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--epochs", "8"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "installed digits v1 (signed by" in proc.stdout
    assert "tflite int8" in proc.stdout and "hashes verified" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_run_prints_edgekit_warnings_but_no_engine_chatter(
    converted, onnx_converted, digits_eval, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    x, _ = digits_eval
    np.save(tmp_path / "x.npy", x[:2])
    tflite = _edgekit("run", str(converted("int8").output), "-i", str(tmp_path / "x.npy"), "--top-k", "1")
    assert (
        tflite.returncode == 0 and tflite.stderr == ""
    )  # no "INFO: Created TensorFlow Lite XNNPACK delegate"
    gpu = _edgekit(
        "run", str(onnx_converted("int8", profile="jetson-orin-nano").output), "-i", str(tmp_path / "x.npy")
    )
    assert gpu.returncode == 0
    assert gpu.stderr.splitlines() == [
        "edgekit: running on CPUExecutionProvider: TensorrtExecutionProvider is not in this onnxruntime build; "
        "CUDAExecutionProvider is not in this onnxruntime build"
    ]
