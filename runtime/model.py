"""``Model``: load a bundle, pick the artifact this device runs best, predict float in, float out."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.core.bundle import read_bundle
from edgekit.core.errors import InputError, RuntimeBackendError
from edgekit.core.formats import ExecutionProvider
from edgekit.core.manifest import ArtifactEntry, Manifest
from edgekit.core.signing import Trust
from edgekit.core.text import TEXT_FEATURES, TEXT_INPUT, TextEncoder, TextInputs
from edgekit.runtime.backends import Backend, TensorInfo, backend_for, zeros_feed
from edgekit.runtime.feeds import check_feed
from edgekit.runtime.isolated import IsolatedBackend, Isolation, Recipe, build
from edgekit.runtime.stream import Stream

if TYPE_CHECKING:
    from edgekit.runtime.engines import EngineCache
    from edgekit.runtime.follow import FollowedModel
    from edgekit.runtime.generate import Generation, TextGenerator
    from edgekit.runtime.telemetry import Telemetry


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
        self._names = tuple(out.name for out in backend.outputs)
        self._telemetry: Telemetry | None = None
        self._reported = (backend.inputs[0].name, 0)
        """For telemetry: the input whose features it bins, and the index of the primary output."""
        self.tokenizer_bytes: bytes | None = None
        """A text model's tokenizer.json, from the bundle (verified, in memory only)."""
        self._encoder: TextEncoder | None = None
        self._generator: TextGenerator | None = None
        self._on_generated: Callable[..., None] | None = None

    @classmethod
    def load(
        cls,
        source: str | Path,
        *,
        threads: int | None = None,
        format: str | None = None,
        providers: tuple[ExecutionProvider, ...] | None = None,
        trt_cache_dir: Path | None = None,
        warmup: bool = False,
        allow_unsigned: bool = False,
        trust: Trust | None = None,
        telemetry: Telemetry | None = None,
        max_bytes: int | None = None,
        isolate: bool | Isolation = False,
        version: int | None = None,
    ) -> Model:
        """Load a ``.ekb`` bundle, or by name the active version from the encrypted store.

        Artifact bytes never touch the disk in plaintext.

        The signature must come from a publisher in ``trust`` (default: the device's trust
        store under EDGEKIT_HOME) and every hash must match, before any byte reaches an
        interpreter. ``allow_unsigned`` accepts an unsigned bundle, with a loud warning.
        ``threads`` defaults to the profile's (at most this machine's cores); ``providers``
        to the profile's ONNX Runtime order; ``format`` to the best this device can run.
        ``telemetry`` reports every ``predict`` (see ``edgekit.runtime.Telemetry``).
        ``max_bytes`` caps a bundle file's artifacts (default for an unsigned one: its
        profile's storage budget). ``isolate`` runs the engine in a child process with memory
        and time limits (``Isolation``), for models nobody vouches for: a crash there is a
        ``RuntimeBackendError`` here (see ``edgekit.runtime.isolated``). ``version`` picks
        an installed version of a store model other than the active one.
        """
        started = time.perf_counter()
        manifest, contents, label, engines = _read(source, trust, allow_unsigned, max_bytes, version)
        if engines is not None:
            # ONNX Runtime writes TensorRT engines to the cache folder in plaintext, and an
            # engine is the model: store models keep theirs in the store, encrypted, instead.
            trt_cache_dir = None
        entry = choose_artifact(manifest, format)
        runtime = manifest.target.runtime
        threads = threads or min(runtime.threads, os.cpu_count() or 1)
        recipe = Recipe(entry.format, contents[entry.path], threads,
                        providers or runtime.execution_providers, entry.precision)
        if isolate:
            backend: Backend = IsolatedBackend(
                recipe, isolate if isinstance(isolate, Isolation) else Isolation()
            )
        else:
            backend = build(recipe, engines, trt_cache_dir)
        model = cls(
            manifest, entry, contents[entry.path], backend, _info(manifest, entry, backend, label, threads)
        )
        if manifest.text is not None:
            model.tokenizer_bytes = contents[manifest.text.file]
        if warmup:
            backend.run(zeros_feed(backend.inputs))
        model.info = replace(model.info, load_ms=(time.perf_counter() - started) * 1000)
        if telemetry is not None:
            model._attach(telemetry)
        return model

    @classmethod
    def follow(
        cls, name: str, *, telemetry: Callable[[], Telemetry] | None = None, interval: float = 0.5,
        **options: Any,
    ) -> FollowedModel:  # fmt: skip
        """The store model ``name``, following its active version: what ``edgekit agent``
        installs, or ``models activate`` and ``rollback`` choose, is what the next call runs,
        swapped in between calls with no failed call (see ``edgekit.runtime.follow``).
        ``telemetry`` makes one ``Telemetry`` per version (each reports one version);
        ``options`` are ``load``'s, but for ``version``."""
        from edgekit.runtime.follow import FollowedModel
        from edgekit.runtime.store import Store

        if "version" in options:
            raise InputError("Model.follow runs the active version; load a given version with Model.load")
        if Path(name).suffix == ".ekb" or Path(name).is_file():
            raise InputError(f"{name} is a bundle file; install it, then follow it by name")
        return FollowedModel(
            name, lambda made: cls.load(name, telemetry=made, **options), Store(), telemetry, interval
        )

    def _attach(self, telemetry: Telemetry) -> None:
        if self.manifest.generation is not None:  # a decoder reports its generations
            self._on_generated = telemetry.attach_generation(self.manifest)
            self._telemetry = telemetry
            return
        self._reported = reported_tensors(self.manifest, self._backend)
        name, index = self._reported
        if name == TEXT_INPUT:
            sample: tuple[int, ...] = (len(TEXT_FEATURES),)
        else:
            spec = next(info for info in self._backend.inputs if info.name == name)
            sample = tuple(1 if d is None else d for d in spec.shape[1:])
        telemetry.attach(self.manifest, sample, self._backend.outputs[index].shape)
        self._telemetry = telemetry

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """Inputs in (an array for a single-input model, else a dict by input name; float
        inputs as float), outputs out: one output as an array, several as a dict by name.

        int8 inputs are quantized and int8 outputs dequantized inside.
        """
        return self._named(self.run(x))

    def _named(self, outputs: list[np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        return outputs[0] if len(outputs) == 1 else dict(zip(self._names, outputs, strict=True))

    def run(
        self, x: np.ndarray | Mapping[str, np.ndarray], texts: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        """``predict``, with every output in ``info.outputs`` order; ``texts``: what a text
        model's feed was tokenized from, for telemetry's (de-identified) captures."""
        telemetry = self._telemetry
        if telemetry is None:
            return self._backend.run(check_feed(self._backend.inputs, x))
        started = time.perf_counter()
        try:
            feed = check_feed(self._backend.inputs, x)
            outputs = self._backend.run(feed)
        except Exception:
            telemetry.record_error()
            raise
        name, index = self._reported
        reported = self.text_encoder.features(feed) if name == TEXT_INPUT else feed[name]
        telemetry.record(reported, outputs[index], time.perf_counter() - started, texts)
        return outputs

    def predict_text(self, texts: Sequence[str]) -> np.ndarray | dict[str, np.ndarray]:
        """``predict`` on texts, tokenized here by the bundle's own tokenizer: padded and
        truncated to its sequence length (``text_truncated`` counts the cut ones)."""
        if self.manifest.generation is not None:
            raise InputError(f"{self.manifest.name} generates text: use generate (edgekit generate)")
        return self._named(self.run(self.text_encoder.encode(texts), texts))

    def tag_text(self, texts: Sequence[str]) -> list[list[tuple[str, str | None]]]:
        """A token classification model's tag for each space-separated word of each text,
        named by the bundle's labels: ``[("kitchen", "B-ROOM"), ("lights", "B-DEVICE")]``,
        scored at the word's first token. A word past the sequence length gets None."""
        spec = self.manifest.text
        if spec is not None and spec.task != "tokens":
            raise InputError(f"{self.manifest.name} classifies whole texts, not words: use predict_text")
        feed, starts = self.text_encoder.encode_words(texts)
        outputs = self.run(feed, texts)
        primary = self.manifest.primary_output
        tags = outputs[self._names.index(primary) if primary in self._names else 0].argmax(axis=-1)
        labels = self.manifest.labels

        def name(index: int) -> str:
            return labels[index] if labels and index < len(labels) else str(index)

        return [
            [
                (word, name(int(row[p])) if p >= 0 else None)
                for word, p in zip(text.split(), first, strict=True)
            ]
            for text, first, row in zip(texts, starts, tags, strict=True)
        ]

    @property
    def text_encoder(self) -> TextEncoder:
        """The bundle's tokenizer, set up for this model's inputs (needs ``edgekit[text]``)."""
        if self._encoder is None:
            spec = self.manifest.text
            if spec is None or self.tokenizer_bytes is None:
                raise InputError(
                    f"{self.manifest.name} is not a text model (its bundle has no tokenizer); "
                    "convert it with --tokenizer tokenizer.json"
                )
            dtypes = {info.name: info.dtype for info in self._backend.inputs}
            roles = TextInputs(spec.ids, spec.mask, spec.type_ids)
            ids = next(info for info in self._backend.inputs if info.name == spec.ids)
            dynamic = spec.dynamic_length and len(ids.shape) > 1 and ids.shape[1] is None
            self._encoder = TextEncoder(self.tokenizer_bytes, spec.max_length, roles, dtypes, dynamic)
        return self._encoder

    @property
    def text_truncated(self) -> int:
        """Texts cut to the bundle's sequence length so far."""
        return self._encoder.truncated if self._encoder else 0

    def generate(self, prompt: str, **settings: Any) -> str:
        """A decoder bundle's continuation of ``prompt``: greedy by default; ``settings`` are
        ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``,
        ``seed``, ``stop`` (strings) and ``stop_tokens`` (ids). See docs/generate.md."""
        return "".join(self.generate_stream(prompt, **settings))

    def generate_stream(self, prompt: str, **settings: Any) -> Iterator[str]:
        """``generate``, yielding each piece of text as it comes; ``last_generation`` then
        holds the tokens and why it stopped."""
        from edgekit.runtime.generate import Sampling

        sampling = Sampling.of(settings)
        return self.text_generator.stream(prompt, sampling)

    @property
    def text_generator(self) -> TextGenerator:
        if self._generator is None:
            spec = self.manifest.generation
            if spec is None or self.tokenizer_bytes is None:
                raise InputError(
                    f"{self.manifest.name} does not generate text: convert a decoder (past_key_values "
                    "inputs) with --tokenizer tokenizer.json"
                )
            from edgekit.runtime.generate import TextGenerator

            step = self._backend.decoder_step({present for _, present in spec.cache})
            names, on_done = list(self._names), self._on_generated
            self._generator = TextGenerator(step, names, spec, self.tokenizer_bytes, on_done)
        return self._generator

    @property
    def last_generation(self) -> Generation | None:
        return self._generator.last if self._generator else None

    def stream(self) -> Stream:
        """A stream over the bundle's state pairs: ``step`` feeds each state back; each
        stream holds its own state."""
        return Stream(self)

    @property
    def backend(self) -> Backend:
        """The engine wrapper; for measurements, not for inference."""
        return self._backend

    def close(self) -> None:
        """Release the engine; with telemetry, report the open window and flush (see Telemetry.close)."""
        telemetry, self._telemetry = self._telemetry, None
        if telemetry is not None:
            telemetry.close()
        if self._backend is not None:
            self._backend.close()
        self._backend = None  # type: ignore[assignment]

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(
    source: str | Path, trust: Trust | None, allow_unsigned: bool, max_bytes: int | None, version: int | None
) -> tuple[Manifest, dict[str, bytes], str, EngineCache | None]:
    """A bundle file, verified; or by name the active version from the encrypted store,
    decrypted in memory, with its engine cache. Also what to call it in ModelInfo."""
    path = Path(source)
    if path.suffix == ".ekb" or path.exists():
        if version is not None:
            raise InputError(f"{path} is a bundle file; a version picks one of a store model's versions")
        verify = (trust or Trust()).verifier(allow_unsigned, str(path))
        manifest, contents = read_bundle(path, verify, max_bytes)
        return manifest, contents, str(path), None
    from edgekit.runtime.store import Store

    store = Store()
    manifest, contents = store.load(str(source), version)
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
    gpu = [a.format for a in runnable if backend_for(a.format).runs_on_gpu()]
    order = [*gpu, *order]
    return min(runnable, key=lambda a: order.index(a.format) if a.format in order else len(order))


def _engine_installed(fmt: str) -> bool:
    return fmt in Backend.registry and backend_for(fmt).available()


def reported_tensors(manifest: Manifest, backend: Backend) -> tuple[str, int]:
    """The input telemetry bins and the index of the output it reports, from the manifest."""
    names = [out.name for out in backend.outputs]
    primary = manifest.primary_output or (names[0] if len(names) == 1 else None)
    if primary not in names:
        raise RuntimeBackendError(
            f"telemetry reports one output, and the bundle names none of {', '.join(names)}; "
            "convert again with --telemetry-output NAME"
        )
    if manifest.text is not None:
        return TEXT_INPUT, names.index(primary)
    floats = [i.name for i in backend.inputs if i.quantized or i.dtype.startswith("float")]
    wanted = manifest.reference.input if manifest.reference and manifest.reference.input else None
    name = wanted if wanted in floats else next(iter(floats), None)
    if name is None:
        raise RuntimeBackendError("telemetry bins a float input's features, and this model has none")
    return name, names.index(primary)
