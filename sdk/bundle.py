"""The ``.ekb`` bundle: one zip holding ``manifest.json``, the artifacts, and later ``manifest.sig``.

The manifest records every artifact's sha256 and size, so one signature over the manifest
bytes covers the whole bundle. Readers check every hash before an artifact is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.archive import Archive
from edgekit.atomic import fsync_dir
from edgekit.classes import ClassComparison
from edgekit.errors import BundleError, SignatureError
from edgekit.profiles import DeviceProfile, load_profile, shipped_profile_ids

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 4096
_ARTIFACT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantization(_Strict):
    scale: float
    zero_point: int


class Tensor(_Strict):
    name: str
    shape: tuple[int | None, ...]
    dtype: str
    quantization: Quantization | None = None


class OutputSimilarity(_Strict):
    agreement: float
    cosine: float
    max_abs_error: float


class Accuracy(_Strict):
    """Float model against the artifact on the same evaluation data."""

    metric: Literal["top1", "agreement", "macro-f1"]
    output: str | None = Field(default=None, description="the output top-1 or agreement is measured on")
    samples: int
    float_model: float = Field(description="float model: top-1 % (labels) or 100")
    artifact: float = Field(description="artifact: top-1 % (labels) or agreement %")
    drop: float = Field(description="percentage points lost")
    max_drop: float
    agreement: float
    cosine: float
    max_abs_error: float
    outputs: dict[str, OutputSimilarity] | None = Field(default=None, description="several outputs: each one")
    classes: ClassComparison | None = Field(default=None, description="with labels: per-class scores of both")
    gate: Literal["passed", "overridden"]


class Metrics(_Strict):
    size_bytes: int
    float_parameter_bytes: int
    size_ratio: float = Field(description="artifact bytes / float32 parameter bytes")
    peak_memory_bytes: int = Field(description="measured: peak RSS added by load + invoke")
    host_latency_ms: float = Field(description="median batch-1 latency on the converting host")
    conversion_seconds: float
    calibration_samples: int
    accuracy: Accuracy | None = None
    within_budget: bool


class QuantizationScheme(_Strict):
    """How an artifact was made smaller; recorded so a device and a person know what runs."""

    scheme: str
    weights: str | None = None
    activations: str | None = None
    per_channel: bool | None = None
    calibration_method: str | None = None
    target: Literal["tensorrt", "cpu"] | None = None
    io: str | None = None
    float_nodes: tuple[str, ...] = Field(default=(), description="nodes kept in float")


class CandidateRecord(_Strict):
    precision: str
    size_bytes: int
    host_latency_ms: float
    accuracy_drop: float | None
    problems: tuple[str, ...]


class Selection(_Strict):
    """Why this precision: given, first in the profile's order to pass, or fastest measured."""

    method: Literal["explicit", "profile-order", "measured-fastest"]
    reason: str
    candidates: tuple[CandidateRecord, ...]


class ArtifactEntry(_Strict):
    path: str = Field(pattern=_ARTIFACT_NAME)
    format: str
    precision: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    metrics: Metrics
    opset: int | None = None
    quantization: QuantizationScheme | None = None
    selection: Selection | None = None


class Source(_Strict):
    file: str
    kind: str
    sha256: str
    size_bytes: int


class Preprocessing(_Strict):
    layout: str | None = Field(description="NHWC for images from TensorFlow, None otherwise")
    input_range: tuple[float, float] | None = Field(
        description="min and max of the calibration data, the range the model was quantized for"
    )
    ranges: dict[str, tuple[float, float]] | None = Field(
        default=None, description="per input: min and max seen in the conversion data (for bench inputs)"
    )


class ReferenceStats(_Strict):
    """Input and output distributions of the conversion data, the baseline for drift (PSI)."""

    samples: int
    input: str | None = Field(default=None, description="several inputs: the float input binned here")
    features: Literal["values", "channels", "global"] = Field(
        description="values: each input value; channels: per-channel mean then std; global: mean, std"
    )
    channel_axis: int | None = Field(description="per-sample axis of the channels, for 'channels'")
    edges: tuple[tuple[float, ...], ...] = Field(description="per feature: inner edges of the decile bins")
    expected: tuple[tuple[float, ...], ...] = Field(description="per feature: fraction of data per bin")
    outputs: Literal["probabilities", "logits", "values"]
    classes: tuple[float, ...] | None = Field(description="fraction of the data predicted as each class")


