"""The examples end to end, in quick mode, as a user runs them: each must exit 0 and
its summary.json must show the scenario's success criteria met."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgekit.testing.mosquitto import find_mosquitto

ROOT = Path(__file__).resolve().parents[1]
BROKER = find_mosquitto() is not None

pytestmark = pytest.mark.slow


def _example(name: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / name
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name / "run.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checks"] and all(check["ok"] for check in summary["checks"])
    return summary


def test_smart_home_meter(tmp_path: Path) -> None:
    summary = _example("smart_home_meter", tmp_path)
    numbers = summary["numbers"]
    assert numbers["v1_installed_accuracy"] >= 0.85
    assert numbers["v1_fogged_accuracy"] <= numbers["v1_installed_accuracy"] - 0.15  # the fog hurts
    assert numbers["v2_fogged_accuracy"] >= numbers["v1_fogged_accuracy"] + 0.15  # retraining helps
    assert numbers["v2_installed_accuracy"] >= 0.8  # and forgets nothing much
    assert summary["telemetry"] is BROKER
    if BROKER:
        installed, fogged, retrained = numbers["drift_scores"]
        assert installed < 0.25 <= fogged and retrained < 0.25  # drift injected, seen, and gone after v2
        assert numbers["samples"] >= 50


def test_factory_vibration(tmp_path: Path) -> None:
    summary = _example("factory_vibration", tmp_path)
    assert summary["numbers"]["accuracy"] >= 90
    assert summary["telemetry"] is BROKER
    if BROKER:
        drift = summary["numbers"]["drift"]
        flagged = {name for name, scores in drift.items() if scores[-1] >= 0.25}
        assert flagged == {"line-2-pump", "line-3-fan"}  # the two injected sensor drifts, only those
        assert all(max(scores) < 0.25 for name, scores in drift.items() if name not in flagged)
        assert all(len(scores) == 8 for scores in drift.values())
        promoted, rolled_back = summary["numbers"]["rollout_v2"], summary["numbers"]["rollout_v3"]
        assert promoted["decision"] == "promoted" and promoted["running"] == {"2": 5}
        assert rolled_back["decision"] == "rolled-back" and "p95" in rolled_back["reason"]
        assert rolled_back["running"] == {"2": 5} and rolled_back["canaries"] == 1


def test_jetson_vision(tmp_path: Path) -> None:
    summary = _example("jetson_vision", tmp_path)
    numbers = summary["numbers"]
    assert numbers["int8_runtime_top1"] >= 0.7 and numbers["fp16_runtime_top1"] >= 0.7
    assert numbers["int8_size_kb"] < numbers["fp16_size_kb"]
    names = {check["check"] for check in summary["checks"]}
    assert "int8 is symmetric QDQ, as TensorRT wants" in names
    assert "int8 runs on the first provider that works" in names


def test_voice_commands(tmp_path: Path) -> None:
    summary = _example("voice_commands", tmp_path)
    numbers = summary["numbers"]
    assert numbers["heads"] == [16, 8] and numbers["pruned_parameters"] < 0.75 * numbers["parameters"]
    assert numbers["top1_before"] - numbers["top1_after"] <= 2.0 and numbers["artifact_top1"] >= 90
    assert numbers["jetson_precision"] in ("fp16", "int8") and numbers["spoken_right"] >= 5
    assert (
        numbers["slots_micro_f1"] >= 90 and numbers["slots_macro_f1_float"] - numbers["slots_macro_f1"] <= 1
    )
    assert summary["telemetry"] is BROKER
    if BROKER:
        assert numbers["captured"] == 6  # every spoken command, de-identified (checked by the example)


def test_pii_tagger(tmp_path: Path) -> None:
    summary = _example("pii_tagger", tmp_path)
    numbers = summary["numbers"]
    assert numbers["names_recall_patterns"] < 0.5 <= 0.95 <= numbers["names_recall_tagger"]
    assert min(numbers["structured_recall"].values()) >= 0.99
    assert summary["telemetry"] is BROKER
    if BROKER:
        assert numbers["captured"] and all("[NAME]" in text for text in numbers["captured"])


def test_hub_assistant(tmp_path: Path) -> None:
    summary = _example("hub_assistant", tmp_path)
    numbers = summary["numbers"]
    assert numbers["sizes"]["int4"] < numbers["sizes"]["int8"] < numbers["sizes"]["fp16"]
    assert numbers["held_out_right"] >= 0.8 and numbers["decode_tokens_per_s"] > 0
    assert summary["telemetry"] is BROKER
    assert numbers["sizes"]["tflite-dynamic"] < numbers["sizes"]["fp16"]  # int8 weights, where LiteRT quantizes
    if BROKER:
        assert numbers["generations_reported"] == 10 and numbers["generations_captured"] == 8
