"""Trust before shipping: a bundle's artifacts against their float model, class by class,
calibrated, under common corruptions and under attacks transferred from float.

    from edgekit.evaluate import EvaluateOptions, evaluate
    result = evaluate(EvaluateOptions(Path("digits.ekb"), Path("digits.keras"), Path("eval.npz")))
"""

from __future__ import annotations

from edgekit.evaluate.run import EvaluateOptions, Evaluation, Tick
from edgekit.evaluate.session import evaluate, stages

__all__ = ["EvaluateOptions", "Evaluation", "Tick", "evaluate", "stages"]
