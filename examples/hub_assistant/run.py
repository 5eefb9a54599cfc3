"""A small GPT-class model on a smart-home hub: "it is too warm in the kitchen" in, "set
kitchen to 19 degrees" out, generated on the hub itself.

1. Requests and the commands they mean, made here from templates (nothing downloaded), and
   a word-level tokenizer for them.
2. A 4-block decoder in plain Keras layers (embeddings, causal self-attention, GELU
   feed-forward), trained to continue "REQUEST =>" with "COMMAND <eos>".
3. `edgekit convert` for a Raspberry Pi 5 at int8 and 4-bit weights and as TFLite (LiteRT,
   dynamic int8), and for a Jetson Orin Nano at fp16, each gated on perplexity on held-out
   requests, signed.
4. On the hub: install, `edgekit generate` (on ONNX Runtime and on LiteRT), `edgekit bench`,
   `edgekit serve`'s /generate, and telemetry of every generation through Mosquitto to the
   operator, with the generations it captures (de-identified) exported for retraining.

Run it:  python examples/hub_assistant/run.py [--quick] [--out DIR]
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Checks, Machines, arguments, heading, local_broker, run  # noqa: E402

from edgekit.views.console import quiet_native_output  # noqa: E402

ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "office", "hallway", "garage", "nursery")
REQUESTS = {
    "it is too warm in the {room}": "set {room} to 19 degrees",
    "the {room} is too hot": "set {room} to 19 degrees",
    "it is freezing in the {room}": "set {room} to 23 degrees",
    "the {room} is too cold": "set {room} to 23 degrees",
    "it is dark in the {room}": "turn on {room} lights",
    "i cannot see a thing in the {room}": "turn on {room} lights",
    "nobody is in the {room} now": "turn off {room} lights",
    "the {room} is stuffy": "turn on {room} fan",
    "too much sun in the {room}": "close {room} blinds",
    "let some light into the {room}": "open {room} blinds",
    "wake me in {n} minutes": "set timer {n} minutes",
    "remind me in {n} minutes": "set timer {n} minutes",
}
NUMBERS = ("5", "10", "15", "20", "30", "45")
CONTEXT = 32
FLEET = "home-hubs"


def main() -> int:
    args = arguments(__doc__ or "", "build/hub_assistant")
    out, machines, checks = args.out, Machines(args.out), Checks(args.out)
    heading("1. requests and commands, and their tokenizer")
    train, held = pairs(seed=0, count=1500 if args.quick else 4000), pairs(seed=1, count=60)
    tokenizer = make_tokenizer(out / "tokenizer.json", train + held)
    (out / "heldout.jsonl").write_text("".join(json.dumps({"text": f"{q} => {a}"}) + "\n" for q, a in held))
    print(f"{len(train)} training pairs, e.g. {train[0][0]!r} => {train[0][1]!r}")

    heading("2. train a 4-block decoder in Keras")
    train_decoder(out / "assistant.keras", tokenizer, train, epochs=6 if args.quick else 12)

    heading("3. convert: int8 and 4-bit weights for the Pi, fp16 for the Jetson, gated on perplexity")
    key = out / "operator" / "publisher.key"
    machines.edgekit("keys", "init", "--publisher", "-o", key)
    made = {}
    targets = (("int8", "raspberry-pi-5", "onnx"), ("int4", "raspberry-pi-5", "onnx"),
               ("fp16", "jetson-orin-nano", "onnx"), ("dynamic", "raspberry-pi-5", "tflite"))  # fmt: skip
    for precision, target, fmt in targets:
        name = precision if fmt == "onnx" else f"{fmt}-{precision}"
        made[name] = machines.edgekit(
            "convert", out / "assistant.keras", "--target", target, "--tokenizer", tokenizer, "--format", fmt,
            "--eval", out / "heldout.jsonl", "--precision", precision, "--max-sequence-length", str(CONTEXT),
            "--name", "assistant", "--sign-key", key, "-o", out / f"assistant-{name}.ekb", "--json",
        )  # fmt: skip

    heading("4. the hub: install the 4-bit bundle, generate, bench, serve")
    machines.device("keys", "init", "--device")
    machines.device("trust", "add", key.with_suffix(".pub"))
    machines.device("install", out / "assistant-int4.ekb")
    answer = machines.device("generate", "assistant", "--prompt", "it is too warm in the kitchen =>",
                             "--max-tokens", "8", "--json")  # fmt: skip
    print(f"the hub answers: {answer['text'].strip()!r} ({answer['stop_reason']})")
    litert = machines.device("generate", out / "assistant-tflite-dynamic.ekb", "--prompt",
                             "it is too warm in the kitchen =>", "--max-tokens", "8", "--json")  # fmt: skip
    print(f"the same request on LiteRT (TFLite, prefill and decode signatures): {litert['text'].strip()!r}")
    speed = machines.device("bench", "assistant", "--prompt-tokens", "12", "--new-tokens", "8", "--json")
    right = replies_right(machines, held)
    served = serve_once(machines, "the office is too cold =>")
    _checks(checks, made, answer, right, len(held), speed, served)
    litert_right = litert["text"].strip() == "set kitchen to 19 degrees"
    checks.check("LiteRT answers the request too", litert_right, repr(litert["text"].strip()))
    with local_broker(out / "broker") as broker:
        if broker is not None:
            _telemetry(machines, broker, out, held, checks)
        return checks.finish(telemetry=broker is not None)


def pairs(seed: int, count: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        request, reply = rng.choice(list(REQUESTS.items()))
        room, n = rng.choice(ROOMS), rng.choice(NUMBERS)
        found.append((request.format(room=room, n=n), reply.format(room=room, n=n)))
    return found


def make_tokenizer(path: Path, pairs: list[tuple[str, str]]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = sorted({w for q, a in pairs for w in f"{q} => {a}".split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "[UNK]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer.save(str(path))
    return path


def train_decoder(path: Path, tokenizer_path: Path, train: list[tuple[str, str]], epochs: int) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    eos, vocab = tokenizer.token_to_id("<eos>"), tokenizer.get_vocab_size()
    rows = [tokenizer.encode(f"{q} => {a}").ids + [eos] for q, a in train]
    ids = np.zeros((len(rows), CONTEXT), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row[:CONTEXT]
    weights = (ids[:, 1:] != 0).astype(np.float32)
    with quiet_native_output():
        import keras
        from keras import layers

        keras.utils.set_random_seed(0)
        tokens = keras.Input((None,), dtype="int32", name="input_ids")
        positions = keras.Input((None,), dtype="int32", name="position_ids")
        x = layers.Add()([layers.Embedding(vocab, 96)(tokens), layers.Embedding(CONTEXT, 96)(positions)])
        for _ in range(4):
            h = layers.LayerNormalization(epsilon=1e-5)(x)
            x = layers.Add()([x, layers.MultiHeadAttention(4, 24)(h, h, use_causal_mask=True)])
            h = layers.Dense(384, activation="gelu")(layers.LayerNormalization(epsilon=1e-5)(x))
            x = layers.Add()([x, layers.Dense(96)(h)])
        logits = layers.Dense(vocab)(layers.LayerNormalization(epsilon=1e-5)(x))
        model = keras.Model([tokens, positions], logits, name="assistant")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(keras.optimizers.Adam(3e-3), loss)
        place = np.broadcast_to(np.arange(CONTEXT - 1, dtype=np.int32), (len(ids), CONTEXT - 1))
        x, y = [ids[:, :-1], place], ids[:, 1:]
        model.fit(x, y, sample_weight=weights, epochs=epochs, batch_size=32, verbose=0)
        model.save(path)
    print(f"decoder: {model.count_params():,} parameters, 4 blocks, {epochs} epochs")


def replies_right(machines: Machines, held: list[tuple[str, str]]) -> int:
    with machines.on_device(), quiet_native_output():
        from edgekit.runtime import Model

        with Model.load("assistant") as model:
            return sum(model.generate(f"{q} =>", max_new_tokens=8).strip() == a for q, a in held)


def serve_once(machines: Machines, prompt: str) -> str:
    """``edgekit serve`` on a free port, one /generate, then stop."""
    command = ["edgekit", "serve", "assistant", "--port", "0", "--grpc-port", "0", "--json"]
    env = {**machines._env(machines.device_home)}
    print(f"[device]$ {' '.join(command)}", flush=True)
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        body = json.dumps({"text_input": prompt, "parameters": {"max_tokens": 8}}).encode()
        request = urllib.request.Request(f"{info['rest']}/v2/models/assistant/generate", data=body)
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = str(json.loads(answer.read())["text_output"])
        print(f"POST /v2/models/assistant/generate {prompt!r} -> {text.strip()!r}")
        return text
    finally:
        server.terminate()
        server.wait(30)


def _checks(
    checks: Checks, made: dict[str, Any], answer: dict[str, Any], right: int, held: int,
    speed: dict[str, Any], served: str,
) -> None:  # fmt: skip
    sizes = {p: r["manifest"]["artifacts"][0]["size"] for p, r in made.items()}
    quality = {p: r["manifest"]["artifacts"][0]["metrics"]["generation"] for p, r in made.items()}
    checks.numbers.update({
        "sizes": sizes, "perplexity": {p: q["artifact_perplexity"] for p, q in quality.items()},
        "agreement": {p: q["agreement"] for p, q in quality.items()}, "held_out_right": right / held,
        "decode_tokens_per_s": speed["decode_tokens_per_s"], "ttft_ms": speed["time_to_first_token_ms"],
    })  # fmt: skip
    checks.check("4-bit is smaller than int8", sizes["int4"] < sizes["int8"], f"{sizes}")
    gates = all(q["gate"] == "passed" for q in quality.values())
    increases = ", ".join(f"{p} {q['increase']:+.2f}%" for p, q in quality.items())
    checks.check("every precision passed its perplexity gate", gates, increases)
    checks.check("the hub answers the request", answer["text"].strip() == "set kitchen to 19 degrees",
                 repr(answer["text"].strip()))  # fmt: skip
    checks.check("held-out requests get their command", right >= 0.8 * held, f"{right} of {held}")
    checks.check("edgekit serve generates", served.strip() == "set office to 23 degrees", repr(served))


def _telemetry(
    machines: Machines, broker: Any, out: Path, held: list[tuple[str, str]], checks: Checks
) -> None:
    machines.edgekit("fleet", "init", FLEET, "--dir", out / "operator" / "fleet")
    device_fleet = machines.device_home / "fleets" / FLEET
    device_fleet.mkdir(parents=True)
    for name in ("fleet.pub", "fleet.secret"):
        shutil.copy(out / "operator" / "fleet" / name, device_fleet / name)
    collect = ("fleet", "collect", "--broker", broker.url, "--fleet", FLEET, "--group", "none",
               "--fleet-dir", out / "operator" / "fleet", "--out", out / "collected", "--json")  # fmt: skip
    machines.edgekit(*collect, "--duration", "0.5")
    with machines.on_device(), quiet_native_output():
        from edgekit.runtime import Model, Telemetry

        telemetry = Telemetry(broker.url, FLEET, window_s=3600, capture="random:1")
        with Model.load("assistant", telemetry=telemetry) as model:
            for request, _ in held[:10]:
                model.generate(f"{request} =>", max_new_tokens=8)
    machines.edgekit(*collect, "--idle", "3")
    reports = [json.loads(line) for line in (out / "collected" / "reports.jsonl").read_text().splitlines()]
    generated = sum((r.get("generation") or {}).get("generations", 0) for r in reports)
    texts = any(request.split()[-1] in json.dumps(r) for r in reports for request, _ in held[:10])
    checks.numbers["generations_reported"] = generated
    checks.check("the operator sees every generation, and no text in a report", generated == 10 and not texts,
                 f"{generated} generations in {len(reports)} reports")  # fmt: skip
    lines = (out / "collected" / "generations.jsonl").read_text().splitlines()
    captured = [json.loads(line) for line in lines]
    checks.numbers["generations_captured"] = len(captured)
    example = captured[0] if captured else None
    checks.check("captured generations reach the operator as retraining text, sealed on the way",
                 len(captured) == 8 and all(c["prompt"].endswith("=>") for c in captured),
                 f"{len(captured)} of 10 (8 a window at most), e.g. {example}")  # fmt: skip

if __name__ == "__main__":
    run(main)
