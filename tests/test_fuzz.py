"""Property-based fuzzing (Hypothesis) of everything that parses bytes from outside: the
bundle reader, the store's file formats, the telemetry and sample parsers. Each input must
end in a typed error or a valid result, never another exception. A short budget runs by
default, 300 with --runslow (see conftest.py); the memory bounds are asserted
with real zip bombs in test_hostile_bundles.py."""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from test_bundle import CONTENT, _manifest

from edgekit.core.archive import load_npz
from edgekit.core.bundle import read_bundle, write_bundle
from edgekit.core.errors import EdgekitError, StoreError
from edgekit.core.signing import Trust, create_publisher_key, load_signing_key, signature_entry
from edgekit.fleet import Collector, FleetView, Skip, parse
from edgekit.fleet.messages import SKIP_REASONS
from edgekit.runtime import sealed
from edgekit.runtime.isolated import pack, unpack
from edgekit.runtime.store_records import VersionState, read_state, state_bytes, unwrap_key, wrap_key
from edgekit.runtime.telemetry.privacy import read_sample_header

ROOT = Path(__file__).resolve().parents[1]
FOLDER = Path(tempfile.mkdtemp(prefix="edgekit-fuzz-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
KEY, _ = create_publisher_key(FOLDER / "publisher.key")
TRUST = Trust(FOLDER / "trust")
TRUST.add(KEY)
MANIFEST = _manifest()
GOOD = FOLDER / "good.ekb"
write_bundle(GOOD, MANIFEST, {MANIFEST.artifacts[0].path: CONTENT},
             signature_entry(MANIFEST.canonical_bytes(), load_signing_key(FOLDER / "publisher.key")))
GOOD_BYTES = GOOD.read_bytes()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few bytes flipped, a slice cut out or repeated, or cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "repeat", "truncate"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


def _read(data: bytes, allow_unsigned: bool) -> None:
    path = FOLDER / f"case-{os.getpid()}.ekb"
    path.write_bytes(data)
    try:
        read_bundle(path, TRUST.verifier(allow_unsigned, "case"))
    except EdgekitError:
        pass


@given(mutated(GOOD_BYTES), st.booleans())
def test_bundle_reader_on_mutated_bundles(data: bytes, allow_unsigned: bool) -> None:
    _read(data, allow_unsigned)


@given(json_values, st.sampled_from(["manifest.json", "manifest.sig", "model.int8.tflite"]))
def test_bundle_reader_on_structures(value: Any, entry: str) -> None:
    """Any JSON where the manifest, the signature or an artifact should be."""
    with zipfile.ZipFile(GOOD) as old:
        entries = {name: old.read(name) for name in old.namelist()}
    entries[entry] = json.dumps(value).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as new:
        for name, data in entries.items():
            new.writestr(name, data)
    _read(buffer.getvalue(), allow_unsigned=True)


DEVICE_KEY = os.urandom(32)
SEALED = sealed.seal(os.urandom(3000), DEVICE_KEY, "m", 1, "f")


def _key_for(seal: str, what: str) -> bytes:
    return DEVICE_KEY


@given(st.one_of(mutated(state_bytes("m", VersionState(active=1, highest=2), DEVICE_KEY)),
                 json_values.map(lambda v: json.dumps(v).encode())))
def test_state_records(data: bytes) -> None:
    try:
        state = read_state(data, "m", _key_for)
    except EdgekitError:
        return
    assert isinstance(state, VersionState)


@given(
    st.one_of(
        mutated(wrap_key(b"k" * 32, "m", 1, DEVICE_KEY)), json_values.map(lambda v: json.dumps(v).encode())
    )
)
def test_data_key_records(data: bytes) -> None:
    try:
        assert unwrap_key(data, "m", 1, _key_for) == b"k" * 32
    except EdgekitError:
        pass


@given(mutated(SEALED))
def test_sealed_files(data: bytes) -> None:
    path = FOLDER / f"sealed-{os.getpid()}.enc"
    path.write_bytes(data)
    try:
        sealed.unseal(path, DEVICE_KEY, "m", 1, "f")
    except StoreError:
        return
    assert data == SEALED  # nothing else authenticates


def test_every_header_byte_of_a_sealed_file_is_authenticated() -> None:
    """What hypothesis found: a changed chunk size (header byte 8) that still parsed gave the
    same plaintext. Every single-byte change of the header now fails."""
    header = sealed._HEADER.size
    for index in range(header):
        path = FOLDER / f"header-{os.getpid()}.enc"
        path.write_bytes(SEALED[:index] + bytes([SEALED[index] ^ 0x01]) + SEALED[index + 1 :])
        with pytest.raises(StoreError):
            sealed.unseal(path, DEVICE_KEY, "m", 1, "f")
    path.write_bytes(sealed.LEGACY_MAGIC + SEALED[len(sealed.MAGIC) :])  # a downgrade to the old format
    with pytest.raises(StoreError, match="fails authentication"):
        sealed.unseal(path, DEVICE_KEY, "m", 1, "f")


def test_files_of_the_first_sealed_format_are_still_read() -> None:
    plain, aad = os.urandom(100), b"edgekit/v1|m|1|f|0|1|100"
    nonce = os.urandom(12)
    body = AESGCM(DEVICE_KEY).encrypt(nonce, plain, aad)
    path = FOLDER / f"legacy-{os.getpid()}.enc"
    path.write_bytes(sealed._HEADER.pack(sealed.LEGACY_MAGIC, sealed.CHUNK_BYTES, 1, 100) + nonce + body)
    assert sealed.unseal(path, DEVICE_KEY, "m", 1, "f") == plain


NODE = "ef" * 16
REPORT = {
    "v": 1, "kind": "report", "node": NODE, "epoch": 1, "seq": 1, "start": 0.0, "end": 0.0,
    "model": {"name": "m", "version": 1, "format": "onnx", "precision": "fp32"},
    "inferences": 4, "calls": 4, "errors": 0, "latency_ms": [4] + [0] * 15, "classes": None, "confidence": None,
    "feature_bins": None, "inputs": None, "drift": {"input_psi": 0.1, "output_psi": None, "score": 0.1},
    "samples": 0, "dropped": 0, "privacy": {"k": 5, "suppressed_buckets": 0},
}  # fmt: skip
extreme = st.one_of(
    json_values,
    st.sampled_from([10**30, -1, 2**62, -1e308, 1e308, float("inf"), float("nan"), "", [], {}]),
)


@given(
    st.dictionaries(st.sampled_from(sorted(REPORT)), extreme, max_size=4),
    st.sampled_from(["report", "sample"]),
)
def test_telemetry_reports_with_replaced_fields(fields: dict[str, Any], kind: str) -> None:
    now = time.time()
    payload = json.dumps({**REPORT, "start": now - 1, "end": now, **fields}).encode()
    if kind == "sample":
        payload = b"EKS1" + len(payload).to_bytes(2, "big") + payload + b"body"
    _every_message_ends(f"edgekit/f7/{NODE}/{kind}", payload)


@given(st.binary(max_size=2048), st.sampled_from(["report", "sample", "status"]))
def test_telemetry_raw_bytes(payload: bytes, kind: str) -> None:
    _every_message_ends(f"edgekit/f7/{NODE}/{kind}", payload)
    try:
        read_sample_header(payload)
    except ValueError:
        pass


COLLECTOR = Collector("f7", FOLDER / "collected", x25519.X25519PrivateKey.generate())


def _every_message_ends(topic: str, payload: bytes) -> None:
    try:
        parse("f7", topic, payload)
    except Skip as skip:
        assert skip.reason in SKIP_REASONS
    outcome = COLLECTOR.handle(topic, payload)
    assert outcome in {"report", "sample", "status", *SKIP_REASONS}
    event = FleetView("f7").handle(topic, payload)
    json.dumps(event, allow_nan=False)


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@given(mutated(_npz(x=np.arange(12, dtype=np.float32).reshape(3, 4), pred=np.arange(3))))
def test_sample_arrays(data: bytes) -> None:
    try:
        arrays = load_npz(data, 1 << 20, "sample")
    except ValueError:
        return
    assert all(isinstance(a, np.ndarray) for a in arrays.values())


@pytest.mark.slow
def test_coverage_guided_fuzzing_of_the_bundle_reader(tmp_path: Path) -> None:
    """atheris (libFuzzer) on the bundle reader for a fixed time, its address space capped
    at 2 GB inside the harness."""
    pytest.importorskip("atheris")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_bundle.py"), "-max_total_time=30", "-rss_limit_mb=0",
         "-timeout=10", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done" in done.stderr, done.stderr[-3000:]


def test_what_the_coverage_guided_fuzzer_found_stays_fixed(tmp_path: Path) -> None:
    """atheris found that a forged "version needed to extract" made zipfile raise
    NotImplementedError, which escaped as an internal error."""
    data = bytearray(GOOD_BYTES)
    at = data.index(b"PK\x01\x02")
    data[at + 6 : at + 8] = (223).to_bytes(2, "little")  # zip version 22.3
    (tmp_path / "forged.ekb").write_bytes(bytes(data))
    with pytest.raises(EdgekitError, match="not an edgekit bundle \\(zip file version 22.3\\)"):
        read_bundle(tmp_path / "forged.ekb")


@given(mutated(pack([np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])], ["x", "ids"])))
def test_what_an_isolated_child_answers(data: bytes) -> None:
    try:
        arrays = unpack(data)
    except ValueError:
        return
    assert all(a.dtype.kind in "biufc" for a in arrays.values())
