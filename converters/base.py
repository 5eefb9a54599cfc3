"""The converter contract and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

import numpy as np

from edgekit.core import formats
from edgekit.core.errors import InputError
from edgekit.core.formats import PRECISIONS, Format, Precision, SourceKind, check_precision
from edgekit.core.manifest import QuantizationScheme
from edgekit.core.samples import Samples

if TYPE_CHECKING:
    from edgekit.converters.source import SourceModel
    from edgekit.core.profiles import DeviceProfile

CalibrationMethod = Literal["minmax", "entropy", "percentile"]
"""How int8 chooses activation ranges from the calibration data (ONNX Runtime's calibrators)."""
CALIBRATION_METHODS: tuple[CalibrationMethod, ...] = get_args(CalibrationMethod)

TFLiteQuantizer = Literal["converter", "litert"]
"""Which tool quantizes TFLite int8: the TFLite converter's own quantization, or the LiteRT
Quantizer on the float model (benchmarks/tflite_quantizers.py measures both)."""
TFLITE_QUANTIZERS: tuple[TFLiteQuantizer, ...] = get_args(TFLiteQuantizer)

Advance = Callable[[int], None]
"""Called with the number of calibration samples consumed since the last call."""


@dataclass(frozen=True)
class ConversionSettings:
    """What a conversion needs beyond the model and the precision."""

    profile: DeviceProfile
    calibration_method: CalibrationMethod = "minmax"
    keep_float: tuple[str, ...] = ()
    """Node-name patterns (fnmatch) the user keeps in float."""
    tflite_quantizer: TFLiteQuantizer = "converter"
    float_nodes: tuple[str, ...] = ()
    """Node names the accuracy fallback keeps in float."""
    input_shapes: tuple[tuple[str, tuple[int | None, ...]], ...] = ()
    """TensorFlow sources: (input name, shape) for inputs whose non-batch dims the model
    leaves dynamic, fixed from the data; the batch dim stays dynamic."""


@dataclass(frozen=True)
class Artifact:
    format: str
    precision: str
    content: bytes
    seconds: float
    calibration_samples: int = 0
    opset: int | None = None
    quantization: QuantizationScheme | None = None
    """How it was quantized: scheme, symmetry, per-channel, calibration method, float nodes."""
    notes: tuple[str, ...] = field(default=())


class Converter(ABC):
    """Turns a loaded source model into one artifact of ``format`` at a precision."""

    format: ClassVar[Format]
    precisions: ClassVar[tuple[Precision, ...]]
    calibrated_precisions: ClassVar[frozenset[Precision]] = frozenset()
    """Precisions that need calibration data (``--calibration``)."""
    fallback_precisions: ClassVar[frozenset[Precision]] = frozenset({"int8"})
    """Precisions whose accuracy fallback keeps nodes in float (``rank_sensitive_nodes``)."""
    source_kinds: ClassVar[frozenset[SourceKind]]
    """Which source model kinds (keras, h5, saved_model, onnx) this converter takes."""
    ready_made_kinds: ClassVar[frozenset[SourceKind]] = frozenset()
    """Source kinds that already are an artifact of this format, packaged as they are."""
    peak_per_weight_byte: ClassVar[float] = 10.0
    """Memory a conversion holds at its peak, beyond what the process held before it, per
    byte of float32 weights: measured on the largest model tried (docs/coverage.md)."""
    registry: ClassVar[dict[str, type[Converter]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        key = cls.__dict__.get("format")
        if key is None:
            raise TypeError(f"{cls.__name__} must set a 'format' class attribute")
        if key in Converter.registry:
            raise TypeError(f"two converters claim format '{key}'")
        if key not in formats.FORMATS or not set(cls.precisions) <= set(PRECISIONS):
            raise TypeError(f"{cls.__name__}: add its format and precisions to edgekit.core.formats first")
        Converter.registry[key] = cls

    @classmethod
    def check_precision(cls, precision: str) -> Precision:
        """``precision`` if this converter makes it, else a one-line error with the choices."""
        return check_precision(precision, cls.precisions, cls.format)

    @classmethod
    def refusal(cls, precision: Precision, profile: DeviceProfile) -> str | None:
        """Why an artifact at ``precision`` cannot serve ``profile``'s engines, or None."""
        return None

    @classmethod
    def picks_fastest(cls, profile: DeviceProfile) -> bool:
        """Whether ``--precision auto`` keeps the fastest passing precision, measured on this
        host, rather than the profile's first that passes (int8 is not always faster)."""
        return False

    @abstractmethod
    def convert(
        self,
        source: SourceModel,
        precision: str,
        calibration: Samples | None,
        advance: Advance,
        settings: ConversionSettings,
    ) -> Artifact: ...

    def rank_sensitive_nodes(
        self, source: SourceModel, artifact: Artifact, calibration: Samples, settings: ConversionSettings
    ) -> list[tuple[str, ...]]:
        """Groups of nodes to keep in float, the costliest in accuracy first; [] if unknown."""
        return []

    @classmethod
    def tool_versions(cls) -> dict[str, str]:
        return {}


def channel_snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """Quantization SNR in dB from per-channel signal and noise powers, robust to outlier
    and dead channels: the median channel's signal over the mean channel noise.

    A plain whole-tensor SNR is dominated by the largest channel: one outlier channel that
    stretches the int8 range hides that every other channel was rounded to noise. A median
    of per-channel SNRs is dragged down by dead ReLU channels that carry no signal at all.
    """
    if not noise.any():
        return float("inf")
    return float(10 * np.log10(max(float(np.median(signal)), 1e-30) / float(np.mean(noise))))


def precision_choices() -> tuple[str, ...]:
    """What ``--precision`` accepts: auto, then every precision some converter makes."""
    made = {p for converter in Converter.registry.values() for p in converter.precisions}
    return ("auto", *(p for p in PRECISIONS if p in made))


def format_choices() -> tuple[str, ...]:
    """What ``--format`` accepts: every registered format."""
    return tuple(sorted(Converter.registry))


def ready_made(kind: str) -> bool:
    """Whether a source of ``kind`` already is an artifact, packaged as it is (no float model)."""
    return any(kind in converter.ready_made_kinds for converter in Converter.registry.values())


def converter_for(fmt: str) -> Converter:
    try:
        return Converter.registry[fmt]()
    except KeyError:
        known = ", ".join(sorted(Converter.registry))
        raise InputError(f"no converter for format '{fmt}'; known formats: {known}") from None
