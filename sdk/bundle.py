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

from edgekit.atomic import fsync_dir
from edgekit.errors import BundleError
from edgekit.profiles import DeviceProfile

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 1 << 20
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

    metric: Literal["top1", "agreement"]
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
                for entry in manifest.artifacts:
                    archive.writestr(entry.path, artifacts[entry.path])
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


def read_manifest(path: Path) -> tuple[Manifest, bytes, zipfile.ZipFile]:
    """Open a bundle, parse its manifest; return it, its exact bytes and the open archive."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such bundle") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path}: not an edgekit bundle ({exc}); convert the model again") from exc
    try:
        if archive.getinfo(MANIFEST).file_size > MAX_MANIFEST_BYTES:
            archive.close()
            raise BundleError(f"{path}: {MANIFEST} is over {MAX_MANIFEST_BYTES} bytes; not a bundle")
        manifest_bytes = archive.read(MANIFEST)
        raw = json.loads(manifest_bytes)
    except KeyError:
        archive.close()
        raise BundleError(f"{path}: not an edgekit bundle (no {MANIFEST})") from None
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        archive.close()
        raise BundleError(f"{path}: {MANIFEST} is unreadable ({exc}); the bundle is corrupt") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        archive.close()
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise BundleError(
                f"{path}: bundle format {version} is newer than this edgekit reads "
                f"({FORMAT_VERSION}); upgrade edgekit"
            )
        raise BundleError(f"{path}: unknown bundle format {version!r}")
    try:
        return Manifest.model_validate(raw), manifest_bytes, archive
    except ValidationError as exc:
        archive.close()
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"{path}: invalid manifest at '{key}': {first['msg']}") from exc


Verifier = Callable[[bytes, "bytes | None"], None]
"""Checks the exact manifest bytes against the signature entry (None when absent); raises."""


def read_bundle(path: Path, verify: Verifier | None = None) -> tuple[Manifest, dict[str, bytes]]:
    """Read a bundle, checking entries, then the signature (with ``verify``), then every
    artifact's size and hash, all before any artifact byte is returned."""
    manifest, manifest_bytes, archive = read_manifest(path)
    with archive:
        _check_entries(path, manifest, archive)
        if verify is not None:
            signature = None
            if SIGNATURE in archive.namelist():
                if archive.getinfo(SIGNATURE).file_size > MAX_MANIFEST_BYTES:
                    raise BundleError(f"{path}: {SIGNATURE} is oversized; the bundle is tampered with")
                signature = archive.read(SIGNATURE)
            verify(manifest_bytes, signature)
        contents = {}
        for entry in manifest.artifacts:
            info = archive.getinfo(entry.path)
            # Compare the declared size before reading, so a zip bomb is never inflated.
            if info.file_size != entry.size:
                raise BundleError(
                    f"{path}: {entry.path} is {info.file_size} bytes, the manifest says "
                    f"{entry.size}; the bundle is corrupt or tampered with"
                )
            try:
                data = archive.read(entry.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise BundleError(f"{path}: {entry.path} is unreadable ({exc})") from exc
            if sha256(data) != entry.sha256:
                raise BundleError(
                    f"{path}: {entry.path} does not match its sha256 in the manifest; "
                    "the bundle is corrupt or tampered with"
                )
            contents[entry.path] = data
    return manifest, contents


def _check_entries(path: Path, manifest: Manifest, archive: zipfile.ZipFile) -> None:
    names = archive.namelist()
    for info in archive.infolist():
        if info.external_attr >> 16 & 0o170000 == 0o120000:
            raise BundleError(f"{path}: entry '{info.filename}' is a symlink; the bundle is tampered with")
        if info.filename.startswith("/") or ".." in info.filename.split("/"):
            raise BundleError(f"{path}: entry '{info.filename}' escapes the bundle; it is tampered with")
    if len(names) != len(set(names)):
        raise BundleError(f"{path}: duplicate entries in the archive; the bundle is tampered with")
    expected = {MANIFEST} | {entry.path for entry in manifest.artifacts}
    extra = set(names) - expected - {SIGNATURE}
    missing = expected - set(names)
    if extra:
        raise BundleError(f"{path}: unexpected entries {sorted(extra)}; the bundle is tampered with")
    if missing:
        raise BundleError(f"{path}: missing entries {sorted(missing)}; the bundle is incomplete")
