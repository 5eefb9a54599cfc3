"""Text generation with a decoder bundle: the loop, its key-value cache and its sampling.

The prompt runs once through the decoder (prefill), which returns the cache of every layer;
each later step feeds one token and the cache, and gets the next logits and the grown cache
back, so a step costs one token's work, not the whole sequence's. The cache stays in numpy
arrays between steps (ONNX Runtime takes and returns them without a copy on CPU), and
``max_context`` (prompt and new tokens) is enforced before any step runs.

Sampling: greedy (temperature 0), or temperature, top-k and top-p (nucleus) sampling from a
``numpy.random.Generator`` seeded by ``seed``, so a seed and the same settings give the same
tokens; a repetition penalty (CTRL's: a seen token's logit is divided by it when positive,
multiplied when negative); stop tokens (the bundle's and the caller's) and stop strings.
No TensorFlow, no torch: numpy and the bundle's engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.core.errors import InputError
from edgekit.core.manifest import GenerationSpec
from edgekit.core.validation import updated

Step = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
"""The engine: a feed by input name in, every output in the engine's order out. The cache it
returns may be the engine's own values (``OrtValue`` on a GPU, with IO binding): the loop
only hands them back."""


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token; ``check`` makes every wrong value one line."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_tokens: tuple[int, ...] = ()

    @classmethod
    def of(cls, settings: dict[str, Any]) -> Sampling:
        """From keyword settings as a caller gives them (lists for ``stop`` and
        ``stop_tokens``); an unknown one is one line."""
        lists = ("stop", "stop_tokens")
        values: dict[str, Any] = {k: tuple(v) if k in lists else v for k, v in settings.items()}
        known = cls.__dataclass_fields__
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"unknown generation setting '{unknown[0]}': use {', '.join(known)}")
        return cls(**values)

    def check(self, vocab: int) -> Sampling:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max new tokens {self.max_new_tokens}: generate at least 1")
        if not self.temperature >= 0:
            problems.append(f"temperature {self.temperature}: use 0 (greedy) or more")
        if self.top_k < 0:
            problems.append(f"top-k {self.top_k}: use 0 (off) or more")
        if not 0 < self.top_p <= 1:
            problems.append(f"top-p {self.top_p}: use a value in (0, 1]")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition penalty {self.repetition_penalty}: use a value above 0 (1 is off)")
        unknown = [t for t in self.stop_tokens if not 0 <= t < vocab]
        if unknown:
            problems.append(f"stop token {unknown[0]} is not in the vocabulary of {vocab} tokens")
        if problems:
            raise InputError("; ".join(problems))
        return self


@dataclass
class Generation:
    """What one call produced: the new token ids, and why it stopped."""

    tokens: list[int] = field(default_factory=list)
    stop_reason: str = "length"
    """length (max new tokens), stop_token, stop_string, context (the maximum context), or
    cancelled (the caller stopped reading)."""
    prompt_tokens: int = 0
    first_s: float | None = None
    """Seconds from the call to the first new token."""
    log_probability: float = 0.0
    """Summed log-probability, under the model (temperature 1), of each new token."""

    @property
    def confidence(self) -> float | None:
        """The geometric mean of the new tokens' probabilities; None before the first."""
        return float(np.exp(self.log_probability / len(self.tokens))) if self.tokens else None


