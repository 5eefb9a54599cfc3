"""``edgekit doctor``: what this machine can run, and what stands in the way, one line each.

Every check says what it found and, where something is wrong, the command that fixes it. It
imports no converter and never TensorFlow unless that is the TFLite engine the device has.
"""

from __future__ import annotations

import importlib
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import edgekit
from edgekit.core.errors import EdgekitError
from edgekit.core.formats import GPU_PROVIDERS
from edgekit.core.paths import edgekit_home


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    """"ok", "warn" (works, with less than it could) or "fail" (does not work)."""
    found: str
    fix: str = ""


def run_checks(broker: str | None = None) -> list[Check]:
    """Every check, in the order a person reads them; ``broker``: also try to reach it."""
    checks: list[Callable[[], Check]] = [_python, _tflite, _onnxruntime, _protobuf, _store, _trust]
    found = [_safely(check) for check in checks]
    if broker:
        found.append(_safely(lambda: _broker(broker)))
    return found


def _safely(check: Callable[[], Check]) -> Check:
    try:
        return check()
    except Exception as exc:  # a check that breaks is a finding, not a crash of doctor
        name = getattr(check, "__name__", "check").strip("_")
        return Check(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}")


def _python() -> Check:
    return Check("edgekit", "ok", f"edgekit {edgekit.__version__}, Python {sys.version.split()[0]}, "
                 f"{platform.system()} {platform.machine()}")  # fmt: skip


def _tflite() -> Check:
    from edgekit.runtime.backends.tflite import import_interpreter

    try:
        _, label = import_interpreter()
    except EdgekitError:
        fix = "pip install 'edgekit[tflite]' (ai-edge-litert; tflite-runtime on old images)"
        return Check("TFLite engine", "warn", "none: TFLite bundles cannot run here", fix)
    return Check("TFLite engine", "ok", label)


def _onnxruntime() -> Check:
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        return Check("ONNX Runtime", "warn", "not installed: ONNX bundles cannot run here",
                     "pip install 'edgekit[onnx]' (on a Jetson: JetPack's onnxruntime-gpu)")  # fmt: skip
    providers = ort.get_available_providers()
    found = f"onnxruntime {ort.__version__}, providers {', '.join(providers)}"
    if any(provider in providers for provider in GPU_PROVIDERS):
        return Check("ONNX Runtime", "ok", found)
    return Check("ONNX Runtime", "ok", found + " (CPU only: no CUDA or TensorRT provider in this build)",
                 "for a GPU: onnxruntime-gpu (on a Jetson, the wheel built for its JetPack)")  # fmt: skip


def _protobuf() -> Check:
    from edgekit.runtime.serve.server import STUBS_PROTOBUF

    try:
        installed = metadata.version("protobuf")
        metadata.version("grpcio")
    except metadata.PackageNotFoundError:
        return Check("serve (gRPC)", "warn", "grpcio or protobuf not installed: serve runs REST only",
                     "pip install 'edgekit[serve]'")  # fmt: skip
    if _version(installed) < _version(STUBS_PROTOBUF):
        found = f"protobuf {installed}; the gRPC stubs need {STUBS_PROTOBUF} or newer"
        fix = f"pip install 'protobuf>={STUBS_PROTOBUF},<8', or edgekit serve --no-grpc"
        return Check("serve (gRPC)", "fail", found, fix)
    return Check("serve (gRPC)", "ok", f"protobuf {installed} (the stubs need {STUBS_PROTOBUF}+)")


def _store() -> Check:
    from edgekit.runtime.store import Store

    home = edgekit_home()
    try:
        store = Store()
        installed = store.installed()
        store.active()
    except EdgekitError as exc:
        return Check("store", "fail", f"{home}: {exc}")
    broken = [f"{m.name} v{m.version}" for m in installed if m.problem]
    unreadable = [f"{m.name} v{m.version}" for m in installed if not m.problem and m.artifacts is None]
    if broken or unreadable:
        which = ", ".join(broken + unreadable)
        fix = "edgekit keys init --device (if the key is missing), or edgekit models list for each"
        return Check("store", "fail", f"{home}: {len(installed)} versions; cannot be read: {which}", fix)
    if not installed:
        return Check("store", "ok", f"{home}: no models installed yet", "edgekit install BUNDLE")
    return Check("store", "ok", f"{home}: {len(installed)} versions, each readable with this device's key")


def _trust() -> Check:
    from edgekit.core.signing import Trust

    publishers = Trust().keys()
    if not publishers:
        return Check("trusted publishers", "warn", "none: a signed bundle will be refused",
                     "edgekit trust add publisher.pub")  # fmt: skip
    return Check("trusted publishers", "ok", f"{len(publishers)}: {', '.join(sorted(publishers))}")


def _broker(url: str) -> Check:
    from edgekit.runtime.telemetry.broker import Broker

    broker = Broker.parse(url)
    client = broker.client("edgekit-doctor")
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except OSError as exc:
        fix = "check the address, that the broker runs, and that no firewall stands between"
        return Check("broker", "fail", f"{broker.url}: {exc.strerror or exc}", fix)
    finally:
        client.disconnect()
    return Check("broker", "ok", f"{broker.url} accepts connections")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())
