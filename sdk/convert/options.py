"""What one ``convert`` run is asked to do, and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.compress.pruning import PruneMode
from edgekit.converters.base import CalibrationMethod, TFLiteQuantizer
from edgekit.core.formats import FormatChoice, PrecisionChoice
from edgekit.core.manifest import GateMetric
from edgekit.core.profiles import DeviceProfile

if TYPE_CHECKING:
    from edgekit.convert.candidate import Candidate
    from edgekit.core.manifest import Manifest


@dataclass(frozen=True)
class ConvertOptions:
    model: Path
    profile: DeviceProfile
    output: Path
    precision: PrecisionChoice = "auto"
    format: FormatChoice | None = None
    """A registered format, "both", or None for the profile's first format that fits the model."""
    calibration: Path | None = None
    evaluation: Path | None = None
    eval_output: str | None = None
    """The output the gate measures top-1 or agreement on; default: the only class-score output."""
    telemetry_output: str | None = None
    """The output telemetry reports classes and confidence of; default: ``eval_output``'s."""
    state: tuple[tuple[str, str], ...] = ()
    """(output, input) pairs of a streaming model's recurrent state; default: found from names."""
    max_accuracy_drop: float | None = None
    max_robustness_drop: float | None = None
    """Points of top-1 under common corruptions the artifact may lose against float; None: not checked."""
    allow_accuracy_drop: bool = False
    allow_over_budget: bool = False
    force: bool = False
    name: str | None = None
    version: int = 1
    labels: Path | None = None
    label_column: str | None = None
    """CSV data: the column that holds the labels (default: one named y)."""
    gate_metric: GateMetric = "top1"
    tokenizer: Path | None = None
    """A Hugging Face tokenizer.json: it travels in the bundle, and .jsonl data is tokenized by it."""
    max_sequence_length: int | None = None
    """Tokens per text; default: the model's own fixed length, else the profile's, else 128."""
    max_perplexity_increase: float = 5.0
    """A decoder's gate: perplexity on --eval text at most this % above the float model's."""
    calibration_method: CalibrationMethod = "minmax"
    tflite_quantizer: TFLiteQuantizer = "converter"
    keep_float: tuple[str, ...] = ()
    input_shape: tuple[int | None, ...] | None = None
    sign_key: Path | None = None
    """An Ed25519 private key (edgekit keys init --publisher) to sign the bundle with."""
    prune: float | None = None
    """Fraction of channels (structured) or weights (magnitude) to prune before converting."""
    prune_mode: PruneMode = "structured"
    train_data: Path | None = None
    """.npz with x and integer labels y, to fine-tune the pruned model."""
    prune_epochs: int = 5
    drop_layers: int = 0
    """A transformer: whole blocks to remove, each the one whose removal costs the least loss."""


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    manifest: Manifest
    tried: tuple[Candidate, ...]
    warnings: tuple[str, ...] = field(default=())
    contents: dict[str, bytes] = field(default_factory=dict, repr=False)
    """The chosen artifacts' bytes by path, as the bundle holds them."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step (load, float model, conversion, gate, memory probe, latency, ...)."""