class StatePair(_Strict):
    """A recurrent state: what ``output`` gives back is fed to ``input`` at the next step."""

    output: str
    input: str


class TextSpec(_Strict):
    """A text model's tokenizer, carried in the bundle, and how its output feeds the model."""

    file: str = Field(pattern=_ARTIFACT_NAME, description="the bundle entry: a Hugging Face tokenizer.json")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    max_length: int = Field(ge=1, description="tokens per text: longer ones are truncated, and counted")
    vocab_size: int = Field(ge=1)
    ids: str = Field(description="the input that takes token ids")
    mask: str | None = Field(default=None, description="the attention-mask input, if the model has one")
    type_ids: str | None = Field(default=None, description="the token-type input, if the model has one")


class Compression(_Strict):
    """Pruning applied to the source model before conversion (``convert --prune``)."""

    method: Literal["structured", "magnitude"]
    sparsity: float
    parameters_before: int
    parameters_after: int = Field(description="non-zero parameters after pruning")
    fine_tune_epochs: int
    train_samples: int
    top1_before: float | None = Field(default=None, description="unpruned float model on --eval labels, %")
    top1_after: float | None = Field(default=None, description="pruned float model on --eval labels, %")


class Manifest(_Strict):
    format_version: int
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: int = Field(ge=1)
    created: str
    source: Source
    profile: dict[str, Any]
    artifacts: tuple[ArtifactEntry, ...] = Field(min_length=1)
    preprocessing: Preprocessing
    labels: tuple[str, ...] | None = None
    tools: dict[str, str]
    primary_output: str | None = Field(
        default=None, description="the output telemetry reports classes and confidence of"
    )
    state: tuple[StatePair, ...] = Field(default=(), description="a streaming model's recurrent state")
    reference: ReferenceStats | None = None
    compression: Compression | None = None
    text: TextSpec | None = None
    fit: tuple[dict[str, Any], ...] | None = Field(
        default=None, description="edgekit fit: every candidate's numbers and why it won or lost"
    )

    @property
    def target(self) -> DeviceProfile:
        """The profile the bundle was made for, as the typed object the build side validated."""
        try:
            return DeviceProfile.model_validate_json(json.dumps(self.profile))
        except ValidationError as exc:
            raise BundleError(f"the bundle's device profile is not valid: {exc.errors()[0]['msg']}") from exc

    @property
    def files(self) -> tuple[tuple[str, str, int], ...]:
        """Every entry besides the manifest and signature: (path, sha256, size)."""
        found = tuple((a.path, a.sha256, a.size) for a in self.artifacts)
        return found + (((self.text.file, self.text.sha256, self.text.size),) if self.text else ())

    def canonical_bytes(self) -> bytes:
        """The exact bytes stored as manifest.json, and later signed."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2).encode() + b"\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(
    path: Path, manifest: Manifest, artifacts: dict[str, bytes], signature: bytes | None = None
) -> None:
    """Write the bundle atomically: a temp file in the same folder, fsync, rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror}; choose another -o") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(MANIFEST, manifest.canonical_bytes())
                if signature is not None:
                    archive.writestr(SIGNATURE, signature)
                for name, _, _ in manifest.files:
                    archive.writestr(name, artifacts[name])
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise BundleError(
            f"cannot write {path}: {exc.strerror}; free some disk space or choose another -o "
            "(any earlier bundle there is unchanged)"
        ) from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class SignatureEntry(_Strict):
    """``manifest.sig``: who signed the manifest bytes, and the Ed25519 signature."""

    algorithm: Literal["ed25519"]
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(max_length=128)

    @classmethod
    def parse(cls, data: bytes, where: str) -> SignatureEntry:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise SignatureError(
                f"{where}: manifest.sig is malformed ({_first(exc)}); the bundle is tampered with"
            ) from None


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Validate manifest bytes (the parser limits nesting), format version first."""
    try:
        header = _Header.model_validate_json(data)
    except ValidationError as exc:
        raise BundleError(
            f"{where}: {MANIFEST} is unreadable ({_first(exc)}); the bundle is corrupt"
        ) from None
    if header.format_version != FORMAT_VERSION:
        if isinstance(header.format_version, int) and header.format_version > FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format {header.format_version} is newer than this edgekit reads "
                f"({FORMAT_VERSION}); upgrade edgekit"
            )
        raise BundleError(f"{where}: unknown bundle format {header.format_version!r}")
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{where}: invalid manifest at '{key}': {first['msg']}") from None


class _Header(BaseModel):
    format_version: Any = None


def _first(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"])


def read_manifest(path: Path) -> Manifest:
    """A bundle's manifest, for display on the build side (nothing is verified)."""
    with Archive(path) as archive:
        return parse_manifest(_manifest_bytes(archive), str(path))