class Decoder:
    """The loop around one decoder engine; ``spec`` names its inputs, outputs and cache."""

    def __init__(self, step: Step, outputs: list[str], spec: GenerationSpec) -> None:
        self._step = step
        self.spec = spec
        self._logits = outputs.index(spec.logits)
        self._present = [outputs.index(present) for _, present in spec.cache]

    def tokens(self, prompt: list[int], sampling: Sampling, result: Generation) -> Iterator[int]:
        """Yield each new token as it comes; ``result`` ends with all of them and the reason."""
        spec = self.spec
        self.check_prompt(prompt)
        rng = np.random.default_rng(sampling.seed)
        started = time.perf_counter()
        stops = set(spec.stop_tokens) | set(sampling.stop_tokens)
        seen = np.zeros(spec.vocab_size, bool)
        seen[prompt] = True
        cache = self.empty_cache()
        feed_ids, position = list(prompt), 0
        result.prompt_tokens = len(prompt)
        for _ in range(sampling.max_new_tokens):
            if len(prompt) + len(result.tokens) >= spec.max_context:  # the text at most fills it
                result.stop_reason = "context"
                return
            logits, cache = self._run(feed_ids, position, cache)
            position += len(feed_ids)
            token = pick(logits, sampling, seen, rng)
            if token in stops:
                result.stop_reason = "stop_token"
                return
            seen[token] = True
            if not result.tokens:
                result.first_s = time.perf_counter() - started
            result.tokens.append(token)
            result.log_probability += log_probability(logits, token)
            yield token
            feed_ids = [token]
        result.stop_reason = "length"

    def without_stops(self) -> Decoder:
        """The same engine, generating past the bundle's stop tokens (for measurements)."""
        found = Decoder.__new__(Decoder)
        found.__dict__.update(self.__dict__)
        found.spec = updated(self.spec, stop_tokens=())
        return found

    def check_prompt(self, prompt: list[int]) -> None:
        if not prompt:
            raise InputError("the prompt is empty: give at least one token of text")
        if len(prompt) >= self.spec.max_context:
            raise InputError(
                f"the prompt is {len(prompt)} tokens and the model's context is {self.spec.max_context}: "
                f"shorten it to at most {self.spec.max_context - 1}"
            )

    def logits_of(self, ids: list[int]) -> np.ndarray:
        """(len(ids), vocab): every position's next-token logits, from an empty cache."""
        return self._step(self.feed(ids, 0, self.empty_cache()))[self._logits][0].astype(np.float64)

    def feed(self, ids: list[int], position: int, cache: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The decoder's inputs for ``ids`` at ``position``, after ``cache``."""
        spec = self.spec
        end = position + len(ids)
        feed = {spec.ids: np.asarray([ids], np.int64)}
        if spec.mask:
            feed[spec.mask] = np.ones((1, end), np.int64)
        if spec.positions:
            feed[spec.positions] = np.arange(position, end, dtype=np.int64)[None]
        feed.update({past: value for (past, _), value in zip(spec.cache, cache, strict=True)})
        return feed

    def empty_cache(self) -> list[np.ndarray]:
        spec = self.spec
        shape = (1, spec.heads, 0, spec.head_size)
        return [np.zeros(shape, np.dtype(spec.cache_dtype)) for _ in spec.cache]

    def _run(
        self, ids: list[int], position: int, cache: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = self.feed(ids, position, cache)
        outputs = self._step(feed)
        return outputs[self._logits][0, -1], [outputs[i] for i in self._present]


def pick(logits: np.ndarray, sampling: Sampling, seen: np.ndarray, rng: np.random.Generator) -> int:
    """The next token from one position's logits."""
    if sampling.repetition_penalty != 1.0:
        logits = logits.copy()
        hit, penalty = seen[: len(logits)], sampling.repetition_penalty
        logits[hit] = np.where(logits[hit] > 0, logits[hit] / penalty, logits[hit] * penalty)
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    scaled = logits / sampling.temperature
    if sampling.top_k:
        cut = np.partition(scaled, -min(sampling.top_k, len(scaled)))[-min(sampling.top_k, len(scaled))]
        scaled = np.where(scaled < cut, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if sampling.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        keep = np.cumsum(probs[order]) - probs[order] < sampling.top_p  # the smallest set reaching p
        mask = np.zeros_like(probs, bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))


def log_probability(logits: np.ndarray, token: int) -> float:
    top = float(logits.max())
    return float(logits[token]) - top - float(np.log(np.exp(logits - top).sum()))


def stopped_by_string(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in ``text``, or None."""
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


class TextGenerator:
    """Text in, text out: the bundle's tokenizer around a ``Decoder``. Text comes out as the
    tokens decode, so a multi-byte character or a word piece shows once it is whole."""

    def __init__(
        self, step: Step, outputs: list[str], spec: GenerationSpec, tokenizer_json: bytes,
        on_done: Callable[[Generation, float, str, str], None] | None = None,
    ) -> None:  # fmt: skip
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            from edgekit.core.errors import MissingDependencyError

            raise MissingDependencyError("tokenizers", "text", "text generation") from exc
        self.tokenizer = Tokenizer.from_str(tokenizer_json.decode())
        self.decoder = Decoder(step, outputs, spec)
        self._on_done = on_done
        """Telemetry's: (the generation, seconds after its first token, the prompt, the text)."""
        self.last: Generation | None = None
        """The most recent call's tokens and stop reason."""

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer.encode(prompt, add_special_tokens=False).ids)

    def check_prompt(self, prompt: str) -> None:
        """The one-line error a prompt gets before anything is generated (an empty one, or one
        that fills the context)."""
        self.decoder.check_prompt(self.encode(prompt))

    def stream(self, prompt: str, sampling: Sampling, result: Generation | None = None) -> Generator[str]:
        """Each new piece of text as it is generated, up to (not including) a stop string;
        ``result`` (else ``last``) ends with the tokens and why it stopped."""
        sampling = sampling.check(self.decoder.spec.vocab_size)
        result = self.last = result if result is not None else Generation()
        started = time.perf_counter()
        try:
            yield from self._pieces(prompt, sampling, result)
        except GeneratorExit:  # the caller stopped reading: a client gone
            result.stop_reason = "cancelled"
            raise
        finally:
            if self._on_done is not None and result.prompt_tokens:
                after = time.perf_counter() - started - (result.first_s or 0.0)
                self._on_done(result, after, prompt, self.tokenizer.decode(result.tokens))

    def _pieces(self, prompt: str, sampling: Sampling, result: Generation) -> Iterator[str]:
        shown = ""
        for _ in self.decoder.tokens(self.encode(prompt), sampling, result):
            text = self.tokenizer.decode(result.tokens)
            cut = stopped_by_string(text, sampling.stop)
            if cut is not None:
                text, result.stop_reason = text[:cut], "stop_string"
            if len(text) > len(shown) and not text.endswith("\ufffd"):  # a character still incomplete
                yield text[len(shown) :]
                shown = text
            if cut is not None:
                return
        text = self.tokenizer.decode(result.tokens)
        if len(text) > len(shown):
            yield text[len(shown) :]
