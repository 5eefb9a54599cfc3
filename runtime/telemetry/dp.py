"""What one window's report releases under differential privacy, and why it is private.

The report is a vector of counts: three scalars (inferences, calls, errors) and H
histograms (latency, and for a classifier classes and confidence, and one row of bins per
input feature when the bundle has reference statistics). Its privacy unit is one of:

- **an inference** (``dp_clip`` unset): two windows are neighbours when one holds one more
  inference, or one more failed call. That changes inferences and calls by one each and one
  bucket of every histogram by one: L1 sensitivity ``2 + H`` (a failed call changes only
  calls and errors, 2).
- **a device's whole window** (``dp_clip = c``): any two windows of one device are
  neighbours. The window is first scaled down (floor) so that neither its inferences nor its
  calls exceed c. Then calls and errors each lie in [0, c], and each histogram sums to at
  most the (scaled) inferences a <= c. Two windows differ by at most
  |a - a'| + H (a + a') + 2c in L1, largest at a = a' = c: sensitivity ``2c (1 + H)``.

Noise comes first, then k-suppression. Suppression after noise is post-processing, which
cannot weaken the guarantee; suppression before noise would not be: a bucket of k - 1 goes
to 0 while one of k stays k, so one inference would move that bucket by k, not by one.
A window with no calls is still reported under DP: whether a report exists must not depend
on the data, or its absence would say "nobody used the device".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.core.errors import InputError
from edgekit.runtime.telemetry.privacy import Noise, suppress

SCALARS = ("inferences", "calls", "errors", "generations")


def histogram_rows(counts: dict[str, np.ndarray]) -> int:
    """H: how many histograms a report of this layout holds (each bins row is one)."""
    return sum(len(value) if value.ndim == 2 else 1 for name, value in counts.items() if name not in SCALARS)


def sensitivity(counts: dict[str, np.ndarray], clip: int | None) -> int:
    """The L1 sensitivity of a report with this layout, for the unit ``clip`` chooses. A
    decoder's unit is one generation: its count and one bucket of each histogram."""
    rows = histogram_rows(counts)
    if "generations" in counts:
        if clip is not None:
            raise InputError(
                "dp_clip bounds a window of inferences; a decoder's privacy unit is one generation"
            )
        return 1 + rows
    return 2 + rows if clip is None else 2 * clip * (1 + rows)


def mechanism(layout: dict[str, np.ndarray], epsilon: float, most: int | None) -> Noise:
    """The noise for reports of this layout: ε per report, for the unit ``most`` chooses."""
    return Noise(epsilon, sensitivity(layout, most))


def clip(counts: dict[str, np.ndarray], most: int | None) -> dict[str, np.ndarray]:
    """Scale a window down to at most ``most`` inferences and ``most`` calls (floor), so that
    every scalar and every histogram's total is at most ``most``."""
    if most is None:
        return counts
    total = max(int(counts["inferences"][0]), int(counts["calls"][0]))
    if total <= most:
        return counts
    scale = most / total
    return {name: np.floor(value * scale).astype(np.int64) for name, value in counts.items()}


@dataclass(frozen=True)
class Released:
    counts: dict[str, np.ndarray]
    suppressed: int


def release(counts: dict[str, np.ndarray], noise: Noise | None, most: int | None, k: int) -> Released:
    """What leaves the device: clipped and noised (under DP), then k-suppressed. ``counts``
    is not changed."""
    if noise is not None:
        counts = _noised(clip(counts, most), noise)
    else:
        counts = {name: value.copy() for name, value in counts.items()}
    suppressed = sum(suppress(value, k) for name, value in counts.items() if name not in SCALARS)
    return Released(counts, suppressed)


def _noised(counts: dict[str, np.ndarray], noise: Noise) -> dict[str, np.ndarray]:
    """Every count noised, in one draw over the whole vector."""
    flat = noise(np.concatenate([value.ravel() for value in counts.values()]))
    split = np.cumsum([value.size for value in counts.values()])[:-1]
    return {
        name: part.reshape(value.shape)
        for (name, value), part in zip(counts.items(), np.split(flat, split), strict=True)
    }
