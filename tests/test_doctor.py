"""``edgekit doctor`` on this machine (no GPU): what it finds, and each problem as one line with
its fix: a store the device key cannot read, an old protobuf, a broker nobody answers on."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.runtime.store import Store
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto


def _doctor(*args: str) -> tuple[int, dict[str, dict[str, str]]]:
    result = CliRunner().invoke(main, ["doctor", "--json", *args])
    return result.exit_code, {check["name"]: check for check in json.loads(result.stdout)}


def test_this_machine_runs_both_engines_on_the_cpu(home: Path) -> None:
    code, checks = _doctor()
    assert code == 0
    assert checks["TFLite engine"]["status"] == "ok"
    onnx = checks["ONNX Runtime"]
    assert onnx["status"] == "ok" and "CPUExecutionProvider" in onnx["found"]
    assert "CPU only: no CUDA or TensorRT provider" in onnx["found"] and "onnxruntime-gpu" in onnx["fix"]
    assert checks["trusted publishers"]["status"] == "ok"  # the session's publisher
    assert checks["store"]["status"] == "ok"


def test_a_store_this_device_key_cannot_read_fails_with_its_fix(converted, home: Path) -> None:  # type: ignore[no-untyped-def]
    Store().install(converted("fp32").output)
    (home / "device.key").unlink()
    code, checks = _doctor()
    assert code == 1 and checks["store"]["status"] == "fail"
    assert "cannot be read: digits v2" in checks["store"]["found"]
    assert "edgekit keys init --device" in checks["store"]["fix"]


def test_an_old_protobuf_is_named_with_the_version_needed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.runtime.serve import server

    monkeypatch.setattr(server, "STUBS_PROTOBUF", "99.0.0")
    code, checks = _doctor()
    assert code == 1 and checks["serve (gRPC)"]["status"] == "fail"
    assert checks["serve (gRPC)"]["fix"] == "pip install 'protobuf>=99.0.0,<8', or edgekit serve --no-grpc"


def test_the_broker_is_reached_or_named_with_why_not(home: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    code, checks = _doctor("--broker", f"mqtt://127.0.0.1:{closed}")
    assert code == 1 and checks["broker"]["status"] == "fail"
    assert checks["broker"]["found"] == f"mqtt://127.0.0.1:{closed}: Connection refused"
    lines = CliRunner().invoke(main, ["doctor", "--broker", f"mqtt://127.0.0.1:{closed}"]).output.splitlines()
    assert "FAIL  broker: mqtt://127.0.0.1:" in "\n".join(lines) and any(line.strip().startswith("fix:") for line in lines)
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with LocalBroker(tmp_path / "broker") as broker:
        code, checks = _doctor("--broker", broker.url)
    assert code == 0 and checks["broker"]["found"].endswith("accepts connections")
