"""The bundle's manifest as typed records: what ``manifest.json`` holds, field by field.

Every record is strict (unknown keys are errors) and frozen. ``edgekit.core.bundle`` reads and
writes these inside the ``.ekb`` zip; this module only describes them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.core.classes import ClassComparison
from edgekit.core.errors import BundleError
from edgekit.core.profiles import DeviceProfile

FORMAT_VERSION = 1
_ARTIFACT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantization(Strict):
    scale: float
    zero_point: int


class Tensor(Strict):
    name: str
    shape: tuple[int | None, ...]
    dtype: str
    quantization: Quantization | None = None


class OutputSimilarity(Strict):
    agreement: float
    cosine: float
    max_abs_error: float


class Robustness(Strict):
    """``--max-robustness-drop``: top-1 under common corruptions, float against the artifact."""

    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    float_model: float = Field(description="float model: mean top-1 % over every corruption and severity")
    artifact: float = Field(description="artifact: the same mean")
    drop: float = Field(description="percentage points lost under corruption")
    max_drop: float


Metric = Literal["top1", "agreement", "macro-f1"]
"""What an accuracy gate compared: top-1 or macro-F1 against labels, else agreement with float."""
GateMetric = Literal["top1", "macro-f1"]
"""With labels, what the accuracy gate compares (macro-F1 weighs every class alike)."""
GateVerdict = Literal["passed", "overridden"]
Level = Literal["sample", "word", "position", "map"]
"""What one comparison is made over: see ``Accuracy.level``."""


class Accuracy(Strict):
    """Float model against the artifact on the same evaluation data."""

    metric: Metric
    level: Level = Field(
        default="sample",
        description="word: token classification, top-1 per word, macro-F1 per span or tag; "
        "position: agreement per position of a sequence of class scores; map: an output that is "
        "not class scores (a detector's maps), judged by every output's cosine alone",
    )
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
    robustness: Robustness | None = Field(default=None, description="with --max-robustness-drop")
    gate: GateVerdict


class GenerationQuality(Strict):
    """A decoder's gate: perplexity on held-out text, float against the artifact, and how many
    of the float model's greedy continuation tokens the artifact repeats."""

    texts: int
    tokens: int = Field(description="tokens scored for perplexity")
    float_perplexity: float
    artifact_perplexity: float
    increase: float = Field(description="perplexity increase, %")
    max_increase: float
    agreement: float = Field(description="% of greedy continuation tokens equal to the float model's")
    continuation_tokens: int = Field(description="greedy tokens compared per held-out prompt")
    gate: GateVerdict


class Metrics(Strict):
    size_bytes: int
    float_parameter_bytes: int
    size_ratio: float = Field(description="artifact bytes / float32 parameter bytes")
    peak_memory_bytes: int = Field(description="measured: peak RSS added by load + invoke")
    model_memory_bytes: int | None = Field(
        default=None, description="a decoder's weights and its cache at the full context, computed"
    )
    host_latency_ms: float = Field(description="median batch-1 latency on the converting host")
    conversion_seconds: float
    calibration_samples: int
    accuracy: Accuracy | None = None
    generation: GenerationQuality | None = None
    within_budget: bool


class QuantizationScheme(Strict):
    """How an artifact was made smaller; recorded so a device and a person know what runs."""

    scheme: str
    weights: str | None = None
    activations: str | None = None
    per_channel: bool | None = None
    calibration_method: str | None = None
    target: Literal["tensorrt", "cpu"] | None = None
    io: str | None = None
    float_nodes: tuple[str, ...] = Field(default=(), description="nodes kept in float")


class CandidateRecord(Strict):
    precision: str
    size_bytes: int
    host_latency_ms: float
    accuracy_drop: float | None
    problems: tuple[str, ...]


class Selection(Strict):
    """Why this precision: given, first in the profile's order to pass, or fastest measured."""

    method: Literal["explicit", "profile-order", "measured-fastest"]
    reason: str
    candidates: tuple[CandidateRecord, ...]


