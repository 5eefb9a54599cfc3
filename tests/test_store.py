"""Signed bundles and the encrypted, crash-safe store: tampering, rollback, crashes, keys."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import run_one
from test_bundle import _rewrite

from edgekit.cli import main
from edgekit.core.bundle import read_bundle, write_bundle
from edgekit.core.errors import BundleError, KeyProviderError, SignatureError, StoreError
from edgekit.core.signing import create_publisher_key, load_signing_key, signature_entry
from edgekit.core.validation import updated
from edgekit.runtime import Model
from edgekit.runtime import store as store_module
from edgekit.runtime.backends import ONNXBackend, TFLiteBackend
from edgekit.runtime.keys import EnvKeyProvider, FileKeyProvider
from edgekit.runtime.store import Store


@pytest.fixture
def forbid_parsers(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Call it once the test's bundles exist: from then on, reaching a model parser fails."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model parser was called on unverified bytes")

    def arm() -> None:
        monkeypatch.setattr(TFLiteBackend, "__init__", forbidden)
        monkeypatch.setattr(ONNXBackend, "__init__", forbidden)

    return arm


def variant(bundle: Path, out: Path, publisher: Path, version: int) -> Path:
    """The same bundle at another version, signed by the session's publisher."""
    manifest, contents = read_bundle(bundle)
    manifest = updated(manifest, version=version)
    write_bundle(
        out, manifest, contents, signature_entry(manifest.canonical_bytes(), load_signing_key(publisher))
    )
    return out


def flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def test_tampered_bundles_are_refused_before_any_parser(
    converted, home: Path, tmp_path: Path, forbid_parsers
) -> None:  # type: ignore[no-untyped-def]
    bundle = converted("int8").output
    forbid_parsers()
    with zipfile.ZipFile(bundle) as z:
        manifest, sig, artifact = z.read("manifest.json"), z.read("manifest.sig"), z.read("model.int8.tflite")
    created = manifest.index(b'"created"') + 15  # a digit of the timestamp: the JSON stays valid
    entry = json.loads(sig)
    entry["signature"] = (
        entry["signature"][:10] + ("A" if entry["signature"][10] != "A" else "B") + entry["signature"][11:]
    )
    cases = {
        "manifest": (
            {"manifest.json": flip(manifest, created)},
            None,
            SignatureError,
            "does not match the manifest",
        ),
        "signature": (
            {"manifest.sig": json.dumps(entry).encode()},
            None,
            SignatureError,
            "does not match the manifest",
        ),
        "artifact": (
            {"model.int8.tflite": flip(artifact, 500)},
            None,
            BundleError,
            "does not match its sha256",
        ),
        "added": ({}, {"extra.so": b"x"}, BundleError, "unexpected entries ['extra.so']"),
        "removed": ({"model.int8.tflite": None}, None, BundleError, "missing entries ['model.int8.tflite']"),
        "renamed": (
            {"model.int8.tflite": None},
            {"model.tflite": artifact},
            BundleError,
            "unexpected entries",
        ),
        "unsigned": ({"manifest.sig": None}, None, SignatureError, "is not signed"),
    }
    for case, (change, add, error, message) in cases.items():
        bad = _rewrite(bundle, tmp_path / f"{case}.ekb", change, add)
        for attempt in (lambda bad=bad: Model.load(bad), lambda bad=bad: Store().install(bad)):
            with pytest.raises(error) as err:
                attempt()
            assert message in str(err.value), (case, str(err.value))
    assert Store().installed() == []


