"""``Telemetry``: what a device reports, how privately, and where it waits while offline."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import Manifest
from edgekit.errors import InputError
from edgekit.paths import edgekit_home
from edgekit.runtime.telemetry.broker import Broker
from edgekit.runtime.telemetry.outbox import BudgetSpent, Outbox
from edgekit.runtime.telemetry.privacy import (
    DeviceFleetKeys,
    Noise,
    machine_id,
    pseudonym,
    seal_sample,
    suppress,
)
from edgekit.runtime.telemetry.publisher import Publisher
from edgekit.runtime.telemetry.schema import (
    SCHEMA_VERSION,
    Drift,
    InputStats,
    ModelRef,
    Privacy,
    Report,
    SampleHeader,
    check_fleet_name,
)
from edgekit.runtime.telemetry.stats import feature_plan, plan_for, psi
from edgekit.runtime.telemetry.window import Capture, Window

log = logging.getLogger("edgekit.telemetry")


class TelemetryConfigError(InputError):
    """A telemetry setting is wrong."""


class Telemetry:
    """Anonymized, durable MQTT telemetry for one loaded model.

    Pass it to ``Model.load(..., telemetry=...)``. Every ``predict`` is aggregated in
    memory; each ``window_s`` a report (and any captured samples) goes to the on-disk
    outbox, and a background thread publishes it. ``close()`` (or the model's) flushes.
    """

    def __init__(
        self,
        broker: str,
        fleet: str,
        *,
        device_id: str | None = None,
        window_s: float = 60.0,
        k: int = 5,
        dp_epsilon: float | None = None,
        dp_budget: float | None = None,
        dp_clip: int | None = None,
        capture: str = "none",
        capture_max: int = 8,
        capture_max_bytes: int = 256 * 1024,
        fleet_dir: Path | str | None = None,
        outbox: Path | str | None = None,
        outbox_max_bytes: int = 64 * 1024 * 1024,
        outbox_max_age_s: float = 7 * 86400,
        epoch_s: float = 86400,
        tls_ca: Path | str | None = None,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        username: str | None = None,
        password: str | None = None,
        backoff_max_s: float = 30.0,
        message_expiry_s: int = 7 * 86400,
        close_timeout_s: float = 5.0,
    ) -> None:
        try:
            self.fleet = check_fleet_name(fleet)
            self.capture = Capture(capture)
        except ValueError as exc:
            raise TelemetryConfigError(str(exc)) from exc
        self.broker = Broker.parse(
            broker, ca=tls_ca, cert=tls_cert, key=tls_key, username=username, password=password
        )
        for name, value in (("window_s", window_s), ("epoch_s", epoch_s)):
            if value <= 0:
                raise TelemetryConfigError(f"{name} must be positive, got {value}")
        if dp_epsilon is not None and dp_epsilon <= 0:
            raise TelemetryConfigError(f"dp_epsilon must be positive, got {dp_epsilon}")
        if k < 1:
            raise TelemetryConfigError(f"k must be at least 1, got {k}")
        self.device_id = device_id or machine_id()
        self.window_s = window_s
        self.k = k
        self.dp_epsilon = dp_epsilon
        self.dp_budget = dp_budget if dp_budget is not None else (100 * dp_epsilon if dp_epsilon else None)
        self.dp_clip = dp_clip
        self.capture_max = capture_max
        self.capture_max_bytes = capture_max_bytes
        self.epoch_s = epoch_s
        self.close_timeout_s = close_timeout_s
        self.keys = DeviceFleetKeys.load(
            fleet, Path(fleet_dir) if fleet_dir else None, need_public=self.capture.mode != "none"
        )
        self.outbox = Outbox(
            Path(outbox) if outbox else edgekit_home() / "telemetry" / f"{fleet}.sqlite",
            outbox_max_bytes,
            outbox_max_age_s,
        )
        self._publisher_options = {"backoff_max_s": backoff_max_s, "message_expiry_s": message_expiry_s}
        self._lock = threading.Lock()
        self._roll = threading.Lock()
        self._window: Window | None = None
        self._spare: Window | None = None
        self._publisher: Publisher | None = None
        self._final_status: dict[str, Any] | None = None
        self._noise: Noise | None = None
        self._model: ModelRef | None = None
        self._reference: Any = None
        self._budget_logged = False
        self.released = 0

    @classmethod
    def from_file(cls, path: Path | str, **overrides: Any) -> Telemetry:
        """Settings from the ``[telemetry]`` table of a TOML file; ``overrides`` win."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib

        try:
            table = tomllib.loads(Path(path).read_text()).get("telemetry")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TelemetryConfigError(f"telemetry config {path}: {exc}") from exc
        if not isinstance(table, dict):
            raise TelemetryConfigError(f"telemetry config {path}: no [telemetry] table")
        settings = {**table, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return cls(**settings)
        except TypeError as exc:
            raise TelemetryConfigError(f"telemetry config {path}: {exc}") from exc

    # -- wiring -----------------------------------------------------------------------

    def attach(
        self, manifest: Manifest, sample_shape: tuple[int, ...], output_shape: tuple[int | None, ...]
    ) -> None:
        """Called by ``Model.load``: size the windows and start the publisher thread."""
        if self._window is not None:
            raise TelemetryConfigError("this Telemetry already serves a model; make one per model")
        entry = manifest.artifacts[0]
        self._model = ModelRef(
            name=manifest.name, version=manifest.version, format=entry.format, precision=entry.precision
        )
        reference = manifest.reference
        if reference is not None:
            plan = plan_for(reference)
            kind = reference.outputs
        else:
            plan = feature_plan(sample_shape, manifest.preprocessing.layout)
            kind = "logits" if len(output_shape) == 2 and (output_shape[1] or 0) >= 2 else "values"
            log.info(
                "telemetry: no reference statistics in the bundle, so no drift score "
                "(convert with --calibration to get them)"
            )
        classes = output_shape[1] if kind != "values" and len(output_shape) == 2 else None
        output_sample = tuple(1 if d is None else d for d in output_shape[1:])
        sample_bytes = int(np.prod(sample_shape)) * 4
        slots = (
            min(self.capture_max, self.capture_max_bytes // max(sample_bytes, 1))
            if self.capture.mode != "none"
            else 0
        )
        self._reference = reference
        self._window, self._spare = (
            Window(sample_shape, output_sample, classes, kind, plan, reference, self.capture, slots)
            for _ in range(2)
        )
        if self.dp_epsilon is not None:
            per_inference = 5 + plan.count  # inferences, calls, latency, class, confidence, bins
            self._noise = Noise(self.dp_epsilon, per_inference * (self.dp_clip or 1))
            log.info(
                "telemetry: differential privacy at ε=%.3g per window, %.3g of %.3g spent",
                self._noise.epsilon,
                self.outbox.epsilon_spent,
                self.dp_budget,
            )
        self._publisher = Publisher(
            self.broker,
            self.fleet,
            self.outbox,
            self.node,
            self._maybe_roll,
            **self._publisher_options,  # type: ignore[arg-type]
        )
        self._publisher.start()

    def record(self, x: np.ndarray, outputs: np.ndarray, seconds: float) -> None:
        """The hot path, from ``predict``: add one call to the current window."""
        with self._lock:
            self._window.record(x, outputs, seconds)  # type: ignore[union-attr]

    def record_error(self) -> None:
        with self._lock:
            self._window.record_error()  # type: ignore[union-attr]

    # -- windows ---------------------------------------------------------------------

    def epoch(self, now: float | None = None) -> int:
        return int((now if now is not None else time.time()) // self.epoch_s)

    def node(self) -> str:
        """This device's pseudonym for the current epoch."""
        return pseudonym(self.keys.secret, self.device_id, self.epoch())

    def _maybe_roll(self) -> None:
        window = self._window
        if window is not None and time.time() - window.start >= self.window_s:
            self.flush()

    def flush(self) -> int | None:
        """End the current window now and queue its report; returns its sequence number,
        or None when there was nothing to report or the privacy budget is spent."""
        with self._roll:
            with self._lock:
                window, self._window = self._window, self._spare
                self._window.reset()  # type: ignore[union-attr]
            assert window is not None
            window.digest()
            try:
                return self._release(window) if window.calls else None
            finally:
                self._spare = window

    def _release(self, window: Window) -> int | None:
        assert self._model is not None
        end = time.time()
        node = self.node()
        epoch = self.epoch(end)
        counts = _counts(window)
        inputs = None
        if self._noise is None:
            if window.count >= self.k:
                inputs = _input_stats(window)
        else:
            counts = self._clip(counts, window.count)
            counts = {name: self._noise(value) for name, value in counts.items()}
        suppressed = sum(
            suppress(value, self.k)
            for name, value in counts.items()
            if name not in ("inferences", "errors", "calls")
        )
        drift = self._drift(counts)
        epsilon = self._noise.epsilon if self._noise is not None else 0.0
        spent = self.outbox.epsilon_spent + epsilon

        def build(seq: int, dropped: int) -> bytes:
            report = Report(
                v=SCHEMA_VERSION,
                kind="report",
                node=node,
                epoch=epoch,
                seq=seq,
                start=round(window.start, 3),
                end=round(end, 3),
                model=self._model,  # type: ignore[arg-type]
                inferences=int(counts["inferences"][0]),
                calls=int(counts["calls"][0]),
                errors=int(counts["errors"][0]),
                latency_ms=tuple(int(c) for c in counts["latency"]),
                classes=_ints(counts.get("classes")),
                confidence=_ints(counts.get("confidence")),
                feature_bins=tuple(tuple(int(c) for c in row) for row in counts["bins"])
                if "bins" in counts
                else None,
                inputs=inputs,
                drift=drift,
                samples=window.samples,
                dropped=dropped,
                privacy=Privacy(
                    k=self.k,
                    suppressed_buckets=suppressed,
                    dp_epsilon=epsilon or None,
                    dp_spent=spent if epsilon else None,
                    dp_budget=self.dp_budget if epsilon else None,
                ),
            )
            return report.model_dump_json().encode()

        try:
            seq = self.outbox.put("report", node, build, epsilon=epsilon, budget=self.dp_budget)
        except BudgetSpent as exc:
            if not self._budget_logged:
                log.warning("telemetry: the privacy budget is spent (%s): nothing more is released", exc)
                self._budget_logged = True
            return None
        self.released += 1
        if window.samples and self.keys.public_key is not None:
            self._release_samples(window, node, epoch)
        return seq

    def _release_samples(self, window: Window, node: str, epoch: int) -> None:
        arrays = {
            "x": window.sample_x[: window.samples].copy(),
            "pred": window.sample_pred[: window.samples].copy(),
            "confidence": window.sample_conf[: window.samples].copy(),
        }
        key = self.keys.public_key
        assert key is not None and self._model is not None

        def build(seq: int, dropped: int) -> bytes:
            header = SampleHeader(
                v=SCHEMA_VERSION,
                kind="sample",
                node=node,
                epoch=epoch,
                seq=seq,
                model=self._model,
                count=window.samples,  # type: ignore[arg-type]
            )
            return seal_sample(header, arrays, key)

        self.outbox.put("sample", node, build)

    def _clip(self, counts: dict[str, np.ndarray], total: int) -> dict[str, np.ndarray]:
        """Scale a window down to ``dp_clip`` inferences: the device's bounded contribution."""
        if self.dp_clip is None or total <= self.dp_clip:
            return counts
        scale = self.dp_clip / total
        return {name: np.floor(value * scale).astype(np.int64) for name, value in counts.items()}

    def _drift(self, counts: dict[str, np.ndarray]) -> Drift | None:
        reference = self._reference
        if reference is None or "bins" not in counts:
            return None
        input_psi = max(
            psi(np.asarray(expected), row)
            for expected, row in zip(reference.expected, counts["bins"], strict=True)
        )
        output_psi = None
        if reference.classes is not None and "classes" in counts:
            output_psi = psi(np.asarray(reference.classes), counts["classes"])
        score = max(input_psi, output_psi or 0.0)
        return Drift(
            input_psi=round(input_psi, 4),
            output_psi=None if output_psi is None else round(output_psi, 4),
            score=round(score, 4),
        )

    # -- status and shutdown ------------------------------------------------------------

    @property
    def status(self) -> dict[str, Any]:
        """Counters for people and tests: released reports, sent, queued, the last error."""
        if self._final_status is not None:
            return self._final_status
        publisher = self._publisher
        entries, size = self.outbox.size()
        return {
            "broker": self.broker.url,
            "connected": bool(publisher and publisher.connected),
            "released": self.released,
            "sent": publisher.sent if publisher else 0,
            "rejected": publisher.rejected if publisher else 0,
            "queued": entries,
            "queued_bytes": size,
            "last_error": publisher.last_error if publisher else None,
            "epsilon_spent": self.outbox.epsilon_spent,
        }

    def close(self, timeout: float | None = None) -> None:
        """Report the open window, send what can be sent within ``timeout`` seconds, stop.
        What is not acknowledged by then stays in the outbox for the next start."""
        publisher = self._publisher
        if publisher is None or self._final_status is not None:
            return
        self.flush()
        if not publisher.drain(self.close_timeout_s if timeout is None else timeout):
            log.info(
                "telemetry: %d messages wait in %s for the next start",
                self.outbox.size()[0],
                self.outbox.path,
            )
        publisher.stop()
        publisher.join(timeout=5)
        self._final_status = {**self.status, "connected": False}
        self.outbox.close()


def _counts(window: Window) -> dict[str, np.ndarray]:
    counts = {
        "inferences": np.array([window.count], np.int64),
        "calls": np.array([window.calls], np.int64),
        "errors": np.array([window.errors], np.int64),
        "latency": window.latency.copy(),
    }
    if window.classes is not None and window.confidence is not None:
        counts["classes"] = window.classes.copy()
        counts["confidence"] = window.confidence.copy()
    if window.bins is not None:
        counts["bins"] = window.bins.copy()
    return counts


def _input_stats(window: Window) -> InputStats:
    n = window.count
    mean = window.feature_sum / n
    std = np.sqrt(np.maximum(window.feature_sq / n - mean**2, 0))

    def rounded(values: np.ndarray) -> tuple[float, ...]:
        return tuple(round(float(v), 6) for v in values)

    return InputStats(
        mean=rounded(mean), std=rounded(std), min=rounded(window.feature_min), max=rounded(window.feature_max)
    )


def _ints(values: np.ndarray | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)
