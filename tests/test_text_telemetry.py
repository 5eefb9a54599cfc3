"""Text telemetry against a real Mosquitto: token-length and unknown-token drift, the predicted
intents, and captured texts de-identified before they are sealed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_telemetry import Gatherer, make_telemetry
from text_models import INTENTS

from edgekit.convert import ConvertOptions, convert
from edgekit.core.profiles import load_profile
from edgekit.core.text import TEXT_INPUT
from edgekit.fleet import init_fleet
from edgekit.runtime import Model
from edgekit.runtime.telemetry.deid import Deidentifier
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto is not installed (.ci/run installs it)"
)

PERSONAL = [
    "turn on the kitchen lights for Alice",
    "set the office to 21 degrees and mail bob.smith+home@example.org",
    "call 555-0142 when the garage fan starts, Bob",
    "start the bedroom fan at 7:30 for ALICE see https://example.org/x?id=99",
]


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    return init_fleet("f7", tmp_path / "fleet")


@pytest.fixture(scope="module")
def bundle(intent_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return convert(ConvertOptions(
        model=intent_files["model"], profile=load_profile("raspberry-pi-5"),
        output=tmp_path_factory.mktemp("text-telemetry") / "intent.ekb", format="onnx", precision="fp32",
        tokenizer=intent_files["tokenizer"], calibration=intent_files["calibration"], labels=intent_files["labels"],
    ))


def test_the_text_reference_bins_token_counts_and_unknown_rates(bundle: Any) -> None:
    reference = bundle.manifest.reference
    assert reference is not None and reference.input == TEXT_INPUT and reference.features == "values"
    assert (
        len(reference.edges) == 2 and reference.classes is not None and len(reference.classes) == len(INTENTS)
    )
    assert 4 <= min(reference.edges[0]) and max(reference.edges[0]) <= 16  # commands of 4 to 16 tokens


def test_captured_text_is_deidentified_before_it_is_sealed(
    bundle: Any,
    fleet_dir: Path,
    tmp_path: Path,
) -> None:
    with LocalBroker(tmp_path / "broker") as broker:
        gatherer = Gatherer(broker, fleet_dir, tmp_path / "collected")
        telemetry = make_telemetry(
            broker.url, fleet_dir, tmp_path, capture="random:1", capture_max=8, deid_names=("alice", "Bob")
        )
        model = Model.load(bundle.output, telemetry=telemetry, allow_unsigned=True)
        scores = model.predict_text(PERSONAL)
        model.predict_text(["☃☃ ✈✈ ♞♞", "turn off the garage lights"])  # symbols the vocabulary lacks: [UNK]
        model.close()
        collector = gatherer.run(lambda c: c.inferences >= 6 and c.sample_count >= 6)
        gatherer.close()
        collector.finish()
    assert [INTENTS[i] for i in np.argmax(scores, axis=-1)][:1] == ["lights_on"]  # type: ignore[call-overload]
    with np.load(tmp_path / "collected" / "samples.npz") as samples:
        texts = [str(t) for t in samples["text"]]
        features = samples["x"]
    assert len(texts) == 6 and features.shape == (6, 2)
    for text in texts:
        assert not re.search(r"\d", text), text
        assert (
            "@" not in text
            and "example.org" not in text
            and "alice" not in text.lower()
            and "bob" not in text.lower()
        )
    assert "turn on the kitchen lights for [NAME]" in texts
    assert "set the office to [NUM] degrees and mail [EMAIL]" in texts
    assert "call [PHONE] when the garage fan starts, [NAME]" in texts
    assert "start the bedroom fan at [NUM] for [NAME] see [URL]" in texts
    unknown = features[texts.index("☃☃ ✈✈ ♞♞"), 1]
    assert unknown > 0.3 and features[texts.index("turn off the garage lights"), 1] == 0.0


def test_deidentification_masks_each_pattern() -> None:
    mask = Deidentifier(["Anna Lee", "Tom"])
    assert mask("Tom's code is 4711, call +1 (555) 010-2030") == "[NAME]'s code is [NUM], call [PHONE]"
    assert mask("remind anna lee at 2026-12-02 09:30") == "remind [NAME] at [DATE] [NUM]"
    assert mask("tomato soup") == "tomato soup"  # whole words only
    assert mask("x" * 1000) == "x" * 256


def test_a_slot_tagger_reports_and_its_captured_text_is_deidentified(
    tagger_files: dict[str, Path], fleet_dir: Path, tmp_path: Path
) -> None:
    tagger = convert(ConvertOptions(
        model=tagger_files["model"], profile=load_profile("raspberry-pi-5"), output=tmp_path / "slots.ekb",
        format="onnx", precision="fp32", tokenizer=tagger_files["tokenizer"],
        calibration=tagger_files["calibration"], labels=tagger_files["labels"],
    ))
    assert tagger.manifest.reference is not None and tagger.manifest.reference.input == TEXT_INPUT
    with LocalBroker(tmp_path / "broker") as broker:
        gatherer = Gatherer(broker, fleet_dir, tmp_path / "collected")
        telemetry = make_telemetry(broker.url, fleet_dir, tmp_path, capture="random:1", capture_max=4,
                                   deid_names=("alice", "Bob"))
        with Model.load(tagger.output, telemetry=telemetry, allow_unsigned=True) as model:
            tagged = model.tag_text(PERSONAL)
        collector = gatherer.run(lambda c: c.inferences >= 4 and c.sample_count >= 4)
        gatherer.close()
        collector.finish()
    assert [len(words) for words in tagged] == [len(text.split()) for text in PERSONAL]
    with np.load(tmp_path / "collected" / "samples.npz") as samples:
        texts = [str(t) for t in samples["text"]]
    assert sorted(texts) == sorted(Deidentifier(["alice", "Bob"])(text) for text in PERSONAL)