Verifier = Callable[[bytes, "bytes | None"], None]
"""Checks the exact manifest bytes against the signature entry (None when absent); raises."""


def read_bundle(
    path: Path, verify: Verifier | None = None, max_bytes: int | None = None
) -> tuple[Manifest, dict[str, bytes]]:
    """Read a bundle in the order docs/security.md states: the archive's entries, the
    signature over the raw manifest bytes (with ``verify``), the manifest, then every
    artifact's size and hash, all before any artifact byte is returned.

    Artifacts are capped at ``max_bytes`` in all; without it, an unsigned bundle that
    ``verify`` accepts (``allow_unsigned``) at its profile's storage budget. Reading without
    ``verify`` (the build side: sign, inspect a fresh output) is not capped."""
    with Archive(path) as archive:
        manifest_bytes = _manifest_bytes(archive)
        signature = None
        if SIGNATURE in archive.names:
            signature = archive.read(SIGNATURE, MAX_SIGNATURE_BYTES, "a signature")
        if verify is not None:
            verify(manifest_bytes, signature)
        manifest = parse_manifest(manifest_bytes, str(path))
        _check_listed(path, manifest, archive.names)
        unverified = verify is not None and signature is None  # a device accepting an unsigned bundle
        cap = max_bytes if max_bytes is not None else (storage_budget(manifest) if unverified else None)
        total = sum(size for _, _, size in manifest.files)
        if cap is not None and total > cap:
            raise BundleError(
                f"{path}: its artifacts are {total} bytes, over the {cap}-byte limit "
                f"({'given' if max_bytes is not None else 'the storage budget of ' + manifest.target.id}); "
                "sign the bundle or raise the limit (--max-size)"
            )
        return manifest, {
            name: _entry(path, archive, name, digest, size) for name, digest, size in manifest.files
        }


def storage_budget(manifest: Manifest) -> int:
    """The model storage budget of the bundle's device profile: the one edgekit ships under
    its id when there is one (an unsigned manifest can claim any budget), else its own."""
    profile = manifest.target
    if profile.id in shipped_profile_ids():
        profile = load_profile(profile.id)
    return int(profile.budget.model_storage_mb * (1 << 20))


def _manifest_bytes(archive: Archive) -> bytes:
    if MANIFEST not in archive.names:
        raise BundleError(f"{archive.path}: not an edgekit bundle (no {MANIFEST})")
    return archive.read(MANIFEST, MAX_MANIFEST_BYTES, "a manifest")


def _entry(path: Path, archive: Archive, name: str, digest: str, size: int) -> bytes:
    # The declared size is compared before reading, and no read inflates past it.
    if archive.size(name) != size:
        raise BundleError(
            f"{path}: {name} is {archive.size(name)} bytes, the manifest says "
            f"{size}; the bundle is corrupt or tampered with"
        )
    data = archive.read(name, size, "this entry")
    if sha256(data) != digest:
        raise BundleError(
            f"{path}: {name} does not match its sha256 in the manifest; "
            "the bundle is corrupt or tampered with"
        )
    return data


def _check_listed(path: Path, manifest: Manifest, names: set[str]) -> None:
    expected = {MANIFEST} | {name for name, _, _ in manifest.files}
    extra = names - expected - {SIGNATURE}
    missing = expected - names
    if extra:
        raise BundleError(f"{path}: unexpected entries {sorted(extra)}; the bundle is tampered with")
    if missing:
        raise BundleError(f"{path}: missing entries {sorted(missing)}; the bundle is incomplete")
