"""Token classification (slot tagging): ``.jsonl`` tags per word, aligned to each word's
first token, scored per entity span exactly as seqeval counts them, gated, and run from text
on the device with the entities it found."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from text_models import TAGS, write_jsonl

from edgekit.cli import main
from edgekit.convert import ConvertOptions, convert
from edgekit.core.errors import DataError
from edgekit.core.profiles import load_profile
from edgekit.core.spans import entities, span_report
from edgekit.core.text import IGNORED, TextEncoder, TextInputs, align_tags, read_jsonl
from edgekit.fit.report import write_convert_report
from edgekit.runtime import Model

SPOKEN = ["turn on the living room lights", "set a timer for 5 minutes", "heat the kitchen to 21 degrees"]


def test_span_report_matches_seqeval_on_random_tags() -> None:
    from seqeval.metrics import accuracy_score, classification_report

    rng = random.Random(0)
    alphabet = ["O", "B-ROOM", "I-ROOM", "B-DEV", "I-DEV", "E-DEV", "S-VAL", "I-VAL"]
    compared = 0
    for _ in range(400):
        true = [[rng.choice(alphabet) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 6))]
        found = [[rng.choice(alphabet) for _ in row] for row in true]
        ours = span_report(true, found)
        if not ours.names:  # no entity anywhere: seqeval's averages are NaN
            continue
        theirs = classification_report(true, found, output_dict=True, zero_division=0)
        rows = dict(zip(ours.names, ours.classes, strict=True))
        rows.update({"micro avg": ours.micro, "macro avg": ours.macro, "weighted avg": ours.weighted})
        for name, row in rows.items():
            want = theirs[name]
            assert (row.precision, row.recall, row.f1, row.support) == pytest.approx(
                (want["precision"], want["recall"], want["f1-score"], want["support"])), name
        assert ours.accuracy == pytest.approx(accuracy_score(true, found))
        compared += 1
    assert compared > 350
    assert entities(["B-ROOM", "I-ROOM", "O", "I-DEV", "B-DEV"]) == [
        ("ROOM", 0, 1),
        ("DEV", 3, 3),
        ("DEV", 4, 4),
    ]


def _encoder(tokenizer: Path, length: int) -> TextEncoder:
    dtypes = {"input_ids": "int64", "attention_mask": "int64"}
    return TextEncoder(tokenizer.read_bytes(), length, TextInputs("input_ids", "attention_mask"), dtypes)


def test_each_word_is_scored_at_its_first_token(tagger_files: dict[str, Path], tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    wordpiece = _encoder(tagger_files["tokenizer"], 8)
    text = "  Turn ON the kitchenette  lights please now"  # odd spacing, case, a word split in pieces
    feed, [starts] = wordpiece.encode_words([text])
    tokens = Tokenizer.from_file(str(tagger_files["tokenizer"])).encode(text).tokens
    assert starts[:3] == [1, 2, 3] and tokens[1:4] == ["turn", "on", "the"]
    assert tokens[starts[3]] == "kitchen" and tokens[starts[3] + 1] == "##et"
    assert all(not tokens[p].startswith("##") for p in starts if p >= 0)
    assert starts[-1] == -1 and feed["input_ids"].shape == (1, 8)  # cut off by the length, not scored
    y = align_tags([[1, 0, 0, 3, 5, 0, 0]], [starts], 8)
    assert [int(y[0, p]) for p in starts if p >= 0] == [1, 0, 0, 3, 5][: sum(p >= 0 for p in starts)]
    assert (y == IGNORED).sum() == 8 - sum(p >= 0 for p in starts)
    # a byte-level BPE tokenizer (GPT-2 style): tokens carry their leading space in their offsets
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=True), decoders.ByteLevel()
    bpe.train_from_iterator(SPOKEN * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>"]))
    bpe.save(str(tmp_path / "bpe.json"))
    _, [first] = _encoder(tmp_path / "bpe.json", 32).encode_words(["heat the  kitchen to 21 degrees"])
    assert first == sorted(set(first)) and len(first) == 6 and -1 not in first


def test_tags_in_jsonl_are_checked_word_by_word(tmp_path: Path) -> None:
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [{"text": "turn on the lights", "tags": ["O", "O", "B-DEVICE"]}]
    )
    with pytest.raises(DataError, match=r"line 1: 3 tags for 4 words; give \"tags\" one tag per"):
        read_jsonl(bad, "evaluation")
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"text": "a b", "tags": ["O", "O"]}, {"text": "c"}])
    with pytest.raises(DataError, match=r'the 2. record has no "tags" while others do'):
        read_jsonl(partial, "evaluation")


@pytest.fixture(scope="module")
def tagger(tagger_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    return convert(ConvertOptions(
        model=tagger_files["model"], profile=load_profile("raspberry-pi-5"),
        output=tmp_path_factory.mktemp("tagger") / "slots.ekb", format="onnx", precision="dynamic",
        calibration=tagger_files["calibration"], evaluation=tagger_files["evaluation"],
        labels=tagger_files["labels"], tokenizer=tagger_files["tokenizer"], name="slots", gate_metric="macro-f1",
    ))


def test_a_slot_tagger_converts_gates_on_span_f1_and_tags_words_on_the_device(
    tagger: Any, tagger_files: dict[str, Path], tmp_path: Path
) -> None:
    from seqeval.metrics import classification_report

    manifest = tagger.manifest
    assert manifest.text.task == "tokens" and manifest.labels == TAGS
    accuracy = manifest.artifacts[0].metrics.accuracy
    assert accuracy.level == "word" and accuracy.metric == "macro-f1" and accuracy.gate == "passed"
    report = accuracy.classes.artifact
    assert report.names == ("DEVICE", "ROOM", "TIME", "VALUE") and report.micro.f1 > 0.9
    assert accuracy.artifact == pytest.approx(100 * report.macro.f1)
    # the bundle's span report is seqeval's on what the device predicts for the same texts
    records = [json.loads(line) for line in tagger_files["evaluation"].read_text().splitlines()]
    tagged = Model.load(tagger.output, allow_unsigned=True).tag_text([r["text"] for r in records])
    theirs = classification_report(
        [r["tags"] for r in records], [[tag for _, tag in words] for words in tagged], output_dict=True
    )
    for name, row in zip(report.names, report.classes, strict=True):
        assert (row.f1, row.support) == pytest.approx((theirs[name]["f1-score"], theirs[name]["support"]))
    assert report.micro.f1 == pytest.approx(theirs["micro avg"]["f1-score"])
    write_convert_report(tmp_path / "slots.html", tagger, load_profile("raspberry-pi-5"), "slots")
    page = (tmp_path / "slots.html").read_text()
    assert (
        "Per entity span: float → dynamic" in page and "micro avg" in page and "Tag accuracy per word" in page
    )


def test_run_text_prints_the_entities(tagger: Any) -> None:
    shown = CliRunner().invoke(main, ["run", str(tagger.output), "--allow-unsigned", *_texts(SPOKEN)])
    assert shown.exit_code == 0, shown.output
    assert "ROOM: living room" in shown.output and "TIME: 5 minutes" in shown.output
    result = CliRunner().invoke(
        main, ["run", str(tagger.output), "--allow-unsigned", "--json", *_texts(SPOKEN)]
    )
    texts = json.loads(result.stdout)["texts"]
    assert {"type": "VALUE", "text": "21 degrees"} in texts[2]["entities"]
    assert [w["tag"] for w in texts[0]["words"]][:3] == ["O", "O", "O"]


def _texts(texts: list[str]) -> list[str]:
    return [arg for text in texts for arg in ("--text", text)]


def test_tags_for_a_model_that_classifies_whole_texts_are_refused(
    intent_files: dict[str, Path], tagger_files: dict[str, Path], tmp_path: Path
) -> None:
    options = {"profile": load_profile("raspberry-pi-5"), "format": "onnx", "precision": "fp32"}
    with pytest.raises(DataError, match=r'the model classifies whole texts; give each record a "label"'):
        convert(ConvertOptions(model=intent_files["model"], tokenizer=intent_files["tokenizer"],
                               evaluation=tagger_files["evaluation"], output=tmp_path / "a.ekb", **options))
    labelled = write_jsonl(tmp_path / "labelled.jsonl", [{"text": "turn on the lights", "label": 0}] * 20)
    with pytest.raises(DataError, match=r'the model tags every token; give each record "tags", one per word'):
        convert(ConvertOptions(model=tagger_files["model"], tokenizer=tagger_files["tokenizer"],
                               evaluation=labelled, output=tmp_path / "b.ekb", **options))


@pytest.mark.slow
def test_a_pruned_slot_tagger_is_distilled_token_by_token(
    tagger_files: dict[str, Path], tmp_path: Path
) -> None:
    pruned = convert(ConvertOptions(
        model=tagger_files["model"], profile=load_profile("raspberry-pi-5"), output=tmp_path / "pruned.ekb",
        format="onnx", precision="fp32", tokenizer=tagger_files["tokenizer"], evaluation=tagger_files["evaluation"],
        labels=tagger_files["labels"], prune=0.5, train_data=tagger_files["train"], prune_epochs=2,
    ))
    record = pruned.manifest.compression
    assert record is not None and record.method == "heads" and record.distilled
    assert (record.heads, record.neurons) == ((2, 1), (64, 32)) and record.train_samples == 800
    assert record.top1_before is not None and record.top1_after is not None  # per word
    assert record.top1_before - record.top1_after <= 2.0
    report = pruned.manifest.artifacts[0].metrics.accuracy.classes.artifact
    assert report.micro.f1 > 0.85


def test_fit_reports_the_chosen_taggers_spans(tagger_files: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "fit", str(tagger_files["model"]), "-t", "raspberry-pi-5", "--tokenizer", str(tagger_files["tokenizer"]),
        "--labels", str(tagger_files["labels"]), "--eval", str(tagger_files["evaluation"]), "--format", "onnx",
        "--precision", "dynamic", "-o", str(tmp_path / "fit.ekb"), "--report", str(tmp_path / "fit.html"), "--json",
    ])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["chosen"]["top1"] > 90  # per word
    assert found["classes"]["artifact"]["names"] == ["DEVICE", "ROOM", "TIME", "VALUE"]
    assert "Per entity span: float → dynamic" in (tmp_path / "fit.html").read_text()
