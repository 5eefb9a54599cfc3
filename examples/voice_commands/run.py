"""Voice commands: a smart-home hub understands what it is told, with a BERT-class encoder
pruned to half its heads and feed-forward neurons, and finds the slots of each command
(room, device, value, time) with a slot tagger, both tokenized on the hub itself.

    python examples/voice_commands/run.py [--quick] [--out build/voice_commands]

The commands are generated (corpus.py: templates with synonyms, paraphrases and typos). A
WordPiece tokenizer is trained on them with Hugging Face `tokenizers`, and a 4-layer encoder
(hidden 256, 4 heads; encoder.py) learns eight intents. `edgekit convert --prune 0.5` removes
the least important half of every layer's attention heads and feed-forward neurons, distils
the smaller model from the full one, gates it on the held-out commands, and bundles the
tokenizer. It is converted for a Raspberry Pi 5 and a Jetson Orin Nano, signed, installed
on the hub, and run from text. A smaller encoder of the same design tags every word's slot
(B-ROOM, I-ROOM, ... O); it is gated on the span macro-F1 of its slots, counted as seqeval
counts them. With Mosquitto, the hub reports to the fleet, and the texts
it captures arrive with numbers, e-mail addresses and the household's names masked.
Exit code 1 if a check fails.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import Checks, Machines, arguments, heading, local_broker, run  # noqa: E402
from corpus import INTENTS, TAGS, commands, train_tokenizer, write_jsonl  # noqa: E402
from encoder import build_encoder, encode, tag_targets  # noqa: E402

from edgekit.views.console import quiet_native_output  # noqa: E402

FLEET = "home-hubs"
HOUSEHOLD = ("Alice", "Bob")
"""The names the hub's owner lists in its telemetry config (deid_names)."""
SLOTS_HEARD = {0: ("ROOM", "kitchen"), 1: ("VALUE", "21 degrees"), 2: ("TIME", "5 minutes")}
"""Slots the tagger must find in the first spoken commands."""
SPOKEN = [
    ("turn on the kitchen lights", "lights_on"),
    ("could you set the bedroom to 21 degrees", "set_temperature"),
    ("remind me in 5 minutes", "set_timer"),
    ("close the office blinds", "blinds_close"),
    ("Bob wants the garage fan off", "fan_off"),
    ("hey hub, Alice says lights out in the hallway, mail alice@example.org", "lights_off"),
]


def main() -> int:
    args = arguments(__doc__, "build/voice_commands")
    out, checks = args.out, Checks(args.out)
    machines = Machines(out)
    train_count, epochs, distill_epochs = (1600, 2, 1) if args.quick else (4000, 4, 3)

    heading("1. generate home commands, train a WordPiece tokenizer and the encoder")
    train, held = commands(train_count, seed=0), commands(400, seed=1)
    tokenizer = train_tokenizer(out / "tokenizer.json", [r["text"] for r in train], vocab=1000)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", held)
    write_jsonl(out / "calib.jsonl", [{"text": r["text"]} for r in train[:200]])
    write_jsonl(out / "slots-eval.jsonl", [{"text": r["text"], "tags": r["tags"]} for r in held])
    (out / "intents.txt").write_text("\n".join(INTENTS) + "\n")
    (out / "tags.txt").write_text("\n".join(TAGS) + "\n")
    print("e.g. " + "; ".join(f"{r['text']!r} → {r['label']}" for r in train[:3]))
    parameters = _train(out, tokenizer, train, held, epochs)
    _train_tagger(out, tokenizer, train, epochs)

    heading("2. prune half the heads and feed-forward neurons, distil, convert for a Raspberry Pi 5")
    key = out / "operator" / "publisher.key"
    machines.edgekit("keys", "init", "--publisher", "-o", key)
    common = [
        "--tokenizer", tokenizer, "--calibration", out / "calib.jsonl", "--eval", out / "eval.jsonl",
        "--labels", out / "intents.txt", "--prune", "0.5", "--train-data", out / "train.jsonl",
        "--prune-epochs", str(distill_epochs), "--name", "intent", "--sign-key", key, "--json",
    ]  # fmt: skip
    pi = machines.edgekit(
        "convert", out / "intent.keras", "--target", "raspberry-pi-5", "--report", out / "intent-pi5.html",
        "-o", out / "intent-pi5.ekb", *common,
    )

    heading("3. the same for a Jetson Orin Nano: fp16 ONNX for TensorRT, softmax and layer norms in fp32")
    jetson = machines.edgekit(
        "convert", out / "intent.keras", "--target", "jetson-orin-nano", "--precision", "fp16",
        "-o", out / "intent-jetson.ekb", *common,
    )

    heading("4. the slot tagger for the Raspberry Pi 5, gated on the span macro-F1 of its slots")
    slots = machines.edgekit(
        "convert", out / "slots.keras", "--target", "raspberry-pi-5", "--tokenizer", tokenizer,
        "--calibration", out / "calib.jsonl", "--eval", out / "slots-eval.jsonl",
        "--labels", out / "tags.txt", "--gate-metric", "macro-f1", "--name", "slots", "--sign-key", key,
        "--report", out / "slots-pi5.html",
        "-o", out / "slots-pi5.ekb", "--json",
    )

    heading("5. the hub: trust the publisher, install, and understand commands from text")
    machines.device("keys", "init", "--device")
    machines.device("trust", "add", key.with_suffix(".pub"))
    machines.device("install", out / "intent-pi5.ekb")
    machines.device("install", out / "slots-pi5.ekb")
    machines.device("run", "intent", "--text", SPOKEN[0][0])
    machines.device("run", "slots", "--text", SPOKEN[1][0])
    machines.edgekit("fleet", "init", FLEET, "--dir", out / "operator" / "fleet")
    device_fleet = machines.device_home / "fleets" / FLEET
    device_fleet.mkdir(parents=True)
    for name in ("fleet.pub", "fleet.secret"):  # what the operator copies to each hub
        shutil.copy(out / "operator" / "fleet" / name, device_fleet / name)
    with local_broker(out / "broker") as broker:
        if broker:  # the collector subscribes first, so the broker keeps the fleet's messages for it
            _collect(machines, broker, out, "--duration", "0.5")
        heard, found = _on_the_hub(machines, broker)
        captured = _collect(machines, broker, out, "--idle", "3") if broker else []
    _checks(checks, parameters, pi, jetson, heard)
    _slot_checks(checks, slots, found)
    if broker is not None:
        _privacy_checks(checks, captured)
    return checks.finish(telemetry=broker is not None)


