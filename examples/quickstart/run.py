"""Quickstart: train a digits CNN, convert it to int8 TFLite for a Raspberry Pi 5, sign it,
inspect it, then play the device: trust the publisher, install the bundle into an encrypted
store and run it by name.

    python examples/quickstart/run.py [--out build/quickstart] [--target raspberry-pi-5]

Each edgekit step runs as the CLI command you would type, printed before it runs. The
simulated device keeps its state in OUT/device (EDGEKIT_HOME), made fresh on every run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits import train_digits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/quickstart"))
    parser.add_argument("--target", default="raspberry-pi-5")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    print(f"training a digits CNN on scikit-learn's digits ({args.epochs} epochs) ...", flush=True)
    paths = train_digits(args.out, epochs=args.epochs)
    bundle, key, sample = args.out / "digits.ekb", args.out / "publisher.key", args.out / "sample.npy"
    np.save(sample, np.load(paths["evaluation"])["x"][:3])
    device = args.out / "device"
    shutil.rmtree(device, ignore_errors=True)
    on_device = {**os.environ, "EDGEKIT_HOME": str(device)}

    steps: list[tuple[list[str], dict[str, str] | None]] = [(["edgekit", "targets"], None)]
    if not key.exists():
        steps.append((["edgekit", "keys", "init", "--publisher", "-o", str(key)], None))
    steps += [
        ([
            "edgekit", "convert", str(paths["model"]), "--target", args.target, "--precision", "int8",
            "--calibration", str(paths["calibration"]), "--eval", str(paths["evaluation"]),
            "--sign-key", str(key), "-o", str(bundle),
        ], None),
        (["edgekit", "inspect", str(bundle)], None),
        (["edgekit", "keys", "init", "--device"], on_device),
        (["edgekit", "trust", "add", str(key.with_suffix(".pub"))], on_device),
        (["edgekit", "install", str(bundle)], on_device),
        (["edgekit", "run", "digits", "--input", str(sample), "--top-k", "1"], on_device),
    ]  # fmt: skip
    for command, env in steps:
        prefix = f"EDGEKIT_HOME={device} " if env else ""
        print(f"\n$ {prefix}{shlex.join(command)}", flush=True)
        subprocess.run(command, check=True, env=env)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
