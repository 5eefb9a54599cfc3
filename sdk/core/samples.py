"""Model inputs by name: one call's ``Feed``, and the ``Samples`` of many calls.

The rule for data files, one array per input name:

- an array with the input's rank holds samples along the batch axis (``arr[i:j]`` is a batch);
- an array with the input's rank + 1 holds one call's value per entry (``arr[i]`` is fed
  exactly as it is). This covers inputs whose batch axis is not first (a recurrent state
  shaped ``(2, batch, 128)``) and scalars (a sample rate).

Light: numpy only, so the runtime can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Feed = dict[str, np.ndarray]
"""One call's inputs, by input name."""


@dataclass(frozen=True)
class Samples:
    """Inputs for many calls: per input name, an array of samples along axis 0."""

    arrays: Mapping[str, np.ndarray]
    per_call: frozenset[str] = field(default=frozenset())
    """Names whose ``arr[i]`` is exactly one call's value; the others are batched."""

    @classmethod
    def of(cls, name: str, x: np.ndarray) -> Samples:
        return cls({name: x})

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    @property
    def only(self) -> np.ndarray:
        """The one array of a single-input model."""
        if len(self.arrays) != 1:
            raise ValueError(f"{len(self.arrays)} inputs, not one")
        return next(iter(self.arrays.values()))

    def batches(self, batch: int) -> Iterator[tuple[Feed, int]]:
        """Feeds of up to ``batch`` samples (one when any input is per call), with their count."""
        step = 1 if self.per_call else batch
        for start in range(0, len(self), step):
            feed = {
                name: np.asarray(array[start]) if name in self.per_call else array[start : start + step]
                for name, array in self.arrays.items()
            }
            yield feed, min(step, len(self) - start)

    def sample_bytes(self) -> int:
        """Bytes of input one sample holds, over every input."""
        return max(1, sum(a[:1].nbytes for a in self.arrays.values()))

    def head(self, count: int) -> Samples:
        return Samples({name: a[:count] for name, a in self.arrays.items()}, self.per_call)


BATCH_INPUT_BYTES = 256 * 1024


def run_samples(
    predict: Callable[[Feed], Sequence[np.ndarray]],
    samples: Samples,
    advance: Callable[[int], None],
    batch: int = 256,
) -> list[np.ndarray]:
    """Every output of ``predict`` over ``samples``, one array per output with the samples
    along axis 0: batches are concatenated, per-call results stacked. Batches hold at most
    ``BATCH_INPUT_BYTES`` of input: a model's activations grow with its batch, and 24
    images of 320x320 in one call took a text detector's evaluation past 1 GB."""
    parts: list[list[np.ndarray]] = []
    for feed, count in samples.batches(max(1, min(batch, BATCH_INPUT_BYTES // samples.sample_bytes()))):
        parts.append([np.asarray(out) for out in predict(feed)])
        advance(count)
    join = np.stack if samples.per_call else np.concatenate
    return [join(chunks) for chunks in zip(*parts, strict=True)]
