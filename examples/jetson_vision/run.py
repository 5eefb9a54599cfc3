"""Jetson vision: a MobileNetV2 classifier converted for a Jetson Orin Nano, as TensorRT
wants it: ONNX with symmetric int8 QDQ, and fp16.

    python examples/jetson_vision/run.py [--quick] [--out build/jetson_vision]

The classifier is Keras' MobileNetV2 architecture (width 0.35, 32x32 RGB), trained here
from scratch on scikit-learn's digits scaled up to camera frames, so nothing is
downloaded; your own model (an ImageNet-pretrained MobileNetV2, say) takes the same
commands. Both bundles are signed, installed and run with the Jetson profile's provider
order, TensorRT, then CUDA, then CPU; on a machine without an NVIDIA GPU the runtime
falls back to the CPU and says so in one line. README.md has the steps on a real Jetson.
Exit code 1 if a check fails.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Checks, Machines, arguments, heading, run  # noqa: E402

from edgekit.core.bundle import read_bundle  # noqa: E402
from edgekit.views.console import quiet_native_output  # noqa: E402

TARGET = "jetson-orin-nano"
SIDE = 32  # MobileNetV2's smallest input


def frames() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as 32x32 RGB frames in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    scale = SIDE // digits.images.shape[1]
    images = np.kron(digits.images / 16.0, np.ones((scale, scale))).astype(np.float32)
    return np.repeat(images[..., np.newaxis], 3, axis=-1), digits.target.astype(np.int64)


def train(x: np.ndarray, y: np.ndarray, epochs: int, save: Path) -> int:
    with quiet_native_output():
        import keras

        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(
            input_shape=(SIDE, SIDE, 3), alpha=0.35, weights=None, classes=10
        )
        for layer in model.layers:  # Keras' 0.999 needs far more steps than a short run has
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        model.compile(keras.optimizers.Adam(5e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
        model.save(save)
        return int(model.count_params())


def main() -> int:
    args = arguments(__doc__, "build/jetson_vision")
    out, checks = args.out, Checks(args.out)
    machines = Machines(out)
    epochs = 8 if args.quick else 25
    x, y = frames()
    order = np.random.default_rng(0).permutation(len(x))
    train_ix, eval_ix = order[:1400], order[1400:]

    heading(f"1. train a MobileNetV2 (width 0.35, {SIDE}x{SIDE} RGB) on digit frames, {epochs} epochs")
    parameters = train(x[train_ix], y[train_ix], epochs, out / "mobilenet_v2.keras")
    np.savez(out / "calib.npz", x=x[train_ix[:300]])
    np.savez(out / "eval.npz", x=x[eval_ix], y=y[eval_ix])
    np.save(out / "frames.npy", x[eval_ix[:4]])
    print(f"{parameters:,} parameters; {len(train_ix)} frames to train on, {len(eval_ix)} held out")

    heading(f"2. convert for {TARGET}: ONNX int8 (symmetric QDQ for TensorRT) and fp16, signed")
    key = out / "operator" / "publisher.key"
    machines.edgekit("keys", "init", "--publisher", "-o", key)
    bundles = {}
    for version, precision in enumerate(("int8", "fp16"), start=1):
        bundles[precision] = out / f"vision-{precision}.ekb"
        machines.edgekit(
            "convert", out / "mobilenet_v2.keras", "--target", TARGET, "--precision", precision,
            "--calibration", out / "calib.npz", "--eval", out / "eval.npz", "--name", "vision",
            "--model-version", str(version), "--sign-key", key, "-o", bundles[precision],
        )
    _artifact_checks(checks, bundles)

    heading("3. the device: trust the publisher, install, run with the Jetson's provider order")
    machines.device("keys", "init", "--device")
    machines.device("trust", "add", key.with_suffix(".pub"))
    machines.device("install", bundles["int8"])
    machines.device("run", "vision", "--input", out / "frames.npy", "--top-k", "1")
    print(f"(labels of those frames: {' '.join(map(str, y[eval_ix[:4]]))})")

    heading("4. accuracy of both bundles through the runtime, and the provider it settled on")
    with machines.on_device():
        for precision, bundle in bundles.items():
            _runtime_checks(checks, precision, bundle, x[eval_ix], y[eval_ix])
    return checks.finish()


def _artifact_checks(checks: Checks, bundles: dict[str, Path]) -> None:
    """What TensorRT needs: zero zero-points on every int8 QDQ pair; float16 weights in fp16."""
    import onnx
    from onnx import numpy_helper

    for precision, bundle in bundles.items():
        manifest, contents = read_bundle(bundle)
        entry = manifest.artifacts[0]
        graph = onnx.load_from_string(contents[entry.path]).graph
        accuracy = entry.metrics.accuracy
        assert accuracy is not None
        checks.numbers[f"{precision}_size_kb"] = round(entry.size / 1024, 1)
        checks.numbers[f"{precision}_gate_drop_pp"] = accuracy.drop
        checks.check(
            f"{precision} passes the profile's accuracy gate",
            accuracy.gate == "passed" and accuracy.drop <= accuracy.max_drop,
            f"{accuracy.float_model:.1f}% float -> {accuracy.artifact:.1f}% (max {accuracy.max_drop:g} pp)",
        )
        if precision == "int8":
            zero_points = [
                numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("zero_point")
            ]
            quantize = sum(node.op_type == "QuantizeLinear" for node in graph.node)
            symmetric = bool(zero_points) and not any(zp.any() for zp in zero_points)
            checks.check(
                "int8 is symmetric QDQ, as TensorRT wants",
                symmetric and quantize > 0 and entry.quantization is not None
                and entry.quantization.target == "tensorrt",
                f"{quantize} QuantizeLinear nodes, {len(zero_points)} zero points, all 0",
            )
        else:
            halves = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
            checks.check("fp16 weights are float16", halves > 0, f"{halves} float16 initializers")


def _runtime_checks(checks: Checks, precision: str, bundle: Path, x: np.ndarray, y: np.ndarray) -> None:
    from edgekit.runtime import Model

    said: list[str] = []
    handler = _Collect(said)
    logging.getLogger("edgekit").addHandler(handler)
    try:
        with quiet_native_output():
            model = Model.load(bundle)
    finally:
        logging.getLogger("edgekit").removeHandler(handler)
    info = model.info
    top1 = float(np.mean(np.argmax(model.predict(x), axis=1) == y))
    checks.numbers[f"{precision}_runtime_top1"] = top1
    print(f"{precision}: {info.engine}, top-1 {top1:.1%}")
    for line in said:
        print(f"  log: {line}")
    checks.check(f"{precision} reads digits", top1 >= 0.7, f"top-1 {top1:.1%} >= 70%")
    on_gpu = info.provider != "CPUExecutionProvider"
    expected = on_gpu or (
        any("TensorrtExecutionProvider" in f for f in info.fallbacks)
        and any("CUDAExecutionProvider" in f for f in info.fallbacks)
        and any("running on CPUExecutionProvider" in line for line in said)
    )
    checks.check(
        f"{precision} runs on the first provider that works",
        expected,
        f"{info.provider}" + ("" if on_gpu else f", after: {'; '.join(info.fallbacks)}"),
    )


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


if __name__ == "__main__":
    run(main)
