"""A generated corpus of smart-home commands: templates with synonyms, paraphrases, polite
and casual openings, numbers, and typos, since nothing may be downloaded. Each command's
intent is its label; its words are what a hub hears after speech-to-text."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway", "kids room",
         "basement", "dining room")  # fmt: skip
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


def _typo(text: str, rng: random.Random) -> str:
    """One slip of the recogniser or the thumb: a letter dropped, doubled or swapped."""
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    i = rng.choice(letters)
    kind = rng.randrange(3)
    if kind == 0:
        return text[:i] + text[i + 1 :]
    if kind == 1:
        return text[:i] + text[i] + text[i:]
    j = min(i + 1, len(text) - 1)
    return text[:i] + text[j] + text[i] + text[j + 1 :]


def commands(count: int, seed: int, typos: float = 0.15) -> list[dict[str, str]]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        intent = rng.choice(INTENTS)
        text = rng.choice(OPENINGS) + rng.choice(TEMPLATES[intent]).format(
            room=rng.choice(ROOMS), on=rng.choice(ON), off=rng.choice(OFF), n=rng.randint(2, 30)
        )
        if rng.random() < typos:
            text = _typo(text, rng)
        records.append({"text": text, "label": intent})
    return records


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
