"""A generated corpus of smart-home commands: templates with synonyms, paraphrases, polite
and casual openings, numbers, and typos, since nothing may be downloaded. Each command's
intent is its label, and each word's slot its tag (``B-ROOM I-ROOM`` for "living room",
``O`` outside every slot); its words are what a hub hears after speech-to-text."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway", "kids room",
         "basement", "dining room")
ON, OFF = ("turn on", "switch on", "power up", "start"), ("turn off", "switch off", "shut off", "kill")
OPENINGS = ("", "", "", "please ", "hey hub ", "could you ", "can you please ", "i want to ", "ok ")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "lights_on": ("{on} the {room} lights", "{on} the lights in the {room}", "{room} lights on",
                  "make it bright in the {room}", "light up the {room}", "i need light in the {room}"),
    "lights_off": ("{off} the {room} lights", "{off} the lights in the {room}", "{room} lights off",
                   "make it dark in the {room}", "no more lights in the {room}", "lights out in the {room}"),
    "set_temperature": ("set the {room} to {n} degrees", "make the {room} {n} degrees",
                        "heat the {room} to {n}", "{room} temperature {n}",
                        "warm the {room} up to {n} degrees", "cool the {room} to {n}"),
    "fan_on": ("{on} the {room} fan", "{on} the fan in the {room}", "{room} fan on",
               "get the {room} fan going", "i need some air in the {room}",
               "run the ceiling fan in the {room}"),
    "fan_off": ("{off} the {room} fan", "{off} the fan in the {room}", "{room} fan off",
                "stop the {room} fan", "enough air in the {room}", "no more fan in the {room}"),
    "blinds_open": ("open the {room} blinds", "raise the blinds in the {room}", "{room} blinds up",
                    "let the sun into the {room}", "pull up the {room} shades"),
    "blinds_close": ("close the {room} blinds", "lower the blinds in the {room}", "{room} blinds down",
                     "keep the sun out of the {room}", "pull down the {room} shades"),
    "set_timer": ("set a timer for {n} minutes", "timer {n} minutes", "remind me in {n} minutes",
                  "wake me in {n} minutes", "start a {n} minute timer", "count down {n} minutes"),
}  # fmt: skip
INTENTS = tuple(TEMPLATES)
SLOTS = ("ROOM", "DEVICE", "VALUE", "TIME")
TAGS = ("O", *(f"{mark}-{slot}" for slot in SLOTS for mark in "BI"))
DEVICES = {"lights", "light", "fan", "blinds", "shades", "ceiling"}
UNITS = {"degrees", "minutes", "minute"}
"""The word after a number that belongs to its slot: "21 degrees" is a VALUE, "5 minutes" a TIME."""


def _typo(text: str, rng: random.Random) -> str:
    """One slip of the recogniser or the thumb, inside one word: a letter dropped, doubled or
    swapped (so every word keeps its tag)."""
    words = text.split(" ")
    which = rng.choice([i for i, word in enumerate(words) if len(word) > 1 and word.isalpha()])
    words[which] = _slip(words[which], rng)
    return " ".join(words)


def _slip(text: str, rng: random.Random) -> str:
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    i = rng.choice(letters)
    kind = rng.randrange(3)
    if kind == 0:
        return text[:i] + text[i + 1 :]
    if kind == 1:
        return text[:i] + text[i] + text[i:]
    j = min(i + 1, len(text) - 1)
    return text[:i] + text[j] + text[i] + text[j + 1 :]


def commands(count: int, seed: int, typos: float = 0.15) -> list[dict[str, Any]]:
    """``count`` commands: ``{"text", "label", "tags"}``, the intent and one tag per word."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        intent = rng.choice(INTENTS)
        template = rng.choice(OPENINGS) + rng.choice(TEMPLATES[intent])
        values = {"room": rng.choice(ROOMS), "on": rng.choice(ON), "off": rng.choice(OFF)}
        words, tags = _tagged(template, {**values, "n": str(rng.randint(2, 30))}, intent)
        text = " ".join(words)
        if rng.random() < typos:
            text = _typo(text, rng)
        records.append({"text": text, "label": intent, "tags": tags})
    return records


def _tagged(template: str, values: dict[str, str], intent: str) -> tuple[list[str], list[str]]:
    """The template's words, filled in, and each one's tag."""
    words: list[str] = []
    tags: list[str] = []
    for piece in template.split():
        slot = {"{room}": "ROOM", "{n}": "TIME" if intent == "set_timer" else "VALUE"}.get(piece)
        if piece.startswith("{"):
            filled = values[piece[1:-1]].split()
            words += filled
            tags += [f"B-{slot}", *[f"I-{slot}"] * (len(filled) - 1)] if slot else ["O"] * len(filled)
        elif piece in UNITS and tags and tags[-1][2:] in ("VALUE", "TIME"):
            words.append(piece)
            tags.append("I-" + tags[-1][2:])
        elif piece in DEVICES:
            words.append(piece)
            tags.append("I-DEVICE" if words[-2:-1] == ["ceiling"] else "B-DEVICE")
        else:
            words.append(piece)
            tags.append("O")
    return words, tags


def write_jsonl(path: Path, records: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def train_tokenizer(path: Path, texts: list[str], vocab: int) -> Path:
    """A BERT-style WordPiece tokenizer trained on the corpus with Hugging Face ``tokenizers``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(path))
    return path
