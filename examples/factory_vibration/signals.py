"""Motor vibration as an accelerometer on a bearing housing records it, made in code.

A healthy motor shows its shaft harmonics (1x unbalance, 2x misalignment, 3x looseness)
over broadband noise. A localized bearing defect adds a train of impacts, one each time a
rolling element meets the defect, every impact ringing the housing's structural resonance.
The impact rates are the characteristic defect frequencies (Randall and Antoni, "Rolling
element bearing diagnostics - A tutorial", Mechanical Systems and Signal Processing 25(2),
2011, 485-520, equations 1-4), with shaft frequency f_r, n rolling elements of diameter d
on pitch diameter D, and contact angle phi:

    BPFO = n f_r / 2 (1 - d/D cos phi)              outer race defect
    BPFI = n f_r / 2 (1 + d/D cos phi)              inner race defect
    BSF  = D f_r / (2 d) (1 - (d/D cos phi)^2)      ball spin; a ball defect strikes both races: 2 BSF
    FTF  = f_r / 2 (1 - d/D cos phi)                cage

Following the same tutorial: impacts slip randomly by 1-2 % (the rolling elements do not
roll perfectly), an inner race defect turns with the shaft through the load zone, so its
impacts are amplitude-modulated at f_r, and a ball defect at the cage frequency FTF.

The bearing is an SKF 6205 (n = 9, d = 7.94 mm, D = 39.04 mm, phi = 0), the drive-end
bearing of the Case Western Reserve University bearing data set, whose published defect
frequencies (3.585, 5.415 and 4.714 x f_r) these formulas reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("normal", "outer race", "inner race", "ball")
RATE = 10_240  # samples per second
LENGTH = 1024  # samples per reading: 100 ms


@dataclass(frozen=True)
class Bearing:
    balls: int = 9
    ball_mm: float = 7.94
    pitch_mm: float = 39.04
    contact_deg: float = 0.0

    def defect_orders(self) -> dict[str, float]:
        """Impact rates as multiples of the shaft frequency."""
        ratio = self.ball_mm / self.pitch_mm * np.cos(np.radians(self.contact_deg))
        return {
            "outer race": self.balls / 2 * (1 - ratio),
            "inner race": self.balls / 2 * (1 + ratio),
            "ball": 2 * self.pitch_mm / (2 * self.ball_mm) * (1 - ratio**2),
            "cage": (1 - ratio) / 2,
        }


SKF_6205 = Bearing()


@dataclass(frozen=True)
class Sensor:
    """An accelerometer: sensitivity (1.0 as calibrated) and DC bias in g."""

    gain: float = 1.0
    bias: float = 0.0


def readings(
    labels: np.ndarray, rng: np.random.Generator, sensor: Sensor = Sensor(), bearing: Bearing = SKF_6205
) -> np.ndarray:
    """One 100 ms reading per label (an index into CLASSES), shape (n, LENGTH, 1), in g."""
    n = len(labels)
    t = np.arange(LENGTH) / RATE
    shaft = 1797 / 60 * rng.uniform(0.97, 1.03, n)  # Hz; the motor's speed varies with load
    signal = np.zeros((n, LENGTH))
    for harmonic, amplitude in ((1, 0.3), (2, 0.15), (3, 0.05)):
        a = amplitude * rng.uniform(0.5, 1.5, n)
        signal += a[:, None] * np.sin(
            2 * np.pi * harmonic * shaft[:, None] * t + rng.uniform(0, 2 * np.pi, n)[:, None]
        )
    signal += rng.normal(0, 1, (n, LENGTH)) * rng.uniform(0.1, 0.2, n)[:, None]
    orders = bearing.defect_orders()
    resonance = rng.uniform(2500, 3500, n)  # Hz, the housing's ring
    for i in np.flatnonzero(labels > 0):
        kind = CLASSES[labels[i]]
        period = 1 / (orders[kind] * shaft[i])
        impacts = np.arange(rng.uniform(0, period), t[-1], period)
        impacts = impacts + rng.normal(0, 0.015 * period, len(impacts))  # slip
        if kind == "inner race":
            modulation = 1 + np.cos(2 * np.pi * shaft[i] * impacts)
        elif kind == "ball":
            modulation = 1 + np.cos(2 * np.pi * orders["cage"] * shaft[i] * impacts)
        else:
            modulation = np.ones(len(impacts))
        severity = rng.uniform(0.3, 1.0)
        for at, m in zip(impacts, modulation, strict=True):
            after = t - at
            ring = np.where(
                after >= 0,
                np.exp(-np.clip(after, 0, None) * 900) * np.sin(2 * np.pi * resonance[i] * after),
                0,
            )
            signal[i] += severity * m * ring
    return (sensor.gain * signal + sensor.bias).astype(np.float32)[..., np.newaxis]


def build_classifier():  # type: ignore[no-untyped-def]
    import keras

    return keras.Sequential(
        [
            keras.Input((LENGTH, 1), name="vibration"),
            keras.layers.Conv1D(16, 15, strides=2, activation="relu"),
            keras.layers.MaxPooling1D(2),
            keras.layers.Conv1D(32, 9, strides=2, activation="relu"),
            keras.layers.MaxPooling1D(2),
            keras.layers.Conv1D(32, 9, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ],
        name="bearing_faults",
    )
