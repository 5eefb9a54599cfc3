"""Device profiles: the hardware facts and budgets a converted model must fit.

Profiles are TOML data in ``device_configs/``, validated once into frozen pydantic
objects. Unknown keys and wrong types are errors that name the file and the key.
"""

from __future__ import annotations

import difflib
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from edgekit.core.errors import ProfileError
from edgekit.core.formats import CPU, PRECISIONS, ExecutionProvider, Format, Precision
from edgekit.core.validation import describe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Hardware(_Section):
    cpu: str
    cpu_arch: Literal["aarch64", "x86_64", "armv7l"]
    cpu_cores: int = Field(gt=0)
    ram_mb: int = Field(gt=0)
    storage_gb: float = Field(gt=0)


class Accelerator(_Section):
    kind: Literal["none", "cuda"] = "none"
    name: str | None = None
    cuda_compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    tensorrt_version: str | None = None
    jetpack: str | None = None

    @model_validator(mode="after")
    def _cuda_needs_capability(self) -> Accelerator:
        if self.kind == "cuda" and self.cuda_compute_capability is None:
            raise ValueError("kind = 'cuda' needs cuda_compute_capability, e.g. '8.7'")
        return self


class Budget(_Section):
    model_memory_mb: float = Field(gt=0)
    model_storage_mb: float = Field(gt=0)
    latency_ms: float | None = Field(default=None, gt=0)
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=100)
    max_sequence_length: int | None = Field(default=None, gt=0, le=8192)
    """Tokens per text a text model is converted for, unless the model fixes its own."""


class Precisions(_Section):
    """Preferred precisions per format, best first. A CPU and a GPU want different orders."""

    tflite: tuple[Precision, ...] = Field(default=(), max_length=len(PRECISIONS))
    onnx: tuple[Precision, ...] = Field(default=(), max_length=len(PRECISIONS))


class RuntimePreferences(_Section):
    formats: tuple[Format, ...] = Field(min_length=1)
    precisions: Precisions
    execution_providers: tuple[ExecutionProvider, ...] = (CPU,)
    threads: int = Field(gt=0)

    @model_validator(mode="after")
    def _every_format_has_precisions(self) -> RuntimePreferences:
        for fmt in self.formats:
            if not getattr(self.precisions, fmt):
                raise ValueError(f"format '{fmt}' is listed but precisions.{fmt} is empty")
        return self

    def precisions_for(self, fmt: Format) -> tuple[Precision, ...]:
        return tuple(getattr(self.precisions, fmt))


class DeviceProfile(_Section):
    """One device class: what it has and what a model may use of it."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    hardware: Hardware
    accelerator: Accelerator = Accelerator()
    budget: Budget
    runtime: RuntimePreferences


DEFAULT_MAX_ACCURACY_DROP = 1.0
"""Percentage points of top-1 accuracy a conversion may lose when the profile says nothing."""


ALIASES = {"rpi4": "raspberry-pi-4", "rpi5": "raspberry-pi-5", "pi4": "raspberry-pi-4",
           "pi5": "raspberry-pi-5", "orin-nano": "jetson-orin-nano", "orin-nx": "jetson-orin-nx",
           "agx-orin": "jetson-agx-orin", "xavier-nx": "jetson-xavier-nx", "x86": "x86-gateway",
           "arm64": "generic-arm64"}  # fmt: skip
"""Short names people type for the shipped profiles; ``--target`` takes them too."""


def _near(ref: str, known: list[str]) -> list[str]:
    """Profiles ``ref`` may have meant: those it begins or is part of (``jetson-orin``: both
    Orins), else the closest spellings."""
    containing = [name for name in known if ref and ref.lower() in name]
    return containing[:3] or difflib.get_close_matches(ref, known, n=2)


def shipped_profile_ids() -> list[str]:
    """Ids of the profiles that ship in ``edgekit.device_configs``."""
    folder = resources.files("edgekit.device_configs")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_profile(ref: str | Path) -> DeviceProfile:
    """Resolve ``ref``, a shipped profile id or a path to a TOML file, to a profile."""
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        return _load_file(path.read_bytes() if path.is_file() else None, str(path))
    known = shipped_profile_ids()
    ref = ALIASES.get(str(ref), str(ref))
    if ref not in known:
        close = _near(ref, known)
        hint = f" Did you mean {' or '.join(repr(name) for name in close)}?" if close else ""
        raise ProfileError(
            f"unknown device profile '{ref}'.{hint} Known profiles: {', '.join(known)}; "
            "or give a path to your own .toml file"
        )
    source = resources.files("edgekit.device_configs").joinpath(f"{ref}.toml")
    profile = _load_file(source.read_bytes(), f"device_configs/{ref}.toml")
    if profile.id != ref:
        raise ProfileError(f"device_configs/{ref}.toml: id is '{profile.id}', expected '{ref}'")
    return profile


def load_all_profiles() -> list[DeviceProfile]:
    return [load_profile(profile_id) for profile_id in shipped_profile_ids()]


def _load_file(data: bytes | None, name: str) -> DeviceProfile:
    if data is None:
        raise ProfileError(f"{name}: no such profile file")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{name}: not valid TOML: {exc}") from exc
    try:
        # JSON mode: strict about types (no "4" for 4) while TOML arrays still fill tuples.
        return DeviceProfile.model_validate_json(json.dumps(raw, default=str))
    except ValidationError as exc:
        raise ProfileError(f"{name}: {describe(exc)}") from exc
