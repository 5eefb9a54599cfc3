"""The edgekit error tree.

Every error a user can cause or fix is an ``EdgekitError`` whose message says what
went wrong and what to do. The CLI prints it on one line and exits with ``exit_code``:
2 for bad input (usage), 1 for a failure of the work itself.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base of all errors that edgekit reports to a user."""

    exit_code = 1


class InputError(EdgekitError, ValueError):
    """A file, option or array the user gave is not usable as it is."""

    exit_code = 2


class ProfileError(InputError):
    """A device profile is unknown or malformed."""


class ModelFormatError(InputError):
    """A model file is missing, of an unsupported kind, or corrupt."""


class DataError(InputError):
    """Calibration or evaluation data does not fit the model."""


class ShapeError(DataError):
    """An array has the wrong rank, shape or dtype for a model input."""


class BundleError(EdgekitError):
    """A bundle is corrupt, tampered with or of an unknown format."""


class SignatureError(BundleError):
    """A bundle is unsigned, signed by an untrusted key, or its signature does not verify."""


class KeyProviderError(EdgekitError):
    """A key is missing, malformed, wrongly protected or not the one the data was sealed with."""


class StoreError(EdgekitError):
    """The on-device model store cannot do what was asked, or found itself tampered with."""


class ConversionError(EdgekitError):
    """The converter failed on a model it accepted."""


class NothingToConvertError(ConversionError):
    """A precision that would change nothing in the model: no node has a kernel for it (a
    graph of ONNX-ML operators at int8). Shipping it under that label would be a lie."""


class BudgetError(EdgekitError):
    """An artifact does not fit the device profile's memory or storage budget."""


class AccuracyBudgetError(EdgekitError):
    """A converted artifact lost more accuracy than allowed."""


class MissingDependencyError(EdgekitError):
    """An optional package that this feature needs is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed: pip install 'edgekit[{extra}]'"
        )
        self.package = package
        self.extra = extra


class RuntimeBackendError(EdgekitError):
    """An artifact could not be loaded or run by the on-device runtime."""


class InferenceError(RuntimeBackendError):
    """The engine failed on one call (its own message kept); the model is still usable."""
