"""A decoder's window: each generation's time to first token, decode speed, prompt and new
lengths and stop reason, counted into histograms (no text, no token ids).

With capture on, some generations are also kept as samples: the prompt and the generated
text, each de-identified as it is taken, with the stop reason and the generation's
confidence (the geometric mean of its tokens' probabilities; ``low-confidence`` keeps those
under the threshold, ``random`` a share of all). They leave sealed to the fleet key, after
the window's report, like any model's samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from edgekit.core.telemetry import LATENCY_EDGES_MS, LENGTH_EDGES, RATE_EDGES, STOP_REASONS, GenerationStats
from edgekit.runtime.generate import Generation
from edgekit.runtime.telemetry.window import Capture


class GenerationWindow:
    def __init__(self, capture: Capture, slots: int, deidentify: Callable[[str], str] | None) -> None:
        self.ttft = np.zeros(len(LATENCY_EDGES_MS) + 1, np.int64)
        self.rate = np.zeros(len(RATE_EDGES) + 1, np.int64)
        self.prompt = np.zeros(len(LENGTH_EDGES) + 1, np.int64)
        self.new = np.zeros(len(LENGTH_EDGES) + 1, np.int64)
        self.stops = np.zeros(len(STOP_REASONS), np.int64)
        self.capture, self._slots, self._deidentify = capture, slots, deidentify or str
        self.reset()

    def reset(self) -> None:
        self.start = time.time()
        self.calls = 0
        for counts in (self.ttft, self.rate, self.prompt, self.new, self.stops):
            counts[:] = 0
        self.sampled: list[tuple[str, str, int, float]] = []
        """Captured generations: prompt and text (de-identified), stop reason, confidence."""

    @property
    def samples(self) -> int:
        return len(self.sampled)

    def record(self, result: Generation, decode_s: float, prompt: str, text: str) -> None:
        self.calls += 1
        new = len(result.tokens)
        self.ttft[np.searchsorted(LATENCY_EDGES_MS, 1000.0 * (result.first_s or 0.0), side="left")] += 1
        rate = (new - 1) / decode_s if new > 1 and decode_s > 0 else 0.0
        self.rate[np.searchsorted(RATE_EDGES, rate, side="right")] += 1
        self.prompt[np.searchsorted(LENGTH_EDGES, result.prompt_tokens, side="right")] += 1
        self.new[np.searchsorted(LENGTH_EDGES, new, side="right")] += 1
        reason = STOP_REASONS.index(result.stop_reason)
        self.stops[reason] += 1
        confidence = result.confidence if result.confidence is not None else 1.0
        if self.samples < self._slots and self.capture.choose(np.array([confidence]), 1)[0]:
            self.sampled.append((self._deidentify(prompt), self._deidentify(text), reason, confidence))

    def sample_arrays(self) -> dict[str, np.ndarray]:
        """What a sample message carries: no input features; ``pred`` is the stop reason's
        index in ``STOP_REASONS``; ``text`` the prompt and ``generated`` the text."""
        prompts, texts, reasons, confidence = zip(*self.sampled, strict=True)
        return {
            "x": np.zeros((self.samples, 0), np.float32), "pred": np.array(reasons, np.int64),
            "confidence": np.array(confidence, np.float32), "text": np.array(prompts, dtype=str),
            "generated": np.array(texts, dtype=str),
        }  # fmt: skip

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