def test_untrusted_publisher_is_refused(converted, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stranger, _ = create_publisher_key(tmp_path / "stranger.key")
    bundle = variant(converted("int8").output, tmp_path / "v.ekb", tmp_path / "stranger.key", 2)
    with pytest.raises(SignatureError, match="which this device does not trust; add the publisher's key"):
        Store().install(bundle)


def test_install_load_and_the_model_store_commands(
    converted, home: Path, tmp_path: Path, publisher: Path, digits_eval
) -> None:  # type: ignore[no-untyped-def]
    x, _ = digits_eval
    v2 = variant(converted("int8").output, tmp_path / "v2.ekb", publisher, 2)
    v3 = variant(converted("fp32").output, tmp_path / "v3.ekb", publisher, 3)
    runner = CliRunner()
    for bundle in (v2, v3):
        result = runner.invoke(main, ["install", str(bundle)])
        assert result.exit_code == 0 and "signed by" in result.stdout, result.stderr
    for stray in ("²", "007", "-1", "99999999999999999999999"):  # folders an operator left, not versions
        (Store().root / "digits" / stray).mkdir()
    listed = json.loads(runner.invoke(main, ["models", "list", "--json"]).stdout)
    assert [(m["version"], m["active"]) for m in listed] == [(2, False), (3, True)]
    assert [(m["artifacts"], m["target"]) for m in listed] == [("tflite int8", "raspberry-pi-5"),
                                                               ("tflite fp32", "raspberry-pi-5")]  # fmt: skip
    assert all(abs(m["installed_at"] - time.time()) < 600 for m in listed)
    shown = runner.invoke(main, ["models", "list"]).stdout.splitlines()
    assert shown[1].startswith("* digits v3  tflite fp32 for raspberry-pi-5  installed 20")
    assert Model.load("digits").info.precision == "fp32"
    assert runner.invoke(main, ["models", "rollback", "digits"]).exit_code == 0
    model = Model.load("digits")
    assert (model.info.precision, model.info.version) == ("int8", 2)
    np.testing.assert_array_equal(model.predict(x[:5]), Model.load(v2).predict(x[:5]))
    refused = runner.invoke(main, ["models", "remove", "digits", "2"])
    assert refused.exit_code == 1 and "is active; activate another version first" in refused.stderr
    assert runner.invoke(main, ["models", "activate", "digits", "3"]).exit_code == 0
    assert runner.invoke(main, ["models", "remove", "digits", "2"]).exit_code == 0
    assert [m.version for m in Store().installed()] == [3]


def test_rollback_protection_survives_a_restart(
    converted, home: Path, tmp_path: Path, publisher: Path
) -> None:  # type: ignore[no-untyped-def]
    Store().install(variant(converted("int8").output, tmp_path / "v2.ekb", publisher, 2))
    v1 = variant(converted("int8").output, tmp_path / "v1.ekb", publisher, 1)
    for store in (Store(), Store()):  # the second object is a restart
        with pytest.raises(StoreError, match="older than v2, the highest this device has installed"):
            store.install(v1)
    Store().install(v1, allow_downgrade=True)
    state = home / "models" / "digits" / "state.json"
    record = json.loads(state.read_text())
    record["state"]["highest"] = 1  # an attacker resets the record
    state.write_text(json.dumps(record))
    with pytest.raises(StoreError, match="state.json does not verify"):
        Store().install(variant(converted("int8").output, tmp_path / "v0.ekb", publisher, 1))


def test_tampered_ciphertext_tag_and_nonce_are_detected(converted, home: Path, forbid_parsers) -> None:  # type: ignore[no-untyped-def]
    Store().install(converted("int8").output)
    forbid_parsers()
    sealed = home / "models" / "digits" / "2" / "model.int8.tflite.enc"
    original = sealed.read_bytes()
    header = 24
    for at in (header + 3, header + 12 + 100, len(original) - 5):  # nonce, ciphertext, tag
        sealed.write_bytes(flip(original, at))
        with pytest.raises(StoreError, match="fails authentication at chunk 0"):
            Model.load("digits")
    sealed.write_bytes(original[: len(original) - 40])
    with pytest.raises(StoreError):
        Model.load("digits")
    other = home / "models" / "digits" / "2" / "manifest.enc"
    sealed.write_bytes(other.read_bytes())  # a file swapped for another of the same version
    with pytest.raises(StoreError, match="fails authentication"):
        Model.load("digits")


_INSTALLER = """
import sys, time
from pathlib import Path
from edgekit.runtime.keys import FileKeyProvider
from edgekit.runtime.store import Store
from edgekit.core.signing import Trust
home = Path(sys.argv[1])
store = Store(home=home, keys=FileKeyProvider(home / "device.key"))
print("ready", flush=True)
started = time.perf_counter()
store.install(Path(sys.argv[2]), trust=Trust(home / "trust"))
print(f"done {time.perf_counter() - started}", flush=True)
"""


@pytest.mark.parametrize(
    "runs", [pytest.param(12, id="fast"), pytest.param(200, id="slow", marks=pytest.mark.slow)]
)
def test_kill_9_during_install_leaves_old_or_new(
    converted, home: Path, tmp_path: Path, publisher: Path, runs: int
) -> None:  # type: ignore[no-untyped-def]
    v1 = variant(converted("int8").output, tmp_path / "v1.ekb", publisher, 1)
    v2 = variant(converted("fp32").output, tmp_path / "v2.ekb", publisher, 2)
    Store().install(v1)
    old, new = read_bundle(v1)[1], read_bundle(v2)[1]
    pristine = tmp_path / "pristine"
    shutil.copytree(home, pristine)

    def attempt(run_home: Path, kill_after: float | None) -> str:
        child = subprocess.Popen(
            [sys.executable, "-c", _INSTALLER, str(run_home), str(v2)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        if kill_after is None:
            line = child.stdout.readline()
            child.wait()
            return line
        time.sleep(kill_after)
        child.send_signal(signal.SIGKILL)
        child.wait()
        return ""

    durations = []
    for index in range(3):  # the longest of three clean installs sets the range of kill times
        clean = tmp_path / f"clean{index}"
        shutil.copytree(pristine, clean)
        durations.append(float(attempt(clean, None).split()[1]))
    duration = max(durations)
    rng = random.Random(1234)
    outcomes = set()
    for run in range(runs):
        run_home = tmp_path / f"run{run}"
        shutil.copytree(pristine, run_home)
        attempt(run_home, rng.uniform(0, duration * 2))
        store = Store(home=run_home, keys=FileKeyProvider(run_home / "device.key"))  # recovery runs here
        manifest, contents = store.load("digits")
        assert contents in (old, new)
        outcomes.add(manifest.version)
        assert not [p for p in run_home.rglob("*") if ".tmp" in p.name], run
        shutil.rmtree(run_home)
    if runs >= 100:  # kills land before and after the commit point, and each outcome is whole
        assert outcomes == {1, 2}


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_injected_io_failures_keep_the_old_version(
    converted, home: Path, tmp_path: Path, publisher: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:  # type: ignore[no-untyped-def]
    v1 = variant(converted("int8").output, tmp_path / "v1.ekb", publisher, 1)
    v2 = variant(converted("fp32").output, tmp_path / "v2.ekb", publisher, 2)
    Store().install(v1)
    real = getattr(os, failing)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(StoreError, match="No space left on device; the store is unchanged"):
        Store().install(v2)
    monkeypatch.setattr(os, failing, real)
    assert Store().load("digits")[0].version == 1
    assert not [p for p in home.rglob("*") if ".tmp" in p.name]


_NO_PLAINTEXT = """
import sys, numpy as np
from pathlib import Path
from edgekit.runtime import Model
from edgekit.runtime.store import Store
Store().install(Path(sys.argv[1]))
print(Model.load("digits").predict(np.zeros((1, 8, 8, 1), np.float32)).shape)
"""


def test_plaintext_never_touches_the_disk(converted, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = converted("int8").output
    plaintext = read_bundle(bundle)[1]["model.int8.tflite"]
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "EDGEKIT_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-c", _NO_PLAINTEXT, str(bundle)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    windows = [plaintext[i : i + 64] for i in range(0, len(plaintext) - 64, 64)]
    files = [p for folder in (home, scratch) for p in folder.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".enc") for p in files)
    for file in files:
        data = file.read_bytes()
        assert not any(w in data for w in windows), file


def test_key_file_permissions_wrong_keys_and_providers(
    converted, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    Store().install(converted("int8").output)
    key_file = home / "device.key"
    key_file.chmod(0o644)
    with pytest.raises(KeyProviderError, match="readable by group or others .* run: chmod 600"):
        Model.load("digits")
    key_file.chmod(0o600)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    monkeypatch.setenv(
        "EDGEKIT_DEVICE_KEY", "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    )  # 32 bytes of "A"
    assert isinstance(Store()._keys, EnvKeyProvider)
    with pytest.raises(KeyProviderError, match="was sealed with device key .* wrong env key"):
        Model.load("digits")
    monkeypatch.setenv("EDGEKIT_DEVICE_KEY", key_file.read_text().strip())
    assert Model.load("digits").info.version == 2
    monkeypatch.setenv("EDGEKIT_KEY_PROVIDER", "tpm-that-is-not-installed")
    with pytest.raises(KeyProviderError, match="no key provider plug-in 'tpm-that-is-not-installed'"):
        Store()


def test_rotation_rewraps_everything_and_survives_an_interruption(
    converted, home: Path, tmp_path: Path, publisher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    for version in (1, 2, 3):
        Store().install(variant(converted("int8").output, tmp_path / f"v{version}.ekb", publisher, version))
    old_key = tmp_path / "old.key"
    shutil.copy(home / "device.key", old_key)
    calls = {"n": 0}
    real_wrap = store_module.wrap_key

    def crash_after_one(*args, **kwargs):  # type: ignore[no-untyped-def]
        if calls["n"] >= 1:
            raise KeyboardInterrupt  # the power goes out halfway
        calls["n"] += 1
        return real_wrap(*args, **kwargs)

    monkeypatch.setattr(store_module, "wrap_key", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        Store().rotate_device_key()
    monkeypatch.setattr(store_module, "wrap_key", real_wrap)
    assert (home / "device.key.next").exists()
    store = Store()  # opening finishes the rotation
    assert not (home / "device.key.next").exists()
    assert [store.load("digits", v)[0].version for v in (1, 2, 3)] == [1, 2, 3]
    assert home.joinpath("device.key").read_bytes() != old_key.read_bytes()
    old_key.chmod(0o600)
    with pytest.raises(KeyProviderError, match="was sealed with device key"):
        Store(keys=FileKeyProvider(old_key)).load("digits")
    assert CliRunner().invoke(main, ["keys", "rotate"]).exit_code == 0
    assert Model.load("digits").info.version == 3


def test_bad_archives_get_clear_errors(converted, home: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = converted("int8").output
    traversal = _rewrite(bundle, tmp_path / "traversal.ekb", {}, add={"../../etc/evil": b"x"})
    symlink = tmp_path / "symlink.ekb"
    shutil.copy(bundle, symlink)
    with zipfile.ZipFile(symlink, "a") as z:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    bomb = _rewrite(bundle, tmp_path / "bomb.ekb", {"model.int8.tflite": bytes(200_000_000)})
    truncated = tmp_path / "truncated.ekb"
    truncated.write_bytes(bundle.read_bytes()[:1000])
    text = tmp_path / "text.ekb"
    text.write_text("hello")
    cases = {
        traversal: "escapes the bundle", symlink: "is a symlink", bomb: "the manifest says",
        truncated: "not an edgekit bundle", text: "not an edgekit bundle",
    }  # fmt: skip
    for path, message in cases.items():
        result = CliRunner().invoke(main, ["install", str(path)])
        assert result.exit_code == 1 and message in result.stderr, (path.name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_keys_sign_and_trust_commands(converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "device"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "init", "--publisher", "-o", "me.key"]).exit_code == 0
    assert stat.S_IMODE((tmp_path / "me.key").stat().st_mode) == 0o600
    nested = runner.invoke(main, ["keys", "init", "--publisher", "-o", "new/folder/ci.key"])
    assert nested.exit_code == 0 and (tmp_path / "new/folder/ci.pub").exists()  # folders made, like mkdir -p
    again = runner.invoke(main, ["keys", "init", "--publisher", "-o", "me.key"])
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert runner.invoke(main, ["keys", "init", "--device"]).exit_code == 0
    bundle = tmp_path / "b.ekb"
    shutil.copy(converted("fp32").output, bundle)
    signed = json.loads(runner.invoke(main, ["sign", str(bundle), "--key", "me.key", "--json"]).stdout)
    refused = runner.invoke(main, ["install", str(bundle)])
    assert (
        refused.exit_code == 1
        and f"signed by key {signed['key_id']}, which this device does not trust" in refused.stderr
    )
    before = json.loads(runner.invoke(main, ["inspect", str(bundle), "--json"]).stdout)["signature"]
    assert before == {"key_id": signed["key_id"], "status": "not trusted here"}
    assert runner.invoke(main, ["trust", "add", "me.pub"]).exit_code == 0
    after = json.loads(runner.invoke(main, ["inspect", str(bundle), "--json"]).stdout)["signature"]
    assert after["status"] == "trusted here"
    assert json.loads(runner.invoke(main, ["trust", "list", "--json"]).stdout) == [signed["key_id"]]
    assert runner.invoke(main, ["install", str(bundle)]).exit_code == 0


def test_onnx_external_data_references_are_refused(tmp_path: Path) -> None:
    import onnx
    import onnx_graphs

    from edgekit.core.errors import RuntimeBackendError

    onnx.save_model(onnx_graphs.conv_classifier(opset=13), str(tmp_path / "m.onnx"), save_as_external_data=True,
                    location="w.bin", size_threshold=0)
    for location in ("w.bin", "../../../../etc/hostname"):  # beside the process, and outside it
        model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        with pytest.raises(
            RuntimeBackendError, match="references external data files; a bundle must be self"
        ):
            ONNXBackend(model.SerializeToString())


def test_concurrent_installs_are_serialized(converted, home: Path, tmp_path: Path, publisher: Path) -> None:  # type: ignore[no-untyped-def]
    import threading

    bundles = [variant(converted("int8").output, tmp_path / f"v{v}.ekb", publisher, v) for v in (1, 2, 3, 4)]
    errors: list[BaseException] = []

    def install(bundle: Path) -> None:
        try:
            Store().install(bundle, allow_downgrade=True)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=install, args=(b,)) for b in bundles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = Store()
    assert sorted(m.version for m in store.installed()) == [1, 2, 3, 4]
    assert store._read_state("digits").highest == 4  # type: ignore[union-attr]
    assert [store.load("digits", v)[0].version for v in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_malformed_store_files_are_reported_not_crashed_on(converted, home: Path) -> None:  # type: ignore[no-untyped-def]
    Store().install(converted("int8").output)
    folder = home / "models" / "digits"
    (folder / "2" / "data.key").write_text("{}")
    with pytest.raises(StoreError, match="data.key is missing or malformed"):
        Model.load("digits")
    (folder / "state.json").write_text("not json")
    result = CliRunner().invoke(main, ["run", "digits", "-i", "x.npy"])
    assert (
        result.exit_code == 1
        and result.stderr == "error: digits: state.json is malformed; the store was tampered with\n"
    )


def test_tensorrt_engine_is_compiled_once_and_kept_encrypted(
    home: Path,
    publisher: Path,
    onnx_converted,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    """No GPU here, so TensorRT's two calls are stand-ins (compiling, and opening a session on
    it); the key, the encryption, the store layout, reuse and recovery are the real code."""
    import logging

    import onnx
    import onnxruntime as ort

    from edgekit.core.formats import CPU
    from edgekit.core.formats import TENSORRT as TRT
    from edgekit.runtime.backends.onnx import ProviderSettings

    bundle = variant(
        onnx_converted("int8", profile="jetson-orin-nano").output, tmp_path / "v.ekb", publisher, 1
    )
    Store().install(bundle)
    manifest, contents = Store().load(read_bundle(bundle)[0].name)
    content = contents[manifest.artifacts[0].path]
    marker = b"compiled-for-tensorrt-" + os.urandom(8).hex().encode()
    compiled, opened = [], []

    def compiler(model: bytes, options: dict[str, str]) -> bytes:  # what ModelCompiler would return
        compiled.append(options)
        proto = onnx.load_from_string(model)
        proto.doc_string = marker.decode()
        return proto.SerializeToString()

    def factory(model: bytes, sess_options: object, providers: list[tuple[str, dict]]) -> object:
        opened.append(model)
        if b"tampered" in model:
            raise RuntimeError("TensorRT: engine plan was built for another GPU")
        return ort.InferenceSession(model, sess_options=sess_options, providers=[CPU])

    def load() -> ONNXBackend:
        engines = Store().engines(manifest.name, manifest.version)
        return ONNXBackend(content, providers=[TRT, CPU], settings=ProviderSettings(precision="int8"),
                           available=[TRT, CPU], session_factory=factory, engines=engines, compiler=compiler)

    first = load()
    assert first.engine_cache == "built" and len(compiled) == 1 and compiled[0]["trt_int8_enable"] == "True"
    assert marker in opened[-1]  # the session ran the compiled model
    (stored,) = (home / "models" / manifest.name / "1" / "engines").iterdir()
    assert marker not in stored.read_bytes() and b"EPContext" not in stored.read_bytes()  # encrypted
    second = load()
    assert second.engine_cache == "loaded" and len(compiled) == 1 and marker in opened[-1]  # no rebuild
    x = np.zeros((1, *first.inputs[0].shape[1:]), np.float32)
    assert np.array_equal(run_one(second, x), run_one(first, x))

    sealed = bytearray(stored.read_bytes())
    sealed[-20] ^= 1  # a flipped bit fails the GCM tag: the engine is dropped and built again
    stored.write_bytes(bytes(sealed))
    assert load().engine_cache == "built" and len(compiled) == 2

    # An engine that decrypts but does not load (another GPU, a TensorRT upgrade): dropped, and
    # this start builds it inside the session instead; the next start compiles it again.
    key = stored.stem
    Store().engines(manifest.name, manifest.version).put(key, b"tampered engine")
    caplog.set_level(logging.WARNING, "edgekit.runtime")
    fallback = load()
    assert fallback.engine_cache is None and fallback.provider == CPU and opened[-1] == content
    assert (
        "the stored TensorRT engine did not load (TensorRT: engine plan was built for another GPU)"
        in caplog.text
    )
    assert not stored.exists()

    def broken(model: bytes, options: dict[str, str]) -> bytes:
        raise RuntimeError("onnxruntime 1.19.0 has no compile API (1.22 or later has)")

    engines = Store().engines(manifest.name, manifest.version)
    plain = ONNXBackend(content, providers=[TRT, CPU], available=[TRT, CPU], session_factory=factory,
                        engines=engines, compiler=broken)
    assert plain.engine_cache is None and opened[-1] == content
    assert "TensorRT engine not cached (onnxruntime 1.19.0 has no compile API" in caplog.text


def test_store_models_on_cpu_never_compile_an_engine(
    home: Path, publisher: Path, onnx_converted, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bundle = variant(
        onnx_converted("int8", profile="jetson-orin-nano").output, tmp_path / "v.ekb", publisher, 1
    )
    name = Store().install(bundle).name
    model = Model.load(name)  # TensorRT is not in this onnxruntime build: nothing compiled, nothing stored
    assert model.info.provider == "CPUExecutionProvider"
    assert not (home / "models" / name / "1" / "engines").exists()


def test_one_model_converted_for_two_targets_is_told_apart_at_install(converted, home: Path) -> None:  # type: ignore[no-untyped-def]
    pi, other = converted("fp32").output, converted("fp32", "generic-arm64").output
    Store().install(pi)
    with pytest.raises(StoreError) as again:
        Store().install(pi)
    assert str(again.value) == "digits v2 is already installed from this bundle, and active"
    with pytest.raises(StoreError) as twin:
        Store().install(other)
    assert str(twin.value) == (
        "digits v2 is already installed from another bundle (made for raspberry-pi-5); convert this one "
        "with another --version (or --name), or remove that one first: edgekit models remove digits 2"
    )


def test_a_gpu_bundle_installed_where_no_engine_has_a_gpu_is_warned(onnx_converted, home: Path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from edgekit.cli import main

    jetson = onnx_converted("fp16", "minmax", "jetson-orin-nano").output
    result = CliRunner().invoke(main, ["install", str(jetson)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        "warning: digits was made for jetson-orin-nano, a CUDA GPU profile, and no engine here can use a GPU "
        "(ONNX Runtime without the CUDA or TensorRT provider): it will run on the CPU"
    )
    from edgekit.core.bundle import read_manifest
    from edgekit.runtime.store import _gpu_missing

    assert _gpu_missing(read_manifest(onnx_converted("fp32").output)) is None  # x86-gateway: no GPU asked for


def test_a_model_name_with_a_typo_is_answered_with_the_installed_one(converted, home: Path) -> None:  # type: ignore[no-untyped-def]
    Store().install(converted("fp32").output)
    with pytest.raises(StoreError) as typo:
        Store().load("digts")
    assert str(typo.value) == "no model 'digts' in the store. Did you mean 'digits'? Install one with: edgekit install BUNDLE"
    with pytest.raises(StoreError, match="no model 'meter' in the store. Installed: digits."):
        Store().load("meter")
