"""Latency of ``Model.predict`` on this device, optionally against the bare engine it wraps."""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgekit.core.errors import InputError
from edgekit.core.samples import Feed
from edgekit.runtime.feeds import check_feed
from edgekit.runtime.model import Model


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_per_s: float

    @classmethod
    def of(cls, seconds: list[float], batch: int = 1, wall_s: float | None = None) -> Timing:
        """Percentiles of each call's latency; throughput in samples a second, over ``wall_s``
        when calls overlapped (several callers), else over their sum."""
        ms = np.asarray(seconds) * 1000
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        span = wall_s if wall_s is not None else sum(seconds)
        return cls(float(p50), float(p90), float(p99), float(len(ms) * batch / max(span, 1e-12)))


@dataclass(frozen=True)
class BenchResult:
    runs: int
    load_ms: float
    peak_rss_bytes: int
    edgekit: Timing
    bare: Timing | None
    overhead_ratio: float | None
    overhead_us: float | None
    latency_budget_ms: float | None
    within_latency_budget: bool | None
    batch: int = 1
    """Samples per call."""
    concurrency: int = 1
    """Threads calling ``predict`` at once."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_input(model: Model, batch: int = 1) -> Feed:
    """One call's inputs, each of its own dtype: floats drawn around zero (within the range the
    conversion data spanned, when the bundle records it), integers within that range (0 when
    none is recorded: a token id or index every such model accepts), booleans all true."""
    rng = np.random.default_rng(0)
    ranges = model.manifest.preprocessing.ranges or {}
    feed: Feed = {}
    for info in model.info.inputs:
        shape = tuple(batch if i == 0 and d is None else (d or 1) for i, d in enumerate(info.shape))
        dtype = np.dtype("float32" if info.quantized else info.dtype)
        span = ranges.get(info.name)
        if dtype.kind == "f":
            value = rng.normal(0, 1, shape) if span is None else rng.uniform(span[0], span[1], shape)
            feed[info.name] = value.astype(dtype)
        elif dtype.kind == "b":
            feed[info.name] = np.ones(shape, dtype)
        else:
            bounds = (0, 0) if span is None else (int(np.ceil(span[0])), int(np.floor(span[1])))
            feed[info.name] = rng.integers(bounds[0], bounds[1] + 1, shape).astype(dtype)
    return feed


def bench(
    model: Model, runs: int = 500, warmup: int = 20, compare_bare: bool = False, batch: int = 1,
    concurrency: int = 1,
) -> BenchResult:  # fmt: skip
    """Time ``predict`` ``runs`` times on batches of ``batch``; with ``compare_bare``,
    interleave the bare engine; with ``concurrency`` > 1, that many threads call at once (as
    perf_analyzer's and onnxruntime_perf_test's concurrency do), and throughput is over the
    wall-clock time."""
    if batch < 1 or concurrency < 1:
        raise InputError("--batch and --concurrency are at least 1")
    x = sample_input(model, batch)
    if concurrency > 1:
        if compare_bare:
            raise InputError("--compare-bare times one caller: the bare engine is not shared by threads; "
                             "leave --concurrency at 1")  # fmt: skip
        timing = _concurrent(model, x, runs, warmup, concurrency, batch)
        return _result(model, runs, timing, None, batch, concurrency)
    calls: list[Callable[[], Any]] = [lambda: model.predict(x)]
    if compare_bare:
        calls.append(bare_call(model, x))
    for _ in range(warmup):
        for call in calls:
            call()
    timings: list[list[float]] = [[] for _ in calls]
    for run in range(runs):
        order = list(zip(calls, timings, strict=True))
        for call, record in order if run % 2 == 0 else order[::-1]:  # no one always goes first
            started = time.perf_counter()
            call()
            record.append(time.perf_counter() - started)
    bare = Timing.of(timings[1], batch) if compare_bare else None
    return _result(model, runs, Timing.of(timings[0], batch), bare, batch, 1)


def _concurrent(model: Model, x: Feed, runs: int, warmup: int, concurrency: int, batch: int) -> Timing:
    """``runs`` calls spread over ``concurrency`` threads started together."""
    for _ in range(warmup):
        model.predict(x)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)

    def caller(record: list[float], calls: int) -> None:
        start.wait()
        for _ in range(calls):
            began = time.perf_counter()
            model.predict(x)
            record.append(time.perf_counter() - began)

    shares = [runs // concurrency + (i < runs % concurrency) for i in range(concurrency)]
    threads = [threading.Thread(target=caller, args=(latencies[i], shares[i])) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return Timing.of([s for record in latencies for s in record], batch, time.perf_counter() - began)


def _result(
    model: Model, runs: int, ours: Timing, bare: Timing | None, batch: int, concurrency: int
) -> BenchResult:
    budget = model.manifest.target.budget.latency_ms
    return BenchResult(
        runs=runs,
        load_ms=model.info.load_ms,
        peak_rss_bytes=_peak_rss_bytes(),
        edgekit=ours,
        bare=bare,
        overhead_ratio=ours.p50_ms / bare.p50_ms if bare else None,
        overhead_us=(ours.p50_ms - bare.p50_ms) * 1000 if bare else None,
        latency_budget_ms=budget,
        within_latency_budget=None if budget is None else ours.p90_ms <= budget,
        batch=batch,
        concurrency=concurrency,
    )


def bare_call(model: Model, x: np.ndarray | Feed) -> Callable[[], Any]:
    """The same engine object called directly, as a user of the bare engine would.

    The same interpreter or session, so two thread pools do not compete and only the
    wrapper differs. For int8 TFLite inputs it includes the plain numpy quantization a bare
    user must write to feed float data, since ``predict`` takes floats.
    """
    return model.backend.bare_call(check_feed(model.info.inputs, x))


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def bench_generation(model: Model, prompt_tokens: int, new_tokens: int, runs: int) -> dict[str, Any]:
    """A decoder's time to first token and decode speed, median over ``runs`` generations of
    ``new_tokens`` after a prompt of ``prompt_tokens`` (token ids drawn at random), greedy."""
    from edgekit.runtime.generate import Generation, Sampling

    decoder = model.text_generator.decoder
    spec = decoder.spec
    if prompt_tokens + new_tokens > spec.max_context:
        raise InputError(
            f"--prompt-tokens {prompt_tokens} and --new-tokens {new_tokens} pass the bundle's context of "
            f"{spec.max_context} tokens"
        )
    rng = np.random.default_rng(0)
    allowed = np.setdiff1d(np.arange(spec.vocab_size), spec.stop_tokens)
    sampling = Sampling(max_new_tokens=new_tokens)
    decoder = decoder.without_stops()  # exactly new_tokens, as a benchmark needs
    firsts, rates, made = [], [], []
    for run in range(runs + 1):  # the first warms the engine up
        prompt = [int(t) for t in rng.choice(allowed, prompt_tokens)]
        done = Generation()
        started = time.perf_counter()
        tokens = decoder.tokens(prompt, sampling, done)
        next(tokens, None)
        first = time.perf_counter() - started
        count = sum(1 for _ in tokens)
        if run:
            firsts.append(first)
            rates.append(count / max(time.perf_counter() - started - first, 1e-9))
            made.append(count + 1)
    return {
        "prompt_tokens": prompt_tokens, "new_tokens": int(np.median(made)), "runs": runs,
        "time_to_first_token_ms": round(1000 * float(np.median(firsts)), 3),
        "decode_tokens_per_s": round(float(np.median(rates)), 1),
        "cache_bytes_at_context": spec.cache_bytes(spec.max_context),
        "peak_rss_bytes": _peak_rss_bytes(),
    }  # fmt: skip
