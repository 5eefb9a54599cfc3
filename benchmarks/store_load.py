"""Cold load from the encrypted store (verify, decrypt, load) against a plaintext file.

    python benchmarks/store_load.py [--repeats 15]

For a ~1 MB and a ~15 MB TFLite model (a dense MLP and MobileNetV2 at fp32), both built here:
the median time of ``Model.load(name)`` (state MAC, unwrap, AES-256-GCM decrypt of every
chunk, sha256 of the artifact, interpreter from bytes) against reading the same plaintext
.tflite from a file and building the bare interpreter from it, in the same run. Target: at
most 1.10x + 5 ms. Then AES-256-GCM throughput through ``cryptography`` on 1 MiB chunks,
next to ``openssl speed -evp aes-256-gcm`` on this machine as the practical limit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert_quality import make_mobilenetv2  # noqa: E402


def make_mlp(folder: Path) -> dict[str, Path]:
    import keras

    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512), keras.layers.Dense(256),
                              keras.layers.Dense(10)])
    path = folder / "mlp.keras"
    model.save(path)
    return {"model": path}


def median_ms(action, repeats: int) -> float:  # type: ignore[no-untyped-def]
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def openssl_mb_s() -> float | None:
    try:
        out = subprocess.run(["openssl", "speed", "-evp", "aes-256-gcm", "-seconds", "1"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    row = next((line for line in out.splitlines() if line.startswith("AES-256-GCM")), None)
    return float(row.split()[-1].rstrip("k")) / 1000 if row else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.bundle import read_bundle
    from edgekit.core.profiles import load_profile
    from edgekit.runtime import Model
    from edgekit.runtime.backends.tflite import import_interpreter
    from edgekit.runtime.keys import create_device_key
    from edgekit.runtime.store import Store

    interpreter_class, _ = import_interpreter()
    print(
        "| model | artifact | plaintext file + interpreter | store: verify, decrypt, load | ratio | target |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGEKIT_HOME"] = str(Path(tmp) / "home")
        create_device_key()
        for name, maker in (("mlp", make_mlp), ("mobilenetv2", make_mobilenetv2)):
            folder = Path(tmp) / name
            folder.mkdir()
            bundle = convert(ConvertOptions(model=maker(folder)["model"], profile=load_profile("x86-gateway"),
                                            format="tflite", precision="fp32", name=name,
                                            output=folder / f"{name}.ekb")).output
            manifest, contents = read_bundle(bundle)
            plain = folder / "model.tflite"
            plain.write_bytes(contents[manifest.artifacts[0].path])
            Store().install(bundle, allow_unsigned=True)

            def from_file(path: Path = plain) -> None:
                interpreter = interpreter_class(model_content=path.read_bytes())
                interpreter.allocate_tensors()

            from_file()
            Model.load(name)  # warm both paths (imports, page cache)
            file_ms = median_ms(from_file, args.repeats)
            store_ms = median_ms(lambda n=name: Model.load(n), args.repeats)
            mark = "✓" if store_ms <= 1.10 * file_ms + 5 else "✗"
            size = plain.stat().st_size / 2**20
            print(f"| {name} | {size:.1f} MB | {file_ms:.1f} ms | {store_ms:.1f} ms | "
                  f"{store_ms / file_ms:.2f}× | ≤ 1.10× + 5 ms {mark} |")
    data = np.random.default_rng(0).bytes(1 << 20)
    aead, nonce = AESGCM(AESGCM.generate_key(bit_length=256)), os.urandom(12)
    sealed = aead.encrypt(nonce, data, b"aad")
    seconds = median_ms(lambda: aead.decrypt(nonce, sealed, b"aad"), 200) / 1000
    limit = openssl_mb_s()
    limit_text = f"{limit:,.0f} MB/s" if limit else "openssl not found"
    rate = len(data) / seconds / 1e6
    print(f"\nAES-256-GCM decrypt through cryptography, 1 MiB chunks: {rate:,.0f} MB/s; "
          f"openssl speed -evp aes-256-gcm (16 KiB blocks): {limit_text}")


if __name__ == "__main__":
    main()
