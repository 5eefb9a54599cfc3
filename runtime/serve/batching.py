"""Dynamic batching: one worker thread per served model version.

Requests wait in a bounded queue (full: 503). The worker takes the first, gathers more for
up to ``max_delay_ms`` or until ``max_batch`` rows, stacks those whose inputs agree in every
dim but the batch dim, runs them as one call and splits the outputs back by rows. A request
that cannot be stacked, or a model whose batch dim is fixed, runs alone. The one worker is
also the model's lock: its engine sees one call at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekit.core.samples import Feed
from edgekit.runtime.model import Model
from edgekit.runtime.serve.protocol import ProtocolError

log = logging.getLogger("edgekit.serve")


class BatchSettings(BaseModel):
    """How one model's requests are queued and gathered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(default=1, ge=1, le=4096)
    """Rows per engine call; 1 turns batching off."""
    max_delay_ms: float = Field(default=0.0, ge=0, le=1000)
    """How long the first request of a batch waits for others."""
    max_queue: int = Field(default=64, ge=1, le=100_000)
    """Requests waiting per model before new ones get 503."""


class Retired(Exception):
    """The version was swapped out between lookup and submit: look it up again."""


@dataclass
class _Job:
    feed: Feed
    texts: list[str] | None
    future: Future[list[np.ndarray]] = field(default_factory=Future)

    @property
    def rows(self) -> int:
        return len(next(iter(self.feed.values())))

    def key(self) -> tuple[object, ...]:
        """Jobs with equal keys stack along the batch dim."""
        return tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(self.feed.items()))


@dataclass
class Stats:
    requests: int = 0
    batches: int = 0
    """Engine calls that ran more than one request."""
    calls: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    """Engine calls by the number of requests they ran."""

    def json(self) -> dict[str, object]:
        return {
            "requests": self.requests, "engine_calls": self.calls, "batched_calls": self.batches,
            "requests_per_call": {str(k): v for k, v in sorted(self.sizes.items())},
        }  # fmt: skip


_STOP = object()


class Batcher:
    def __init__(self, model: Model, settings: BatchSettings) -> None:
        self.model = model
        self.settings = settings
        inputs = model.backend.inputs
        self.can_batch = settings.max_batch > 1 and all(i.shape and i.shape[0] is None for i in inputs)
        self.stats = Stats()
        self._queue: queue.Queue[object] = queue.Queue(settings.max_queue)
        self._closed = False
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name=f"serve-{model.info.name}", daemon=True)
        self._worker.start()

    def submit(self, feed: Feed, texts: list[str] | None = None) -> Future[list[np.ndarray]]:
        """Queue one checked feed; the future holds the outputs in ``info.outputs`` order."""
        job = _Job(feed, texts)
        with self._lock:
            if self._closed:
                raise Retired
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise ProtocolError(
                    503, f"{self.model.info.name}: {self.settings.max_queue} requests are already "
                    "waiting; retry later",
                ) from None
        return job.future

    def close(self) -> None:
        """Finish every queued request, then stop the worker (new submits raise Retired)."""
        with self._lock:
            self._closed = True
        self._queue.put(_STOP)
        self._worker.join()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            assert isinstance(first, _Job)
            jobs, stop = self._gather(first)
            self._run([job for job in jobs if job.future.set_running_or_notify_cancel()])
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, rows = [first], first.rows
        if not self.can_batch:
            return jobs, False
        deadline = time.monotonic() + self.settings.max_delay_ms / 1000
        while rows < self.settings.max_batch:
            try:
                nxt = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if nxt is _STOP:
                return jobs, True
            assert isinstance(nxt, _Job)
            jobs.append(nxt)
            rows += nxt.rows
        return jobs, False

    def _run(self, jobs: list[_Job]) -> None:
        groups: dict[tuple[object, ...], list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.key(), []).append(job)
        for group in groups.values():
            for part in _fitting(group, self.settings.max_batch):
                self._run_stacked(part)

    def _run_stacked(self, jobs: list[_Job]) -> None:
        self.stats.requests += len(jobs)
        if len(jobs) > 1:
            rows = [job.rows for job in jobs]
            feed = {name: np.concatenate([job.feed[name] for job in jobs]) for name in jobs[0].feed}
            texts = [t for job in jobs for t in job.texts or []] or None
            try:
                outputs = self.model.run(feed, texts)
            except Exception:  # one bad request must not fail the rest: run each alone
                outputs = []
            if all(len(out) == sum(rows) for out in outputs) and outputs:
                self._count(len(jobs))
                bounds = np.cumsum(rows)[:-1]
                for job, *parts in zip(jobs, *(np.split(out, bounds) for out in outputs), strict=True):
                    job.future.set_result(list(parts))
                return
        for job in jobs:
            self._count(1)
            try:
                job.future.set_result(self.model.run(job.feed, job.texts))
            except Exception as exc:  # the caller turns it into the protocol's error
                job.future.set_exception(exc)

    def _count(self, size: int) -> None:
        self.stats.calls += 1
        self.stats.batches += size > 1
        self.stats.sizes[size] += 1


def _fitting(jobs: Sequence[_Job], max_batch: int) -> list[list[_Job]]:
    """Consecutive runs of jobs whose rows add up to at most ``max_batch``."""
    parts: list[list[_Job]] = [[]]
    rows = 0
    for job in jobs:
        if parts[-1] and rows + job.rows > max_batch:
            parts.append([])
            rows = 0
        parts[-1].append(job)
        rows += job.rows
    return parts
