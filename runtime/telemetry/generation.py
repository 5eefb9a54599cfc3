"""A decoder's window: each generation's time to first token, decode speed, prompt and new
lengths and stop reason, counted into histograms (no text, no token ids)."""

from __future__ import annotations

import time

import numpy as np

from edgekit.core.telemetry import LATENCY_EDGES_MS, LENGTH_EDGES, RATE_EDGES, STOP_REASONS, GenerationStats


class GenerationWindow:
    def __init__(self) -> None:
        self.ttft = np.zeros(len(LATENCY_EDGES_MS) + 1, np.int64)
        self.rate = np.zeros(len(RATE_EDGES) + 1, np.int64)
        self.prompt = np.zeros(len(LENGTH_EDGES) + 1, np.int64)
        self.new = np.zeros(len(LENGTH_EDGES) + 1, np.int64)
        self.stops = np.zeros(len(STOP_REASONS), np.int64)
        self.reset()

    samples = 0
    """Nothing is captured from a decoder: no prompt, no generated text."""

    def reset(self) -> None:
        self.start = time.time()
        self.calls = 0
        for counts in (self.ttft, self.rate, self.prompt, self.new, self.stops):
            counts[:] = 0

    def record(self, prompt: int, new: int, first_s: float | None, decode_s: float, reason: str) -> None:
        self.calls += 1
        self.ttft[np.searchsorted(LATENCY_EDGES_MS, 1000.0 * (first_s or 0.0), side="left")] += 1
        rate = (new - 1) / decode_s if new > 1 and decode_s > 0 else 0.0
        self.rate[np.searchsorted(RATE_EDGES, rate, side="right")] += 1
        self.prompt[np.searchsorted(LENGTH_EDGES, prompt, side="right")] += 1
        self.new[np.searchsorted(LENGTH_EDGES, new, side="right")] += 1
        self.stops[STOP_REASONS.index(reason)] += 1

    def digest(self) -> None:
        """Nothing is buffered: ``record`` counts at once (one call per generation)."""

    def counts(self) -> dict[str, np.ndarray]:
        """The counts that leave the device, by name (``dp.release`` takes them)."""
        return {
            "generations": np.array([self.calls], np.int64), "ttft": self.ttft.copy(),
            "rate": self.rate.copy(), "prompt": self.prompt.copy(), "new": self.new.copy(),
            "stops": self.stops.copy(),
        }  # fmt: skip


def generation_stats(counts: dict[str, np.ndarray]) -> GenerationStats:
    def ints(name: str) -> tuple[int, ...]:
        return tuple(int(c) for c in counts[name])

    return GenerationStats(
        generations=int(counts["generations"][0]), ttft_ms=ints("ttft"), tokens_per_s=ints("rate"),
        prompt_tokens=ints("prompt"), new_tokens=ints("new"), stop_reasons=ints("stops"),
    )  # fmt: skip
