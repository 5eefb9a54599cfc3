"""The build-side Python API in one place: ``from edgekit.sdk import compress``."""

from edgekit import compress

__all__ = ["compress"]
