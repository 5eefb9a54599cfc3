"""Attacks on the device's bundle reader and store, each as an attacker would make it:
zip bombs that need no key, malformed metadata, corrupt store files, truncated ciphertext,
a read-only store, and a crash between install steps. Every one ends in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hostile import bomb, peak_attempt, unsigned_manifest
from test_bundle import CONTENT, _manifest

from edgekit.cli import main
from edgekit.core.bundle import read_bundle, write_bundle
from edgekit.core.errors import BundleError, SignatureError, StoreError
from edgekit.core.signing import load_signing_key, signature_entry
from edgekit.core.validation import updated
from edgekit.runtime import Model, sealed
from edgekit.runtime.store import Store

BOMB_MB = 256
"""Inflated size of each bomb: the reader used to hold all of it in memory at once."""
FLAT_MB = 100


def signed(path: Path, publisher: Path, version: int = 3, content: bytes = CONTENT) -> Path:
    manifest = updated(_manifest(content), version=version)
    key = load_signing_key(publisher)
    write_bundle(path, manifest, {manifest.artifacts[0].path: content},
                 signature_entry(manifest.canonical_bytes(), key))
    return path


def signature_for(data: bytes, publisher: Path) -> bytes:
    return signature_entry(data, load_signing_key(publisher))


@pytest.mark.parametrize("how", ["install", "load"])
def test_zip_bombs_with_a_lying_size_are_refused_with_flat_memory(
    home: Path, tmp_path: Path, publisher: Path, how: str
) -> None:
    manifest = _manifest()
    good = manifest.canonical_bytes()
    artifact = manifest.artifacts[0].path
    cases = {
        # no signature at all: the manifest itself
        "manifest": (
            bomb(tmp_path / "m.ekb", {"manifest.json": BOMB_MB}, {"manifest.json": 2000}),
            "manifest.json is corrupt",
        ),
        # a manifest that declares its true size, over the cap
        "manifest-honest": (bomb(tmp_path / "h.ekb", {"manifest.json": 2}), "over the 1048576-byte limit"),
        "signature": (
            bomb(
                tmp_path / "s.ekb",
                {"manifest.json": good, "manifest.sig": BOMB_MB, artifact: CONTENT},
                {"manifest.sig": 150},
            ),
            "manifest.sig is corrupt",
        ),
        # unsigned and accepted as such: the artifact declares what the manifest says
        "artifact": (
            bomb(tmp_path / "a.ekb", {"manifest.json": good, artifact: BOMB_MB}, {artifact: len(CONTENT)}),
            f"{artifact} is corrupt",
        ),
    }
    for case, (bundle, message) in cases.items():
        seen = peak_attempt(how, bundle, dict(os.environ))
        assert seen["outcome"].startswith("BundleError") and message in seen["outcome"], (case, seen)
        assert "\n" not in seen["outcome"]
        assert seen["extra_mb"] < FLAT_MB, (case, seen)


def test_an_unsigned_artifact_is_capped_by_its_profiles_storage_budget(
    home: Path, tmp_path: Path, publisher: Path
) -> None:
    content = bytes(100 << 20)  # 100 MB, honestly declared; generic-arm64 allows 64 MB
    manifest = unsigned_manifest(content, profile="generic-arm64")
    bundle = tmp_path / "big.ekb"
    write_bundle(bundle, manifest, {manifest.artifacts[0].path: content})
    del content
    seen = peak_attempt("load", bundle, dict(os.environ))
    assert "over the 67108864-byte limit (the storage budget of generic-arm64)" in seen["outcome"], seen
    assert seen["extra_mb"] < FLAT_MB, seen
    with pytest.raises(BundleError, match="over the 1048576-byte limit \\(given\\)"):
        read_bundle(bundle, max_bytes=1 << 20)
    assert read_bundle(bundle, max_bytes=200 << 20)[0].name == "digits"  # an explicit limit decides
    result = CliRunner().invoke(main, ["install", str(bundle), "--allow-unsigned", "--max-size", "10"])
    assert result.exit_code == 1 and "over the 10485760-byte limit (given)" in result.stderr


def test_malformed_metadata_is_one_line_and_the_signature_comes_first(
    home: Path, tmp_path: Path, publisher: Path
) -> None:
    manifest = _manifest()
    artifact = {manifest.artifacts[0].path: CONTENT}
    deep = b"[" * 300_000
    listed_key = json.dumps({"algorithm": "ed25519", "key_id": ["x"], "signature": "AA=="}).encode()
    cases = {
        "deep signature": ({"manifest.json": manifest.canonical_bytes(), "manifest.sig": deep[:4000]},
                           SignatureError, "manifest.sig is malformed"),
        "huge signature": ({"manifest.json": manifest.canonical_bytes(), "manifest.sig": deep}, BundleError,
                           "over the 4096-byte limit for a signature"),
        "key_id a list": ({"manifest.json": manifest.canonical_bytes(), "manifest.sig": listed_key},
                          SignatureError, "manifest.sig is malformed"),
        # signed by the trusted key, so only the parse can refuse it
        "deep manifest": ({"manifest.json": deep, "manifest.sig": signature_for(deep, publisher)}, BundleError,
                          "manifest.json is unreadable"),
        # unparseable and untrusted: the signature check comes first
        "order": ({"manifest.json": deep, "manifest.sig": signature_entry(deep, Ed25519PrivateKey.generate())},
                  SignatureError, "which this device does not trust"),
    }  # fmt: skip
    for case, (entries, error, message) in cases.items():
        bundle = bomb(tmp_path / f"{case}.ekb", {**entries, **artifact})
        for attempt in (lambda b=bundle: Model.load(b), lambda b=bundle: Store().install(b)):
            with pytest.raises(error, match=message) as caught:
                attempt()
            assert type(caught.value) is error, case
        result = CliRunner().invoke(main, ["install", str(bundle)])
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, (case, result.stderr)
        assert "internal error" not in result.stderr, case


def test_corrupt_store_files_are_store_errors_and_list_marks_only_the_bad_model(
    home: Path, tmp_path: Path, publisher: Path
) -> None:
    for name in ("alpha", "beta", "gamma"):
        manifest = updated(_manifest(), name=name)
        write_bundle(tmp_path / f"{name}.ekb", manifest, {manifest.artifacts[0].path: CONTENT},
                     signature_entry(manifest.canonical_bytes(), load_signing_key(publisher)))
        Store().install(tmp_path / f"{name}.ekb")
    models = home / "models"
    state = json.loads((models / "alpha" / "state.json").read_text())
    key = json.loads((models / "beta" / "3" / "data.key").read_text())
    for field, value in (("device_key", [1]), ("mac", 5), ("state", {"active": "3", "highest": 3})):
        (models / "alpha" / "state.json").write_text(json.dumps({**state, field: value}))
        with pytest.raises(StoreError, match="alpha: state.json is malformed"):
            Model.load("alpha")
    (models / "beta" / "3" / "data.key").write_text(json.dumps({**key, "nonce": 5}))
    with pytest.raises(StoreError, match="beta v3: data.key is missing or malformed"):
        Model.load("beta")
    (models / "gamma" / "3" / "manifest.sig").write_bytes(b"\x00garbage{")
    listed = {(m.name, m.active): m.problem for m in Store().installed()}
    assert listed[("alpha", False)] is not None and "state.json is malformed" in listed[("alpha", False)]
    assert listed[("beta", True)] is None  # a bad data.key shows at load, its records are intact
    assert "manifest.sig is malformed" in str(listed[("gamma", True)])
    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 3 and "BROKEN" in lines[0] and "* beta v3" in lines[1] and "BROKEN" in lines[2]


@pytest.mark.parametrize("megabytes", [0, 0.5, 3.2])  # 0, 1 and 4 chunks
def test_truncated_ciphertext_never_decrypts(tmp_path: Path, megabytes: float) -> None:
    key = os.urandom(32)
    data = os.urandom(int(megabytes * (1 << 20)))
    path = tmp_path / "f.enc"
    whole = sealed.seal(data, key, "m", 1, "f")
    header = sealed._HEADER
    _, chunk, count, total = header.unpack_from(whole)
    path.write_bytes(whole)
    assert sealed.unseal(path, key, "m", 1, "f") == data
    last = len(whole) - (12 + (total - (count - 1) * chunk) + 16) if count else len(whole)
    forgeries = {
        "bare header, zero chunks": header.pack(sealed.MAGIC, chunk, 0, 0),
        "bare header as written": whole[: header.size],
        "last chunk dropped": whole[:last],
        "last chunk dropped, header shortened": header.pack(sealed.MAGIC, chunk, max(count - 1, 0),
                                                            (count - 1) * chunk) + whole[header.size : last],
        "zero chunks claimed, chunks kept": header.pack(sealed.MAGIC, chunk, 0, 0) + whole[header.size :],
    }  # fmt: skip
    for case, forged in forgeries.items():
        path.write_bytes(forged)
        with pytest.raises(StoreError, match="tampered with|truncated"):
            sealed.unseal(path, key, "m", 1, "f")
            pytest.fail(case)


def test_a_store_manifest_cut_to_its_header_is_refused(home: Path, tmp_path: Path, publisher: Path) -> None:
    Store().install(signed(tmp_path / "m.ekb", publisher))
    for file, what in (("manifest.enc", "manifest.json"), ("model.int8.tflite.enc", "model.int8.tflite")):
        target = home / "models" / "digits" / "3" / file
        original = target.read_bytes()
        target.write_bytes(sealed._HEADER.pack(sealed.MAGIC, sealed.CHUNK_BYTES, 0, 0))
        with pytest.raises(StoreError, match=f"{what} has a forged or truncated header"):
            Model.load("digits")
        target.write_bytes(original)


def test_a_crash_between_install_steps_keeps_highest_at_or_above_every_installed_version(
    home: Path, tmp_path: Path, publisher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``highest`` is the highest version accepted for install: it is raised before the
    version is written, so no crash leaves an installed version above it."""
    Store().install(signed(tmp_path / "v2.ekb", publisher, 2))
    v3, v4 = signed(tmp_path / "v3.ekb", publisher, 3), signed(tmp_path / "v4.ekb", publisher, 4)

    def power_cut(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    for step, method in (("after raising highest", "_write_version"), ("before activating", "_write_state")):
        with monkeypatch.context() as patch:
            patch.setattr(Store, method, power_cut)
            with pytest.raises(KeyboardInterrupt):
                Store().install(v4)
        state = Store()._read_state("digits")
        assert state is not None and (state.active, state.highest) == (2, 4), step
        assert (home / "models" / "digits" / "4").is_dir() == (step == "before activating")
        with pytest.raises(StoreError, match="older than v4"):
            Store().install(v3)
    with pytest.raises(StoreError, match="already installed; activate it"):
        Store().install(v4)
    Store().activate("digits", 4)
    assert Store().load("digits")[0].version == 4


_READ_ONLY = """
import sys
from pathlib import Path
from click.testing import CliRunner
from edgekit.cli import main
from edgekit.runtime.store import Store
runner = CliRunner()
assert [m.version for m in Store().installed()] == [3], Store().installed()
assert Store().load("digits")[0].version == 3
for args in (["models", "list"], ["install", sys.argv[1]], ["models", "activate", "digits", "3"],
             ["models", "remove", "digits", "2"]):
    result = runner.invoke(main, args)
    print(result.exit_code, (result.stderr or result.output).strip().splitlines())
"""


def test_a_read_only_store_reads_and_refuses_writes_in_one_line(
    home: Path, tmp_path: Path, publisher: Path
) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("needs unshare -rm (user and mount namespaces) to mount the store read-only")
    Store().install(signed(tmp_path / "v3.ekb", publisher, 3))
    v4 = signed(tmp_path / "v4.ekb", publisher, 4)
    (home / "store.lock").unlink()  # a partition that was never written by a lock either
    script = tmp_path / "read_only.py"
    script.write_text(_READ_ONLY)
    mount = f"mount --bind {home} {home} && mount -o remount,bind,ro {home} && "
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount + f'"{sys.executable}" {script} {v4}'],
        capture_output=True, text=True, env=dict(os.environ), timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("0 ['* digits v3")
    for line in lines[1:]:
        assert line.startswith("1 [") and "is read-only" in line and line.count("', '") == 0, line
