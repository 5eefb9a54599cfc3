"""Quickstart: train a digits CNN, convert it to int8 TFLite for a Raspberry Pi 5, inspect it.

    python examples/quickstart/run.py [--out build/quickstart] [--target raspberry-pi-5]

Each edgekit step runs as the CLI command you would type, printed before it runs.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

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
    bundle = args.out / "digits.ekb"
    for command in (
        ["edgekit", "targets"],
        [
            "edgekit",
            "convert",
            str(paths["model"]),
            "--target",
            args.target,
            "--precision",
            "int8",
            "--calibration",
            str(paths["calibration"]),
            "--eval",
            str(paths["evaluation"]),
            "-o",
            str(bundle),
        ],
        ["edgekit", "inspect", str(bundle)],
    ):
        print(f"\n$ {shlex.join(command)}", flush=True)
        subprocess.run(command, check=True)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
