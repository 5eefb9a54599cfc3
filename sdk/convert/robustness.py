"""``--max-robustness-drop``: an artifact's accuracy under common corruptions (the mean over
every corruption and severity of ``edgekit.evaluate.corrupt``) may fall at most this many
points below the float model's. The corrupted copies of the evaluation data are made once
per convert run, and the float model's mean is measured once; each candidate runs on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgekit.convert.data import Dataset
from edgekit.core.errors import InputError
from edgekit.core.manifest import Robustness
from edgekit.core.samples import Feed, Samples, run_samples
from edgekit.evaluate.corrupt import SEVERITIES, suite

Run = Callable[[Feed], list[np.ndarray]]


@dataclass(frozen=True)
class RobustnessCheck:
    copies: tuple[Samples, ...]
    labels: np.ndarray
    corruptions: tuple[str, ...]
    float_model: float
    max_drop: float

    def measure(self, run: Run, output: int) -> Robustness:
        """``run`` (one engine call) on every corrupted copy: the record for the manifest."""
        artifact = float(np.mean([_accuracy(run, copy, output, self.labels) for copy in self.copies]))
        return Robustness(
            corruptions=self.corruptions, severities=SEVERITIES, float_model=self.float_model,
            artifact=artifact, drop=self.float_model - artifact, max_drop=self.max_drop,
        )


def robustness_check(
    max_drop: float | None, evaluation: Dataset | None, run: Run, output: int
) -> RobustnessCheck | None:
    """The corrupted evaluation data and the float model's accuracy on it (``run``: the
    float model), or None without ``--max-robustness-drop``."""
    if max_drop is None:
        return None
    if evaluation is None or evaluation.y is None or evaluation.y.ndim != 1:
        raise InputError("--max-robustness-drop needs --eval data with a class label y per sample")
    arrays = evaluation.samples.arrays
    if len(arrays) != 1:
        names = ", ".join(arrays)
        raise InputError(f"--max-robustness-drop takes single-input models; this one takes {names}")
    ((name, x),) = arrays.items()
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"--max-robustness-drop corrupts float inputs, and '{name}' is {x.dtype}")
    _, corruptions = suite(x)
    copies = tuple(Samples({name: apply(x, s)}) for apply in corruptions.values() for s in SEVERITIES)
    labels = evaluation.y.astype(np.int64)
    floats = float(np.mean([_accuracy(run, copy, output, labels) for copy in copies]))
    return RobustnessCheck(copies, labels, tuple(corruptions), floats, max_drop)


def _accuracy(run: Run, samples: Samples, output: int, labels: np.ndarray) -> float:
    scores = run_samples(run, samples, lambda _: None)[output]
    return float(100 * (scores.reshape(len(scores), -1).argmax(axis=1) == labels).mean())