class ArtifactEntry(Strict):
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


class Source(Strict):
    file: str
    kind: str
    sha256: str
    size_bytes: int


class Preprocessing(Strict):
    layout: str | None = Field(description="NHWC for images from TensorFlow, None otherwise")
    input_range: tuple[float, float] | None = Field(
        description="min and max of the calibration data, the range the model was quantized for"
    )
    ranges: dict[str, tuple[float, float]] | None = Field(
        default=None, description="per input: min and max seen in the conversion data (for bench inputs)"
    )


class ReferenceStats(Strict):
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


class StatePair(Strict):
    """A recurrent state: what ``output`` gives back is fed to ``input`` at the next step."""

    output: str
    input: str


class TextSpec(Strict):
    """A text model's tokenizer, carried in the bundle, and how its output feeds the model."""

    file: str = Field(pattern=_ARTIFACT_NAME, description="the bundle entry: a Hugging Face tokenizer.json")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    max_length: int = Field(ge=1, description="tokens per text: longer ones are truncated, and counted")
    dynamic_length: bool = Field(
        default=False,
        description="the artifact takes any length up to max_length: each call is padded to its longest text",
    )
    vocab_size: int = Field(ge=1)
    ids: str = Field(description="the input that takes token ids")
    mask: str | None = Field(default=None, description="the attention-mask input, if the model has one")
    type_ids: str | None = Field(default=None, description="the token-type input, if the model has one")
    task: Literal["sequence", "tokens", "generate"] = Field(
        default="sequence",
        description="tokens: a tag per token (labels are the tags), scored at each word's first token; "
        "generate: a decoder (see ``Manifest.generation``)",
    )


class GenerationSpec(Strict):
    """A decoder that generates text: which inputs and outputs carry the ids and the key-value
    cache, its layout, and when to stop. The cache of a batch of one holds 2 x layers tensors
    of (1, heads, tokens, head_size), tokens at most ``max_context``."""

    ids: str
    mask: str | None = None
    positions: str | None = None
    logits: str
    cache: tuple[tuple[str, str], ...] = Field(min_length=1, description="(past input, present output) pairs")
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    head_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    max_context: int = Field(ge=1, description="prompt and generated tokens together, at most")
    cache_dtype: str = "float32"
    stop_tokens: tuple[int, ...] = Field(default=(), description="token ids that end a generation")
    block_size: int | None = Field(default=None, description="4-bit and 8-bit weights: quantization block")

    def cache_bytes(self, tokens: int) -> int:
        """What the cache takes at ``tokens`` tokens of context, batch 1."""
        width = 2 if self.cache_dtype == "float16" else 4
        return 2 * self.layers * self.heads * self.head_size * tokens * width


class Compression(Strict):
    """Pruning applied to the source model before conversion (``convert --prune``)."""

    method: Literal["structured", "magnitude", "heads", "layers"] = Field(
        description="heads: a transformer's attention heads and feed-forward neurons (and maybe "
        "whole blocks); layers: whole transformer blocks only"
    )
    sparsity: float
    parameters_before: int
    parameters_after: int = Field(description="non-zero parameters after pruning")
    fine_tune_epochs: int
    train_samples: int
    top1_before: float | None = Field(default=None, description="unpruned float model on --eval labels, %")
    top1_after: float | None = Field(default=None, description="pruned float model on --eval labels, %")
    heads: tuple[int, int] | None = Field(default=None, description="attention heads before, after")
    neurons: tuple[int, int] | None = Field(default=None, description="feed-forward neurons before, after")
    distilled: bool = Field(default=False, description="fine-tuned against the unpruned model's outputs")
    layers: tuple[int, int] | None = Field(default=None, description="transformer blocks before, after")
    dropped: tuple[str, ...] = Field(default=(), description="the dropped blocks, by their attention layer")


class Manifest(Strict):
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
    generation: GenerationSpec | None = Field(default=None, description="a decoder that generates text")
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