def _train(
    out: Path, tokenizer: Path, train: list[dict[str, str]], held: list[dict[str, str]], epochs: int
) -> int:
    with quiet_native_output():
        import keras

        keras.utils.set_random_seed(0)
        model = build_encoder(vocab=1000, classes=len(INTENTS))
        model.compile(keras.optimizers.Adam(3e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
        x = encode(str(tokenizer), [r["text"] for r in train])
        y = np.array([INTENTS.index(r["label"]) for r in train])
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        model.save(out / "intent.keras")
        x_held = encode(str(tokenizer), [r["text"] for r in held])
        accuracy = float(
            np.mean(model.predict(x_held, verbose=0).argmax(-1) == [INTENTS.index(r["label"]) for r in held])
        )
    print(f"trained on {len(train)} commands ({epochs} epochs), {model.count_params():,} parameters, "
          f"{accuracy:.1%} of held-out commands right")
    return int(model.count_params())


def _train_tagger(out: Path, tokenizer: Path, train: list[dict[str, Any]], epochs: int) -> None:
    with quiet_native_output():
        import keras

        keras.utils.set_random_seed(0)
        model = build_encoder(vocab=1000, classes=len(TAGS), layers=2, hidden=128, per_token=True)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        x, y, weights = tag_targets(str(tokenizer), train)
        model.fit(x, y, sample_weight=weights, epochs=2 * epochs, batch_size=32, verbose=0)
        model.save(out / "slots.keras")
    print(f"slot tagger: {model.count_params():,} parameters, {len(TAGS)} tags")


def _on_the_hub(machines: Machines, broker: Any) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """The hub's own program: text in, intents and slots out, intents reported to the fleet."""
    with machines.on_device(), quiet_native_output():
        from edgekit.runtime import Model, Telemetry

        telemetry = (
            Telemetry(
                broker.url,
                FLEET,
                device_id="hub-hall",
                window_s=3600,
                capture="random:1",
                capture_max=len(SPOKEN),
                deid_names=HOUSEHOLD,
            )
            if broker
            else None
        )
        model = Model.load("intent", telemetry=telemetry)
        scores = model.predict_text([text for text, _ in SPOKEN])
        model.close()
        with Model.load("slots") as tagger:
            tagged = tagger.tag_text([text for text, _ in SPOKEN])
    from edgekit.core.spans import entities

    heard = [INTENTS[i] for i in np.argmax(scores, axis=-1)]  # type: ignore[call-overload]
    found = []
    for (text, _), intent, words in zip(SPOKEN, heard, tagged, strict=True):
        spans = entities([tag or "O" for _, tag in words])
        found.append([(kind, " ".join(w for w, _ in words[a : b + 1])) for kind, a, b in spans])
        print(f"  {text!r:<75} → {intent} " + ", ".join(f"{k}={v!r}" for k, v in found[-1]))
    return heard, found


def _collect(machines: Machines, broker: Any, out: Path, *until: str) -> list[str]:
    """``fleet collect`` as the operator runs it; the texts collected so far."""
    machines.edgekit(
        "fleet", "collect", "--broker", broker.url, "--fleet", FLEET, "--group", "none",
        "--fleet-dir", out / "operator" / "fleet", "--out", out / "collected", *until, "--json",
    )
    samples = out / "collected" / "samples.npz"
    if not samples.exists():
        return []
    with np.load(samples) as arrays:
        texts = [str(t) for t in arrays["text"]]
    print("texts as the operator receives them:\n" + "\n".join(f"  {t}" for t in texts))
    return texts


def _checks(
    checks: Checks, parameters: int, pi: dict[str, Any], jetson: dict[str, Any], heard: list[str]
) -> None:
    compression = pi["manifest"]["compression"]
    accuracy = pi["manifest"]["artifacts"][0]["metrics"]["accuracy"]
    right = sum(h == want for h, (_, want) in zip(heard, SPOKEN, strict=True))
    precision = jetson["manifest"]["artifacts"][0]["precision"]
    checks.numbers = {
        "parameters": parameters, "pruned_parameters": compression["parameters_after"],
        "heads": compression["heads"], "neurons": compression["neurons"],
        "top1_before": compression["top1_before"], "top1_after": compression["top1_after"],
        "artifact_top1": accuracy["artifact"], "pi_precision": pi["manifest"]["artifacts"][0]["precision"],
        "jetson_precision": precision, "spoken_right": right,
    }  # fmt: skip
    ratio = compression["parameters_after"] / parameters
    checks.check("pruning halves the heads", compression["heads"] == [16, 8], f"heads {compression['heads']}")
    checks.check("a genuinely smaller model", ratio < 0.75, f"{ratio:.0%} of the parameters")
    drop = compression["top1_before"] - compression["top1_after"]
    checks.check(
        "pruned and distilled within 2 points",
        drop <= 2.0,
        f"top-1 {compression['top1_before']:.1f}% → {compression['top1_after']:.1f}%",
    )
    checks.check(
        "the Pi bundle is accurate", accuracy["artifact"] >= 90, f"{accuracy['artifact']:.1f}% >= 90%"
    )
    checks.check("the Jetson bundle is not dynamic int8", precision != "dynamic", f"precision {precision}")
    checks.check("the hub understands what it is told", right >= len(SPOKEN) - 1, f"{right} of {len(SPOKEN)}")


def _slot_checks(checks: Checks, slots: dict[str, Any], found: list[list[tuple[str, str]]]) -> None:
    accuracy = slots["manifest"]["artifacts"][0]["metrics"]["accuracy"]
    artifact = accuracy["classes"]["artifact"]
    checks.numbers.update({
        "slots_precision": slots["manifest"]["artifacts"][0]["precision"],
        "slots_macro_f1_float": accuracy["float_model"], "slots_macro_f1": accuracy["artifact"],
        "slots_micro_f1": 100 * artifact["micro"]["f1"],
    })
    checks.check(
        "the slot tagger finds the slots", artifact["micro"]["f1"] >= 0.9,
        f"span micro-F1 {100 * artifact['micro']['f1']:.1f}% >= 90%",
    )
    missed = [slot for i, slot in SLOTS_HEARD.items() if slot not in found[i]]
    checks.check("the hub hears the room, the value and the time", not missed, f"missed {missed}")


def _privacy_checks(checks: Checks, texts: list[str]) -> None:
    checks.numbers["captured"] = len(texts)
    checks.check("captured texts came home", len(texts) == len(SPOKEN), f"{len(texts)} of {len(SPOKEN)}")
    leaked = [
        t
        for t in texts
        if any(c.isdigit() for c in t) or "@" in t or any(n.lower() in t.lower() for n in HOUSEHOLD)
    ]
    checks.check(
        "no digit, e-mail address or household name left the hub", not leaked, f"{len(leaked)} leaked"
    )


if __name__ == "__main__":
    run(main)
