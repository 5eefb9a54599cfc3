"""A name tagger for de-identification, trained on synthetic personal data.

Names are what patterns cannot find: "call Maria on ..." has nothing that says Maria is a
person except the sentence around her. This example builds the tagger that
`deid_model = "pii-tagger"` runs on the device, with edgekit's own token-classification path:

1. A labelled corpus of smart-home commands full of personal data, made with Faker in seven
   locales (`edgekit.testing.pii`): every word of a person's name tagged B-NAME or I-NAME.
2. A cased WordPiece tokenizer and a 2-layer encoder of the voice example's design (hidden
   128), trained to tag each word at its first token.
3. `edgekit convert` for a Raspberry Pi 5, gated on the span macro-F1, signed, and installed
   on the hub as `pii-tagger`.
4. On the hub: recall and precision per type on commands made with other seeds, with the
   patterns alone and with the tagger; then telemetry with `deid_model = "pii-tagger"`
   captures commands through Mosquitto, and the operator's collector receives them masked.

Run it:  python examples/pii_tagger/run.py [--quick] [--out DIR]
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(EXAMPLES / "voice_commands"), str(EXAMPLES)]

from common import Checks, Machines, arguments, heading, local_broker, run  # noqa: E402
from corpus import write_jsonl  # noqa: E402
from encoder import build_encoder  # noqa: E402

from edgekit.testing.pii import STRUCTURED, Example, corpus, score, table  # noqa: E402
from edgekit.views.console import quiet_native_output  # noqa: E402

TAGS = ("O", "B-NAME", "I-NAME")
FLEET = "home-hubs"
GOAL_NAMES = 0.95
GOAL_STRUCTURED = 0.99


def main() -> int:
    args = arguments(__doc__ or "", "build/pii_tagger")
    out, machines, checks = args.out, Machines(args.out), Checks(args.out)
    heading("1. a labelled corpus of commands with personal data, and a cased WordPiece tokenizer")
    train = corpus(per_type=200 if args.quick else 400, seed=0)
    held = corpus(per_type=60 if args.quick else 150, seed=1)
    tokenizer = _tokenizer(out / "tokenizer.json", [e.text for e in train])
    write_jsonl(out / "names-eval.jsonl", [_record(e) for e in held[: len(held) // 2]])
    write_jsonl(out / "calib.jsonl", [{"text": e.text} for e in train[:64]])
    (out / "tags.txt").write_text("\n".join(TAGS) + "\n")
    print(f"{len(train)} training commands, {len(held)} held-out ones (another seed), 7 locales")

    heading("2. train the name tagger")
    _train(out, tokenizer, train, epochs=8 if args.quick else 12)

    heading("3. convert it for the hub, gated on the span macro-F1 of its names, and install it")
    key = out / "operator" / "publisher.key"
    machines.edgekit("keys", "init", "--publisher", "-o", key)
    converted = machines.edgekit(
        "convert", out / "pii.keras", "--target", "raspberry-pi-5", "--tokenizer", tokenizer,
        "--calibration", out / "calib.jsonl", "--eval", out / "names-eval.jsonl",
        "--labels", out / "tags.txt", "--gate-metric", "macro-f1", "--name", "pii-tagger", "--sign-key", key,
        "-o", out / "pii-tagger.ekb", "--json",
    )  # fmt: skip
    machines.device("keys", "init", "--device")
    machines.device("trust", "add", key.with_suffix(".pub"))
    machines.device("install", out / "pii-tagger.ekb")

    heading("4. on the hub: de-identification with the patterns alone, then with the tagger")
    with machines.on_device(), quiet_native_output():
        from edgekit.runtime.telemetry.deid import Deidentifier, NameTagger

        tagger = NameTagger.load("pii-tagger")
        plain, tagged = score(held, Deidentifier().spans), score(held, Deidentifier(tagger=tagger).spans)
        tagger.close()
    print("patterns alone:\n" + table(plain) + "\n\nwith deid_model = pii-tagger:\n" + table(tagged))
    _checks(checks, converted, plain, tagged)
    with local_broker(out / "broker") as broker:
        if broker is not None:
            _telemetry(machines, broker, out, held, checks)
        return checks.finish(telemetry=broker is not None)


def _record(example: Example) -> dict[str, Any]:
    """A command as edgekit's token-classification data: its text and one tag per word."""
    tags = []
    for word in re.finditer(r"\S+", example.text):
        inside = [s for s in example.spans if s[2] == "NAME" and s[0] < word.end() and word.start() < s[1]]
        tags.append("O" if not inside else "B-NAME" if word.start() <= inside[0][0] else "I-NAME")
    return {"text": example.text, "tags": tags}


