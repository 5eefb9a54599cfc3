from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from edgekit.core.bundle import read_bundle, sha256, write_bundle
from edgekit.core.errors import BundleError
from edgekit.core.manifest import ArtifactEntry, Manifest, Metrics, Preprocessing, Source, Tensor
from edgekit.core.profiles import load_profile

CONTENT = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 8


def _manifest(content: bytes = CONTENT, path: str = "model.int8.tflite") -> Manifest:
    metrics = Metrics(
        size_bytes=len(content), float_parameter_bytes=4 * len(content), size_ratio=0.25,
        peak_memory_bytes=1 << 20, host_latency_ms=0.1, conversion_seconds=0.5,
        calibration_samples=100, within_budget=True,
    )
    tensor = Tensor(name="x", shape=(None, 8, 8, 1), dtype="float32")
    entry = ArtifactEntry(
        path=path, format="tflite", precision="int8", sha256=sha256(content), size=len(content),
        inputs=(tensor,), outputs=(tensor,), metrics=metrics,
    )
    return Manifest(
        format_version=1, name="digits", version=3, created="2026-01-01T00:00:00+00:00",
        source=Source(file="m.keras", kind="keras", sha256="0" * 64, size_bytes=10),
        profile=load_profile("raspberry-pi-5").model_dump(mode="json"), artifacts=(entry,),
        preprocessing=Preprocessing(layout="NHWC", input_range=(0.0, 1.0)), tools={"edgekit": "0"},
    )


def _rewrite(
    src: Path, dst: Path, replace: dict[str, bytes | None], add: dict[str, bytes] | None = None
) -> Path:
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for info in old.infolist():
            data = replace.get(info.filename, old.read(info.filename))
            if data is not None:
                new.writestr(info.filename, data)
        for name, data in (add or {}).items():
            new.writestr(name, data)
    return dst


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "m.ekb"
    write_bundle(path, _manifest(), {"model.int8.tflite": CONTENT})
    return path


def test_roundtrip_is_exact_and_canonical(bundle: Path) -> None:
    manifest, contents = read_bundle(bundle)
    assert manifest == _manifest()
    assert contents == {"model.int8.tflite": CONTENT}
    with zipfile.ZipFile(bundle) as archive:
        assert archive.read("manifest.json") == _manifest().canonical_bytes()
    assert list(bundle.parent.iterdir()) == [bundle]  # no temp files left


def test_changed_artifact_is_detected(bundle: Path, tmp_path: Path) -> None:
    tampered = bytearray(CONTENT)
    tampered[100] ^= 1
    bad = _rewrite(bundle, tmp_path / "bad.ekb", {"model.int8.tflite": bytes(tampered)})
    with pytest.raises(BundleError, match="does not match its sha256"):
        read_bundle(bad)


def test_size_mismatch_is_refused_before_reading(bundle: Path, tmp_path: Path) -> None:
    bad = _rewrite(bundle, tmp_path / "bad.ekb", {"model.int8.tflite": CONTENT * 2})
    with pytest.raises(BundleError, match="the manifest says"):
        read_bundle(bad)


def test_added_and_removed_entries_are_refused(bundle: Path, tmp_path: Path) -> None:
    extra = _rewrite(bundle, tmp_path / "extra.ekb", {}, add={"evil.so": b"x"})
    with pytest.raises(BundleError, match=r"unexpected entries \['evil.so'\]"):
        read_bundle(extra)
    missing = _rewrite(bundle, tmp_path / "missing.ekb", {"model.int8.tflite": None})
    with pytest.raises(BundleError, match="missing entries"):
        read_bundle(missing)


def test_corrupt_and_foreign_files_get_clear_errors(bundle: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.ekb"
    junk.write_bytes(bundle.read_bytes()[:200])
    with pytest.raises(BundleError, match="not an edgekit bundle"):
        read_bundle(junk)
    with pytest.raises(BundleError, match="no such bundle"):
        read_bundle(tmp_path / "nope.ekb")
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(BundleError, match="no manifest.json"):
        read_bundle(foreign)


def test_newer_and_invalid_manifests(bundle: Path, tmp_path: Path) -> None:
    raw = json.loads(_manifest().canonical_bytes())
    newer = _rewrite(
        bundle, tmp_path / "newer.ekb", {"manifest.json": json.dumps({**raw, "format_version": 9}).encode()}
    )
    with pytest.raises(BundleError, match="newer than this edgekit reads"):
        read_bundle(newer)
    raw["artifacts"][0]["path"] = "../../etc/passwd"
    evil = _rewrite(bundle, tmp_path / "evil.ekb", {"manifest.json": json.dumps(raw).encode()})
    with pytest.raises(BundleError, match="invalid manifest at 'artifacts.0.path'"):
        read_bundle(evil)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.ekb"
    with pytest.raises(KeyError):
        write_bundle(target, _manifest(), {})  # the artifact bytes are missing
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic(bundle: Path) -> None:
    other = CONTENT[::-1]
    write_bundle(bundle, _manifest(other), {"model.int8.tflite": other})
    assert read_bundle(bundle)[1]["model.int8.tflite"] == other
