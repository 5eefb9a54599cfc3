"""Simulated devices for the fleet database, collector and dashboard tests: each publishes
reports that pass the wire schema (a version, latency, errors, drift, class counts) and
samples sealed to the fleet key, with handwritten digits from scikit-learn as inputs, over a
real MQTT connection."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import x25519
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.core.manifest import ReferenceStats
from edgekit.core.telemetry import (
    CONFIDENCE_EDGES,
    LATENCY_EDGES_MS,
    SCHEMA_VERSION,
    Drift,
    ModelRef,
    Privacy,
    Report,
    SampleHeader,
    topic,
)
from edgekit.runtime.telemetry.privacy import seal_sample
from edgekit.runtime.telemetry.stats import bin_counts, plan_for, psi


def node_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


@dataclass
class SimDevice:
    """One device: ``latency_ms`` is its typical latency, ``drift`` its drift score. With a
    bundle's ``reference`` and real ``inputs``, each window bins 200 of them (plus ``shift``)
    as the device does, and its drift is the PSI of those bins and classes, as measured on a
    device."""

    name: str
    version: int = 1
    latency_ms: float = 2.0
    error_rate: float = 0.0
    drift: float = 0.02
    seq: int = 0
    epoch: int = 1
    reference: ReferenceStats | None = None
    inputs: np.ndarray | None = None
    shift: float = 0.0
    dp_epsilon: float | None = None
    """Reports say they were noised at this ε per report, against a budget of 100 reports."""

    @property
    def node(self) -> str:
        return node_of(self.name)

    def report(self, end: float, window_s: float = 60.0, inferences: int = 600) -> bytes:
        self.seq += 1
        rng = np.random.default_rng(self.seq)
        latency = np.zeros(len(LATENCY_EDGES_MS) + 1, np.int64)
        spread = np.clip(rng.normal(self.latency_ms, self.latency_ms / 4, inferences), 0.01, None)
        np.add.at(latency, np.searchsorted(LATENCY_EDGES_MS, spread), 1)
        classes = np.bincount(rng.integers(0, 10, inferences), minlength=10)
        confidence = np.bincount(rng.integers(5, 10, inferences), minlength=len(CONFIDENCE_EDGES) + 1)
        level = self.drift * rng.uniform(0.9, 1.1)
        drift, bins = Drift(input_psi=level, output_psi=level / 2, score=level), None
        if self.reference is not None and self.inputs is not None:
            drift, bins = self._measured(rng, classes)
        report = Report(
            v=SCHEMA_VERSION, kind="report", node=self.node, epoch=self.epoch, seq=self.seq,
            start=end - window_s, end=end, model=ModelRef(name="digits", version=self.version, format="onnx",
                                                          precision="int8"),
            inferences=inferences, calls=inferences, errors=int(self.error_rate * inferences),
            latency_ms=tuple(int(c) for c in latency), classes=tuple(int(c) for c in classes),
            confidence=tuple(int(c) for c in confidence), feature_bins=bins, inputs=None,
            drift=drift, samples=0, dropped=0,
            privacy=self._privacy(),
        )
        return report.model_dump_json().encode()

    def _privacy(self) -> Privacy:
        if self.dp_epsilon is None:
            return Privacy(k=5, suppressed_buckets=0)
        return Privacy(
            k=5, suppressed_buckets=0, dp_epsilon=self.dp_epsilon, dp_spent=self.seq * self.dp_epsilon,
            dp_budget=100 * self.dp_epsilon, dp_unit="window", dp_clip=200, dp_sensitivity=400,
            capture="random",
        )

    def _measured(
        self, rng: np.random.Generator, classes: np.ndarray
    ) -> tuple[Drift, tuple[tuple[int, ...], ...]]:
        assert self.reference is not None and self.inputs is not None
        batch = self.inputs[rng.choice(len(self.inputs), 200)] + self.shift
        counts = bin_counts(plan_for(self.reference)(batch), np.asarray(self.reference.edges))
        input_psi = max(
            psi(np.asarray(e), row) for e, row in zip(self.reference.expected, counts, strict=True)
        )
        output_psi = psi(np.asarray(self.reference.classes), classes) if self.reference.classes else 0.0
        drift = Drift(input_psi=round(input_psi, 4), output_psi=round(output_psi, 4),
                      score=round(max(input_psi, output_psi), 4))
        return drift, tuple(tuple(int(c) for c in row) for row in counts)

    def sample(
        self, x: np.ndarray, pred: np.ndarray, confidence: np.ndarray, key: x25519.X25519PublicKey
    ) -> bytes:
        self.seq += 1
        header = SampleHeader(v=SCHEMA_VERSION, kind="sample", node=self.node, epoch=self.epoch, seq=self.seq,
                              model=ModelRef(name="digits", version=self.version, format="onnx", precision="int8"),
                              count=len(x))
        arrays = {
            "x": x.astype(np.float32),
            "pred": pred.astype(np.int64),
            "confidence": confidence.astype(np.float32),
        }
        return seal_sample(header, arrays, key)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: (1797, 8, 8, 1) in 0..1, and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[..., None], data.target


class Publisher:
    """One MQTT connection publishing for many simulated devices, QoS 1."""

    def __init__(self, port: int, fleet: str) -> None:
        self.fleet = fleet
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(200)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.pending: list[Any] = []

    def send(self, device: SimDevice, kind: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic(self.fleet, device.node, kind), payload, qos=1, retain=retain)  # type: ignore[arg-type]
        self.pending.append(info)

    def status(self, device: SimDevice, state: str) -> None:
        self.send(device, "status", state.encode(), retain=True)

    def wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for info in self.pending:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self.pending.clear()

    def close(self) -> None:
        self.wait()
        self.client.disconnect()
        self.client.loop_stop()


def report_seqs(payloads: list[bytes]) -> set[tuple[str, int]]:
    return {(json.loads(p)["node"], json.loads(p)["seq"]) for p in payloads}