def _tokenizer(path: Path, texts: list[str]) -> Path:
    """WordPiece without lowercasing: a capital letter is half of what marks a name."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=3000, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(path))
    return path


def _train(out: Path, tokenizer: Path, train: list[Example], epochs: int) -> None:
    import numpy as np

    from edgekit.core.text import IGNORED, TextEncoder, TextInputs, align_tags

    with quiet_native_output():
        import keras

        keras.utils.set_random_seed(0)
        records = [_record(e) for e in train]
        dtypes = {"input_ids": "int32", "attention_mask": "int32"}
        encoder = TextEncoder(tokenizer.read_bytes(), 32, TextInputs(*dtypes), dtypes)
        x, starts = encoder.encode_words([r["text"] for r in records])
        y = align_tags([[TAGS.index(t) for t in r["tags"]] for r in records], starts, 32)
        model = build_encoder(vocab=3000, classes=len(TAGS), layers=2, hidden=128, per_token=True)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        # names are a few words in many: weigh their tags up, so that "O" is not the easy answer
        weights = (y != IGNORED) * np.where(y > 0, 4.0, 1.0).astype(np.float32)
        model.fit(x, np.maximum(y, 0), sample_weight=weights, epochs=epochs, batch_size=32, verbose=0)
        model.save(out / "pii.keras")
    print(f"name tagger: {model.count_params():,} parameters, {epochs} epochs on {len(train)} commands")


def _checks(checks: Checks, converted: dict[str, Any], plain: dict[str, Any], tagged: dict[str, Any]) -> None:
    names = tagged["NAME"]
    checks.numbers.update({
        "names_recall_patterns": plain["NAME"].recall, "names_recall_tagger": names.recall,
        "names_precision_tagger": names.precision,
        "precision": converted["manifest"]["artifacts"][0]["precision"],
        "structured_recall": {kind: tagged[kind].recall for kind in STRUCTURED},
    })  # fmt: skip
    checks.check(
        "the tagger finds the names", names.recall >= GOAL_NAMES,
        f"recall {names.recall:.3f} (patterns alone {plain['NAME'].recall:.3f}), "
        f"precision {names.precision:.3f}",
    )  # fmt: skip
    weakest = min(STRUCTURED, key=lambda kind: tagged[kind].recall)
    checks.check(
        "every structured type is caught", tagged[weakest].recall >= GOAL_STRUCTURED,
        f"lowest recall {tagged[weakest].recall:.3f} ({weakest})",
    )  # fmt: skip


def _telemetry(machines: Machines, broker: Any, out: Path, held: list[Example], checks: Checks) -> None:
    """The tagger captures its own commands: what reaches the operator is masked by it."""
    import numpy as np

    machines.edgekit("fleet", "init", FLEET, "--dir", out / "operator" / "fleet")
    device_fleet = machines.device_home / "fleets" / FLEET
    device_fleet.mkdir(parents=True)
    for name in ("fleet.pub", "fleet.secret"):  # what the operator copies to each hub
        shutil.copy(out / "operator" / "fleet" / name, device_fleet / name)
    collect = (
        "fleet", "collect", "--broker", broker.url, "--fleet", FLEET, "--group", "none",
        "--fleet-dir", out / "operator" / "fleet", "--out", out / "collected", "--json",
    )  # fmt: skip
    machines.edgekit(*collect, "--duration", "0.5")  # subscribe first, so the broker keeps them
    named = [e for e in held if any(kind == "NAME" for _, _, kind in e.spans)][:6]
    with machines.on_device(), quiet_native_output():
        from edgekit.runtime import Model, Telemetry

        telemetry = Telemetry(
            broker.url, FLEET, window_s=3600, capture="random:1", capture_max=len(named),
            deid_model="pii-tagger",
        )  # fmt: skip
        with Model.load("pii-tagger", telemetry=telemetry) as model:
            model.tag_text([e.text for e in named])
    machines.edgekit(*collect, "--idle", "3")
    with np.load(out / "collected" / "samples.npz") as samples:
        received = [str(t) for t in samples["text"]]
    print("captured commands as the operator receives them:\n" + "\n".join(f"  {t}" for t in received))
    words = {w for e in named for a, b, kind in e.spans if kind == "NAME" for w in e.text[a:b].split()}
    leaked = [text for text in received if set(re.findall(r"[\w'-]+", text)) & words]
    checks.numbers["captured"] = received
    checks.check(
        "captured commands reach the operator without names", len(received) == len(named) and not leaked,
        f"{len(received)} of {len(named)} received, {len(leaked)} with a word of a name",
    )  # fmt: skip


if __name__ == "__main__":
    run(main)
