"""edgekit: convert, sign, run and monitor ML models on edge devices."""

__version__ = "0.1.0"
