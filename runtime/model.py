"""``Model``: load a bundle, pick the artifact this device runs best, predict float in, float out."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.bundle import ArtifactEntry, Manifest, read_bundle
from edgekit.errors import EdgekitError, RuntimeBackendError, ShapeError
from edgekit.runtime.backends import Backend, ONNXBackend, TensorInfo, backend_for
from edgekit.runtime.backends.onnx import ProviderSettings, import_onnxruntime
from edgekit.runtime.backends.tflite import import_interpreter
from edgekit.signing import Trust

if TYPE_CHECKING:
    from edgekit.runtime.engines import EngineCache
    from edgekit.runtime.telemetry import Telemetry

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    path: str
    format: str
    precision: str
    engine: str
    provider: str | None
    threads: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    load_ms: float
    fallbacks: tuple[str, ...]


class Model:
    """A loaded bundle. ``predict`` is safe to call from several threads."""

    def __init__(
        self, manifest: Manifest, entry: ArtifactEntry, content: bytes, backend: Backend, info: ModelInfo
    ) -> None:
        self.manifest = manifest
        self.entry = entry
        self.artifact_bytes = content
        """The verified artifact, in memory only."""
        self._backend = backend
        self.info = info
        spec = backend.inputs[0]
        self._input = spec
        self._expects = "(" + ", ".join("batch" if d is None else str(d) for d in spec.shape) + ")"
        self._telemetry: Telemetry | None = None

    @classmethod
    def load(
        cls,
        source: str | Path,
        *,
        threads: int | None = None,
        format: str | None = None,
        providers: tuple[str, ...] | None = None,
        trt_cache_dir: Path | None = None,
        warmup: bool = False,
        allow_unsigned: bool = False,
        trust: Trust | None = None,
        telemetry: Telemetry | None = None,
    ) -> Model:
        """Load a ``.ekb`` bundle, or by name the active version from the encrypted store.

        Artifact bytes never touch the disk in plaintext.

        The signature must come from a publisher in ``trust`` (default: the device's trust
        store under EDGEKIT_HOME) and every hash must match, before any byte reaches an
        interpreter. ``allow_unsigned`` accepts an unsigned bundle, with a loud warning.
        ``threads`` defaults to the profile's (at most this machine's cores); ``providers``
        to the profile's ONNX Runtime order; ``format`` to the best this device can run.
        ``telemetry`` reports every ``predict`` (see ``edgekit.runtime.Telemetry``).
        """
        started = time.perf_counter()
        manifest, contents, label, engines = _read(source, trust, allow_unsigned)
        if engines is not None:
            # ONNX Runtime writes TensorRT engines to the cache folder in plaintext, and an
            # engine is the model: store models keep theirs in the store, encrypted, instead.
            trt_cache_dir = None
        entry = choose_artifact(manifest, format)
        runtime = manifest.target.runtime
        threads = threads or min(runtime.threads, os.cpu_count() or 1)
        if entry.format == "onnx":
            backend: Backend = ONNXBackend(
                contents[entry.path],
                threads,
                providers=providers or runtime.execution_providers,
                settings=ProviderSettings(precision=entry.precision, trt_cache_dir=trt_cache_dir),
                engines=engines,
            )
        else:
            backend = backend_for(entry.format)(contents[entry.path], threads)
        model = cls(
            manifest, entry, contents[entry.path], backend, _info(manifest, entry, backend, label, threads)
        )
        if warmup:
            model.predict(np.zeros(tuple(1 if d is None else d for d in backend.inputs[0].shape), np.float32))
        model.info = replace(model.info, load_ms=(time.perf_counter() - started) * 1000)
        if telemetry is not None:
            model._attach(telemetry)
        return model

    def _attach(self, telemetry: Telemetry) -> None:
        if len(self._backend.outputs) != 1:
            raise RuntimeBackendError("telemetry reports single-output models only")
        sample = tuple(1 if d is None else d for d in self._input.shape[1:])
        telemetry.attach(self.manifest, sample, self._backend.outputs[0].shape)
        self._telemetry = telemetry

    def predict(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """Float inputs in (an array, or a dict by input name), float outputs out.

        int8 inputs are quantized and int8 outputs dequantized inside. One output comes
        back as an array, several as a dict by output name.
        """
        telemetry = self._telemetry
        if telemetry is None:
            outputs = self._backend.run(self._check(x))
        else:
            started = time.perf_counter()
            try:
                array = self._check(x)
                outputs = self._backend.run(array)
            except Exception:
                telemetry.record_error()
                raise
            telemetry.record(array, outputs[0], time.perf_counter() - started)
        if len(outputs) == 1:
            return outputs[0]
        return {info.name: out for info, out in zip(self._backend.outputs, outputs, strict=True)}

    def _check(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        spec = self._input
        if isinstance(x, dict):
            if set(x) != {spec.name}:
                raise ShapeError(f"the model takes one input named '{spec.name}', got {sorted(x)}")
            x = x[spec.name]
        array = np.asarray(x)
        if array.dtype.kind not in "fiu":
            raise ShapeError(f"input '{spec.name}' takes numbers {self._expects}, got dtype {array.dtype}")
        if array.ndim != len(spec.shape):
            hint = "; add the batch axis with x[None]" if array.ndim == len(spec.shape) - 1 else ""
            raise ShapeError(
                f"input '{spec.name}' takes rank {len(spec.shape)} {self._expects}, "
                f"got shape {array.shape}{hint}"
            )
        if any(
            want is not None and want != got
            for want, got in zip(spec.shape[1:], array.shape[1:], strict=True)
        ):
            raise ShapeError(f"input '{spec.name}' takes {self._expects}, got shape {array.shape}")
        if len(array) == 0:
            raise ShapeError(f"input '{spec.name}' is an empty batch")
        return array.astype(np.float32, copy=False)

    @property
    def backend(self) -> Backend:
        """The engine wrapper; for measurements, not for inference."""
        return self._backend

    def close(self) -> None:
        """Release the engine; with telemetry, report the open window and flush (see Telemetry.close)."""
        telemetry, self._telemetry = self._telemetry, None
        if telemetry is not None:
            telemetry.close()
        self._backend = None  # type: ignore[assignment]

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(
    source: str | Path, trust: Trust | None, allow_unsigned: bool
) -> tuple[Manifest, dict[str, bytes], str, EngineCache | None]:
    """A bundle file, verified; or by name the active version from the encrypted store,
    decrypted in memory, with its engine cache. Also what to call it in ModelInfo."""
    path = Path(source)
    if path.suffix == ".ekb" or path.exists():
        manifest, contents = read_bundle(path, (trust or Trust()).verifier(allow_unsigned, str(path)))
        return manifest, contents, str(path), None
    from edgekit.runtime.store import Store

    store = Store()
    manifest, contents = store.load(str(source))
    label = f"store:{manifest.name}/{manifest.version}"
    return manifest, contents, label, store.engines(manifest.name, manifest.version)


def _info(manifest: Manifest, entry: ArtifactEntry, backend: Backend, path: str, threads: int) -> ModelInfo:
    return ModelInfo(
        name=manifest.name,
        version=manifest.version,
        path=path,
        format=entry.format,
        precision=entry.precision,
        engine=backend.engine,
        provider=backend.provider,
        threads=threads,
        inputs=backend.inputs,
        outputs=backend.outputs,
        load_ms=0.0,
        fallbacks=tuple(backend.fallbacks),
    )


def choose_artifact(manifest: Manifest, fmt: str | None = None) -> ArtifactEntry:
    """The artifact this device runs best: ONNX when a GPU provider is here, else the
    profile's format order, among formats whose engine is installed."""
    artifacts = [a for a in manifest.artifacts if fmt is None or a.format == fmt]
    if not artifacts:
        have = ", ".join(a.format for a in manifest.artifacts)
        raise RuntimeBackendError(f"the bundle holds no {fmt} artifact (it has {have})")
    runnable = [a for a in artifacts if _engine_installed(a.format)]
    if not runnable:
        raise RuntimeBackendError(
            f"no engine for {', '.join(a.format for a in artifacts)} is installed: "
            "pip install 'edgekit[tflite]' or 'edgekit[onnx]'"
        )
    order: list[str] = list(manifest.target.runtime.formats)
    if any(a.format == "onnx" for a in runnable) and _gpu_provider_available():
        order = ["onnx", *order]
    return min(runnable, key=lambda a: order.index(a.format) if a.format in order else len(order))


def _engine_installed(fmt: str) -> bool:
    try:
        (import_onnxruntime if fmt == "onnx" else import_interpreter)()
    except EdgekitError:
        return False
    return True


def _gpu_provider_available() -> bool:
    available: list[Any] = import_onnxruntime().get_available_providers()
    return any(p in available for p in GPU_PROVIDERS)
