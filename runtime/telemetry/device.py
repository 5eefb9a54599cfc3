"""``Telemetry``: what a device reports, how privately, and where it waits while offline."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgekit.core.manifest import Manifest
from edgekit.core.paths import edgekit_home
from edgekit.core.telemetry import SCHEMA_VERSION, ModelRef, Privacy, SampleHeader
from edgekit.runtime.generate import Generation
from edgekit.runtime.telemetry import dp
from edgekit.runtime.telemetry.config import TelemetryConfig, TelemetryConfigError
from edgekit.runtime.telemetry.deid import Deidentifier, NameTagger
from edgekit.runtime.telemetry.generation import GenerationWindow, generation_stats
from edgekit.runtime.telemetry.ledger import Ledger, default_ledger, device_keys
from edgekit.runtime.telemetry.outbox import BudgetSpent, Outbox
from edgekit.runtime.telemetry.privacy import (
    DeviceFleetKeys,
    Noise,
    epoch_at,
    machine_id,
    pseudonym,
    seal_sample,
)
from edgekit.runtime.telemetry.publisher import Publisher
from edgekit.runtime.telemetry.report import ReportDraft, drift_of, input_stats, window_counts
from edgekit.runtime.telemetry.stats import feature_plan, plan_for
from edgekit.runtime.telemetry.window import Capture, Window

log = logging.getLogger("edgekit.telemetry")
__all__ = ["Telemetry", "TelemetryConfig", "TelemetryConfigError"]


class Telemetry:
    """Anonymized, durable MQTT telemetry for one loaded model.

    Pass it to ``Model.load(..., telemetry=...)``. Every ``predict`` is aggregated in
    memory; each ``window_s`` a report (and any captured samples) goes to the on-disk
    outbox, and a background thread publishes it. ``close()`` (or the model's) flushes.
    ``settings`` are ``TelemetryConfig``'s fields (docs/telemetry.md lists them).
    """

    def __init__(self, broker: str, fleet: str, **settings: Any) -> None:
        self._start(TelemetryConfig.build(broker=broker, fleet=fleet, **settings))

    @classmethod
    def from_config(cls, config: TelemetryConfig) -> Telemetry:
        telemetry = cls.__new__(cls)
        telemetry._start(config)
        return telemetry

    @classmethod
    def from_file(cls, path: Path | str, **overrides: Any) -> Telemetry:
        """Settings from the ``[telemetry]`` table of a TOML file; ``overrides`` win."""
        return cls.from_config(TelemetryConfig.from_file(path, **overrides))

    @property
    def fleet(self) -> str:
        return self.config.fleet

    @property
    def window_s(self) -> float:
        return self.config.window_s

    def _start(self, config: TelemetryConfig) -> None:
        self.config = config
        self.capture = Capture(config.capture)
        self.broker = config.endpoint()
        self.device_id = config.device_id or machine_id()
        self.keys = DeviceFleetKeys.load(
            config.fleet, config.fleet_dir, need_public=self.capture.mode != "none"
        )
        outbox = config.outbox or edgekit_home() / "telemetry" / f"{config.fleet}.sqlite"
        self.outbox = Outbox(outbox, config.outbox_max_bytes, config.outbox_max_age_s)
        self._lock = threading.Lock()
        self._roll = threading.Lock()
        self._window: Window | GenerationWindow | None = None
        self._spare: Window | GenerationWindow | None = None
        self._publisher: Publisher | None = None
        self._final_status: dict[str, Any] | None = None
        self._noise: Noise | None = None
        self._ledger: Ledger | None = None
        self._deidentified: bool | None = None
        self._tagger: NameTagger | None = None
        self._model: ModelRef | None = None
        self._reference: Any = None
        self._budget_logged = False
        self.released = 0

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
            min(self.config.capture_max, self.config.capture_max_bytes // max(sample_bytes, 1))
            if self.capture.mode != "none"
            else 0
        )
        self._reference = reference
        deidentify = self._deidentifier(manifest)
        self._window, self._spare = (
            Window(
                sample_shape, output_sample, classes, kind, plan, reference, self.capture, slots, deidentify
            )
            for _ in range(2)
        )
        self._publish(window_counts(self._window))

    def attach_generation(self, manifest: Manifest) -> Callable[..., None]:
        """Called by ``Model.load`` for a decoder: count generations, not inferences. Returns
        what the generation loop calls after each generation."""
        if self._window is not None:
            raise TelemetryConfigError("this Telemetry already serves a model; make one per model")
        entry = manifest.artifacts[0]
        self._model = ModelRef(
            name=manifest.name, version=manifest.version, format=entry.format, precision=entry.precision
        )
        slots = self.config.capture_max if self.capture.mode != "none" else 0
        deidentify = self._deidentifier(manifest)
        first, self._spare = (GenerationWindow(self.capture, slots, deidentify) for _ in range(2))
        self._window = first
        self._publish(first.counts())
        return self.record_generation

    def record_generation(self, result: Generation, decode_s: float, prompt: str, text: str) -> None:
        with self._lock:
            window = self._window
            assert isinstance(window, GenerationWindow)
            window.record(result, decode_s, prompt, text)

    def _publish(self, layout: dict[str, np.ndarray]) -> None:
        """Differential privacy for reports of this layout, then the publisher thread."""
        if self.config.dp_epsilon is not None:
            self._start_dp(layout)
        self._publisher = Publisher(
            self.broker,
            self.fleet,
            self.outbox,
            self.node,
            self._maybe_roll,
            backoff_max_s=self.config.backoff_max_s,
            message_expiry_s=self.config.message_expiry_s,
        )
        self._publisher.start()

    def _start_dp(self, layout: dict[str, np.ndarray]) -> None:
        """Noise scaled to this report layout's sensitivity, and the ε ledger, checked."""
        config = self.config
        assert config.dp_epsilon is not None and config.dp_total is not None
        self._noise = dp.mechanism(layout, config.dp_epsilon, config.dp_clip)
        if config.dp_total < self._noise.epsilon - 1e-9:
            raise TelemetryConfigError(
                f"telemetry: dp_budget {config.dp_total:g} is below one report's ε "
                f"{self._noise.epsilon:g}, so nothing could ever be released; raise dp_budget"
            )
        self._ledger = Ledger(config.ledger or default_ledger(config.fleet), config.fleet, device_keys())
        self._ledger.open(self.outbox.witness())
        if self._ledger.stopped:
            log.warning("telemetry: %s", self._ledger.stopped)
            self._budget_logged = True
        log.info(
            "telemetry: differential privacy at ε=%.3g per window (per %s), %.3g of %.3g spent",
            self._noise.epsilon,
            "inference" if config.dp_clip is None else f"device window of {config.dp_clip}",
            self._ledger.state.spent,
            config.dp_total,
        )
        if self.capture.mode != "none":
            log.warning(
                "telemetry: capture = %s sends raw inputs to the fleet key's holder; they and their "
                "count are outside the ε guarantee (docs/privacy.md)",
                config.capture,
            )

    def _deidentifier(self, manifest: Manifest) -> Callable[[str], str] | None:
        """A text model's captured texts are de-identified unless the config says otherwise."""
        if manifest.text is None:
            return None
        self._deidentified = self.config.deidentify
        if not self.config.deidentify:
            log.warning("telemetry: deidentify = false, so captured texts leave the device as typed")
            return str
        tagger = None
        if self.config.deid_model is not None:
            self._tagger = NameTagger.load(self.config.deid_model)
            tagger = self._tagger
        return Deidentifier(self.config.deid_names, tagger)

    def record(
        self, x: np.ndarray, outputs: np.ndarray, seconds: float, texts: Sequence[str] | None = None
    ) -> None:
        """The hot path, from ``predict``: add one call to the current window."""
        with self._lock:
            window = self._window
            assert isinstance(window, Window)
            window.record(x, outputs, seconds, texts)

    def record_error(self) -> None:
        with self._lock:
            window = self._window
            assert isinstance(window, Window)
            window.record_error()

    # -- windows ---------------------------------------------------------------------

    def epoch(self, now: float | None = None) -> int:
        return epoch_at(self.config.epoch_s, now)

    def node(self) -> str:
        """This device's pseudonym for the current epoch."""
        return pseudonym(self.keys.secret, self.device_id, self.epoch())

    def _maybe_roll(self) -> None:
        window = self._window
        if window is not None and time.time() - window.start >= self.window_s:
            self.flush()

    def flush(self) -> int | None:
        """End the current window now and queue its report; returns its sequence number,
        or None when there was nothing to report or the privacy budget is spent. Under
        differential privacy an idle window is reported too (see ``dp``)."""
        with self._roll:
            with self._lock:
                window, self._window = self._window, self._spare
                self._window.reset()  # type: ignore[union-attr]
            assert window is not None
            window.digest()
            try:
                return self._release(window) if window.calls or self._noise is not None else None
            finally:
                self._spare = window

    def _release(self, window: Window | GenerationWindow) -> int | None:
        assert self._model is not None
        end = time.time()
        node = self.node()
        epoch = self.epoch(end)
        inputs, generation = None, None
        if isinstance(window, GenerationWindow):
            released = dp.release(window.counts(), self._noise, None, self.config.k_anonymity)
            generation = generation_stats(released.counts)
            made = released.counts["generations"]
            ttft = released.counts["ttft"]  # a decoder's latency is its time to first token
            counts = {"inferences": made, "calls": made, "errors": 0 * made, "latency": ttft}
        else:
            if self._noise is None and window.count >= self.config.k_anonymity:
                inputs = input_stats(window)
            config = self.config
            released = dp.release(window_counts(window), self._noise, config.dp_clip, config.k_anonymity)
            counts = released.counts
        privacy = self._privacy(released.suppressed)
        draft = ReportDraft(
            node, epoch, round(window.start, 3), round(end, 3), self._model, counts, inputs,
            drift_of(self._reference, counts), window.samples, privacy, generation,
        )  # fmt: skip
        try:
            seq = self.outbox.put(
                "report", node, draft.encode,
                epsilon=privacy.dp_epsilon or 0.0, budget=self.config.dp_total, ledger=self._ledger,
            )  # fmt: skip
        except BudgetSpent as exc:
            if not self._budget_logged:
                log.warning("telemetry: nothing more is released: %s", exc)
                self._budget_logged = True
            return None
        self.released += 1
        if window.samples and self.keys.public_key is not None:
            self._release_samples(window, node, epoch)
        return seq

    def _release_samples(self, window: Window | GenerationWindow, node: str, epoch: int) -> None:
        arrays = window.sample_arrays()
        key, model = self.keys.public_key, self._model
        assert key is not None and model is not None

        def build(seq: int, dropped: int) -> bytes:
            header = SampleHeader(
                v=SCHEMA_VERSION,
                kind="sample",
                node=node,
                epoch=epoch,
                seq=seq,
                model=model,
                count=window.samples,  # type: ignore[arg-type]
            )
            return seal_sample(header, arrays, key)

        self.outbox.put("sample", node, build)

    def _unit(self) -> Literal["inference", "window", "generation"]:
        if isinstance(self._window, GenerationWindow):
            return "generation"
        return "inference" if self.config.dp_clip is None else "window"

    def _privacy(self, suppressed: int) -> Privacy:
        noise, config, ledger = self._noise, self.config, self._ledger
        dp_on = noise is not None and ledger is not None
        return Privacy(
            k=config.k_anonymity,
            suppressed_buckets=suppressed,
            capture=self.capture.mode,  # type: ignore[arg-type]
            deidentified=self._deidentified,
            dp_epsilon=noise.epsilon if noise else None,
            dp_spent=ledger.state.spent + noise.epsilon if noise and ledger else None,
            dp_budget=config.dp_total if dp_on else None,
            dp_unit=self._unit() if dp_on else None,
            dp_clip=config.dp_clip if dp_on else None,
            dp_sensitivity=noise.sensitivity if noise else None,
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
            **self._privacy_status(),
        }

    def _privacy_status(self) -> dict[str, Any]:
        ledger = self._ledger
        if ledger is None:
            return {"epsilon_spent": None}
        return {
            "epsilon_spent": ledger.state.spent,
            "epsilon_budget": self.config.dp_total,
            "privacy_stopped": ledger.stopped,
        }

    def close(self, timeout: float | None = None) -> None:
        """Report the open window, send what can be sent within ``timeout`` seconds, stop.
        What is not acknowledged by then stays in the outbox for the next start."""
        publisher = self._publisher
        if publisher is None or self._final_status is not None:
            return
        self.flush()
        if not publisher.drain(self.config.close_timeout_s if timeout is None else timeout):
            log.info(
                "telemetry: %d messages wait in %s for the next start",
                self.outbox.size()[0],
                self.outbox.path,
            )
        publisher.stop()
        publisher.join(timeout=5)
        self._final_status = {**self.status, "connected": False}
        self.outbox.close()
        if self._tagger is not None:
            self._tagger.close()
