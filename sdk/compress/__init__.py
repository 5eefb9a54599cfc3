"""Compression beyond post-training quantization: ``pruning`` (magnitude and structured
channel pruning, distillation, for Keras 3 models), ``transformer`` (attention heads and
feed-forward neurons) and ``layers`` (rebuilding a model's layers smaller)."""

from edgekit.compress.pruning import PruningError, distill, nonzero_parameters, parameter_count, prune

__all__ = ["PruningError", "distill", "nonzero_parameters", "parameter_count", "prune"]
