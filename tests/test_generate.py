"""Decoders that generate text: a GPT-class ONNX decoder in optimum's layout (built here),
converted at each precision with a perplexity gate, and generating on the device through the
key-value cache, from Python and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from decoder_graphs import build_decoder, reference_greedy

from edgekit.cli import main
from edgekit.convert import ConvertOptions, convert
from edgekit.core.errors import EdgekitError
from edgekit.core.profiles import load_profile
from edgekit.core.validation import updated
from edgekit.runtime import Model

pytest.importorskip("tokenizers")
WORDS = (
    "<eos> [UNK] turn on off the kitchen lights bedroom heating set to degrees open close blinds in living room "
    "garage door is lock unlock fan timer for minutes please hub it too warm cold here and a of what weather "
    "today tomorrow play music stop start one two three four five ten twenty window"
).split()
HELD_OUT = (
    "turn on the kitchen lights please", "set the bedroom heating to twenty degrees", "open the living room blinds",
    "it is too warm in here", "lock the garage door and close the window", "play music in the kitchen",
)  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("decoder")
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "heldout.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in HELD_OUT))
    return {
        "model": build_decoder(folder / "decoder.onnx"), "tokenizer": folder / "tokenizer.json",
        "eval": folder / "heldout.jsonl", "folder": folder,
    }  # fmt: skip


def options(files: dict[str, Path], precision: str, **changes: Any) -> ConvertOptions:
    settings: dict[str, Any] = {
        "model": files["model"], "profile": load_profile("raspberry-pi-5"), "precision": precision,
        "output": files["folder"] / f"{precision}.ekb", "tokenizer": files["tokenizer"], "evaluation": files["eval"],
        **changes,
    }  # fmt: skip
    return ConvertOptions(**settings)


@pytest.fixture(scope="module")
def bundles(files: dict[str, Path]) -> dict[str, Any]:
    return {p: convert(options(files, p)) for p in ("fp32", "int4")}


def ids_of(files: dict[str, Path], text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(files["tokenizer"])).encode(text, add_special_tokens=False).ids


def test_greedy_fp32_is_the_source_models_greedy_token_for_token(files: dict[str, Path], bundles: Any) -> None:
    with Model.load(bundles["fp32"].output, allow_unsigned=True) as model:
        for prompt in ("turn on the", "open the garage", "it is"):
            text = model.generate(prompt, max_new_tokens=20, stop_tokens=[])
            done = model.last_generation
            assert done is not None and done.stop_reason in ("length", "stop_token")
            expected = reference_greedy(files["model"], ids_of(files, prompt), len(done.tokens))
            assert done.tokens == expected and text  # the cache changes nothing but the cost


def test_each_precision_is_gated_on_perplexity_and_records_its_cache(bundles: Any) -> None:
    fp32, int4 = (bundles[p].manifest for p in ("fp32", "int4"))
    spec = fp32.generation
    assert spec is not None and (spec.layers, spec.heads, spec.head_size, spec.vocab_size) == (2, 2, 16, 64)
    assert spec.max_context == 128 and spec.stop_tokens == (0,)  # <eos>, found in the tokenizer
    quality = fp32.artifacts[0].metrics.generation
    assert quality is not None and quality.increase == 0.0 and quality.agreement == 100.0
    assert quality.gate == "passed" and quality.texts == len(HELD_OUT)
    four = int4.artifacts[0]
    assert four.precision == "int4" and four.size < 0.5 * fp32.artifacts[0].size
    assert four.quantization is not None and four.quantization.weights == "int4 blocks of 32"
    assert int4.generation is not None and int4.generation.block_size == 32
    assert four.metrics.model_memory_bytes == four.size + spec.cache_bytes(128)  # weights and the full cache


def test_the_probe_measures_the_cache_at_the_full_context(files: dict[str, Path]) -> None:
    short, full = (convert(options(files, "fp32", max_sequence_length=n, output=files["folder"] / f"c{n}.ekb"))
                   for n in (16, 256))  # fmt: skip
    spec = full.manifest.generation
    assert spec is not None
    measured = [made.manifest.artifacts[0].metrics.peak_memory_bytes for made in (short, full)]
    assert measured[1] - measured[0] >= spec.cache_bytes(256) - spec.cache_bytes(16)  # the cache is in it
    with pytest.raises(EdgekitError, match=r"the decoder fails at its full context of 512 tokens \(indices element out"):
        convert(options(files, "fp32", max_sequence_length=512))  # its positions end at 256


def test_sampling_is_repeatable_by_seed_and_stops_where_asked(bundles: Any) -> None:
    with Model.load(bundles["int4"].output, allow_unsigned=True) as model:
        settings = {"max_new_tokens": 12, "temperature": 0.9, "top_p": 0.9, "top_k": 20, "stop_tokens": []}
        first = model.generate("turn on the", seed=7, **settings)
        assert model.generate("turn on the", seed=7, **settings) == first
        others = {model.generate("turn on the", seed=seed, **settings) for seed in range(8)}
        assert len(others) > 1
        greedy = model.generate("turn on the", max_new_tokens=6, stop_tokens=[])
        token = model.last_generation.tokens[0]  # type: ignore[union-attr]
        assert model.generate("turn on the", max_new_tokens=6, stop_tokens=[token]) == ""
        assert model.last_generation.stop_reason == "stop_token"  # type: ignore[union-attr]
        word = greedy.split()[1]
        assert model.generate("turn on the", max_new_tokens=6, stop=[word], stop_tokens=[]) == greedy[
            : greedy.index(word)
        ]
        assert model.last_generation.stop_reason == "stop_string"  # type: ignore[union-attr]
        streamed = list(model.generate_stream("turn on the", max_new_tokens=6, stop_tokens=[]))
        assert len(streamed) > 1 and "".join(streamed) == greedy


def test_the_context_bounds_prompt_and_new_tokens(files: dict[str, Path]) -> None:
    small = convert(options(files, "fp32", max_sequence_length=8, output=files["folder"] / "short.ekb"))
    with Model.load(small.output, allow_unsigned=True) as model:
        model.generate("turn on the kitchen lights", max_new_tokens=50, stop_tokens=[])
        done = model.last_generation
        assert done is not None and done.stop_reason == "context" and done.prompt_tokens + len(done.tokens) == 8
        with pytest.raises(EdgekitError, match="the prompt is 9 tokens and the model's context is 8: shorten"):
            model.generate("turn on the kitchen lights please turn on the")


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"max_new_tokens": 0}, "max new tokens 0: generate at least 1"),
        ({"temperature": -0.5}, r"temperature -0.5: use 0 \(greedy\) or more"),
        ({"top_p": 1.5}, r"top-p 1.5: use a value in \(0, 1\]"),
        ({"top_p": 0}, r"top-p 0: use a value in \(0, 1\]"),
        ({"stop_tokens": [999]}, "stop token 999 is not in the vocabulary of 64 tokens"),
        ({"beam_width": 4}, "unknown generation setting 'beam_width': use max_new_tokens, "),
    ],
)
def test_bad_settings_are_one_line(bundles: Any, settings: dict[str, Any], says: str) -> None:
    with Model.load(bundles["fp32"].output, allow_unsigned=True) as model:
        with pytest.raises(EdgekitError, match=says):
            model.generate("turn on", **settings)


def test_a_tokenizer_of_another_model_and_a_breached_budget_are_refused(files: dict[str, Path]) -> None:
    from tokenizers import Tokenizer, models

    big = Tokenizer(models.WordLevel({f"w{i}": i for i in range(100)} | {"[UNK]": 100}, unk_token="[UNK]"))
    big.save(str(files["folder"] / "big.json"))
    with pytest.raises(EdgekitError, match="the tokenizer has 101 tokens and the model's vocabulary 64"):
        convert(options(files, "fp32", tokenizer=files["folder"] / "big.json"))
    profile = load_profile("raspberry-pi-5")
    tight = updated(profile, budget=updated(profile.budget, model_memory_mb=0.2))
    with pytest.raises(EdgekitError, match=r"pass the memory budget of 0.2 MB .* the largest context that fits is \d+ tokens"):
        convert(options(files, "fp32", profile=tight, max_sequence_length=256))


def test_a_classifier_does_not_generate_and_a_decoder_does_not_classify(converted: Any, bundles: Any) -> None:
    with Model.load(converted("int8").output) as model:
        with pytest.raises(EdgekitError, match="does not generate text: convert a decoder"):
            model.generate("hello")
    with Model.load(bundles["fp32"].output, allow_unsigned=True) as decoder:
        with pytest.raises(EdgekitError, match="generates text: use generate"):
            decoder.predict_text(["turn on"])


def test_the_cli_generates_streams_and_reports(bundles: Any) -> None:
    bundle = str(bundles["fp32"].output)
    result = CliRunner().invoke(main, ["generate", bundle, "--prompt", "turn on the", "--max-tokens", "5",
                                       "--allow-unsigned", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["prompt_tokens"] == 3 and len(report["tokens"]) <= 5 and report["stop_reason"]
    assert report["time_to_first_token_ms"] > 0
    streamed = CliRunner().invoke(main, ["generate", bundle, "--prompt", "turn on the", "--max-tokens", "5",
                                         "--allow-unsigned", "--stream"])  # fmt: skip
    assert report["text"] in streamed.output
    bad = CliRunner().invoke(main, ["generate", bundle, "--prompt", "x", "--top-p", "2", "--allow-unsigned"])
    assert bad.exit_code != 0 and "top-p 2.0: use a value in (0, 1]" in bad.output
    assert "Traceback" not in bad.output


def test_int4_weights_for_any_onnx_model(onnx_converted: Any) -> None:
    result = onnx_converted("int4")
    entry = result.manifest.artifacts[0]
    assert entry.precision == "int4" and entry.metrics.accuracy is not None
    assert entry.metrics.accuracy.gate == "passed" and np.isfinite(entry.metrics.accuracy.cosine)


def test_serve_generates_whole_and_streamed_for_each_client_alone(
    files: dict[str, Path], publisher: Path, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from serve_helpers import serving

    bundle = convert(options(files, "int8", output=tmp_path / "assistant.ekb", name="assistant", sign_key=publisher))
    prompts = ["turn on the", "open the garage", "it is too", "play music in"]
    with Model.load(bundle.output) as model:
        expected = {p: model.generate(p, max_new_tokens=12) for p in prompts}
        lengths = {p: len(tokens_of(model, p, 100)) for p in prompts}
    longest = max(prompts, key=lengths.__getitem__)
    assert lengths[longest] >= 20  # room to leave in the middle
    with serving(str(bundle.output), log=tmp_path / "serve.log") as server:
        url = f"{server.rest}/v2/models/assistant"

        def whole(prompt: str) -> str:
            answer = httpx.post(f"{url}/generate", json={"text_input": prompt, "parameters": {"max_tokens": 12}})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_name"] == "assistant"
            return str(answer.json()["text_output"])

        with ThreadPoolExecutor(8) as pool:  # clients at once never see each other's tokens
            assert list(pool.map(whole, prompts * 4)) == [expected[p] for p in prompts * 4]
        with httpx.stream("POST", f"{url}/generate_stream", json={"text_input": prompts[0],
                                                                  "parameters": {"max_tokens": 12}}) as events:  # fmt: skip
            assert events.headers["content-type"].startswith("text/event-stream")
            pieces = [json.loads(line[6:])["text_output"] for line in events.iter_lines() if line.startswith("data: ")]
        assert len(pieces) > 1 and "".join(pieces) == expected[prompts[0]]
        before = httpx.get(f"{url}/stats").json()["generation"]
        assert before["generations"] == 4 * 4 + 1 and not before["stop_reasons"].get("cancelled")
        client_leaves_mid_stream(f"{url}/generate_stream", longest)
        after = wait_for(lambda: httpx.get(f"{url}/stats").json()["generation"],
                         lambda counts: counts["stop_reasons"].get("cancelled"))  # fmt: skip
        assert after["generations"] == before["generations"] + 1 and after["stop_reasons"]["cancelled"] == 1
        assert 2 <= after["generated_tokens"] - before["generated_tokens"] < lengths[longest] // 2, lengths
        for body, says in (
            ({"text_input": "turn on", "parameters": {"beams": 2}}, "unknown parameter 'beams'"),
            ({"text_input": "turn " * 200}, "the prompt is 200 tokens and the model's context is 128"),
            ({"text_input": "turn on", "parameters": {"top_p": 3}}, "top-p 3: use a value in (0, 1]"),
            ({"prompt": "turn on"}, 'give the prompt as {"text_input"'),
        ):
            refused = httpx.post(f"{url}/generate", json=body)
            assert refused.status_code == 400 and says in refused.json()["error"], refused.text
        infer = httpx.post(f"{url}/infer", json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                             "data": ["turn on"]}]})  # fmt: skip
        assert infer.status_code == 400 and "generates text: POST /v2/models/assistant/generate" in infer.text


def tokens_of(model: Model, prompt: str, new_tokens: int) -> list[int]:
    model.generate(prompt, max_new_tokens=new_tokens)
    assert model.last_generation is not None
    return model.last_generation.tokens


def client_leaves_mid_stream(url: str, prompt: str) -> None:
    """Read two events of a long generation and hang up."""
    import httpx

    read = 0
    with httpx.stream("POST", url, json={"text_input": prompt, "parameters": {"max_tokens": 100}}) as events:
        for line in events.iter_lines():
            read += line.startswith("data: ")
            if read == 2:
                break


def wait_for(get: Any, done: Any, timeout_s: float = 30) -> Any:
    import time

    deadline = time.monotonic() + timeout_s
    while not done(found := get()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_bench_measures_a_decoders_first_token_and_decode_speed(bundles: Any) -> None:
    bundle = str(bundles["int4"].output)
    result = CliRunner().invoke(main, ["bench", bundle, "--allow-unsigned", "--prompt-tokens", "16",
                                       "--new-tokens", "24", "--runs", "2", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    found = json.loads(result.output[result.output.index("{") :])
    assert found["new_tokens"] == 24 and found["prompt_tokens"] == 16 and found["runs"] == 2
    assert found["time_to_first_token_ms"] > 0 and found["decode_tokens_per_s"] > 0
    too_long = CliRunner().invoke(main, ["bench", bundle, "--allow-unsigned", "--prompt-tokens", "120"])
    assert too_long.exit_code != 0 and "pass the bundle's context of 128 tokens" in too_long.output


@pytest.mark.parametrize("dp_epsilon", [None, 1.0])
def test_telemetry_counts_generations_and_sends_no_text(
    bundles: Any, tmp_path: Path, home: Path, dp_epsilon: float | None
) -> None:
    pytest.importorskip("opendp")
    from edgekit.core.telemetry import STOP_REASONS, Report
    from edgekit.fleet import init_fleet
    from edgekit.runtime import Telemetry
    from edgekit.runtime.telemetry.outbox import Outbox

    telemetry = Telemetry(
        "mqtt://127.0.0.1:9", "f7", device_id="hub-1", fleet_dir=init_fleet("f7", tmp_path / "fleet"),
        outbox=tmp_path / "outbox.sqlite", window_s=3600, close_timeout_s=0.1, k_anonymity=1,
        dp_epsilon=dp_epsilon,
    )  # fmt: skip
    with Model.load(bundles["int4"].output, telemetry=telemetry, allow_unsigned=True) as model:
        for prompt in ("turn on the", "open the garage door please", "it is"):
            model.generate(prompt, max_new_tokens=6, stop_tokens=[])
        pieces = model.generate_stream("play music", max_new_tokens=20, stop_tokens=[])
        next(pieces)
        pieces.close()  # a caller that stops reading is counted too
        telemetry.flush()
    entry = Outbox(tmp_path / "outbox.sqlite", 1 << 24, 86400).pending(0, 10)[0]
    report = Report.model_validate_json(entry.payload)
    stats = report.generation
    assert stats is not None and report.classes is None and report.feature_bins is None
    for word in ("garage", "music", "turn"):
        assert word.encode() not in entry.payload  # counts only: no prompt, no generated text
    if dp_epsilon is None:
        assert stats.generations == 4 == report.inferences == sum(stats.stop_reasons) == sum(stats.ttft_ms)
        assert stats.stop_reasons[STOP_REASONS.index("length")] == 3
        assert stats.stop_reasons[STOP_REASONS.index("cancelled")] == 1
        assert sum(stats.new_tokens) == 4 and sum(stats.prompt_tokens) == 4
        assert report.privacy.dp_unit is None
    else:
        assert report.privacy.dp_unit == "generation" and report.privacy.dp_sensitivity == 1 + 5
        assert report.privacy.dp_epsilon == pytest.approx(1.0)


def test_int8_for_tensorrt_is_qdq_around_the_weights_calibrated_on_text(files: dict[str, Path]) -> None:
    import onnx

    from edgekit.core.bundle import read_bundle

    jetson = load_profile("jetson-orin-nano")
    made = convert(options(files, "int8", profile=jetson, output=files["folder"] / "trt.ekb"))
    entry, spec = made.manifest.artifacts[0], made.manifest.generation
    assert entry.quantization is not None and entry.quantization.scheme == "onnx-qdq"
    assert entry.quantization.target == "tensorrt" and spec is not None and spec.block_size is None
    assert entry.metrics.generation is not None and entry.metrics.generation.gate == "passed"
    _, contents = read_bundle(made.output)
    graph = onnx.load_from_string(contents[entry.path]).graph
    ops = [n.op_type for n in graph.node]
    assert "MatMulNBits" not in ops and "DynamicQuantizeLinear" not in ops
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    weighted = [n for n in matmuls if n.input[1] in dequantized]
    assert len(weighted) == 6 * 2 + 1  # q, k, v, out and two feed-forward in each of 2 layers, the head
    assert all(n.input[0] in dequantized for n in weighted)  # int8 activations too, symmetric
    assert all(n.input[1] not in dequantized for n in matmuls if n not in weighted)  # attention stays float
    with Model.load(made.output, allow_unsigned=True) as model:
        assert model.generate("turn on the", max_new_tokens=4)
    with pytest.raises(EdgekitError, match="int8 for TensorRT is QDQ, calibrated on text: pass held-out text"):
        convert(options(files, "int8", profile=jetson, evaluation=None))
    with pytest.raises(EdgekitError, match="TensorRT cannot run DynamicQuantizeLinear"):
        convert(options(files, "dynamic", profile=jetson))


def test_io_binding_keeps_the_cache_on_the_device_with_the_same_tokens(files: dict[str, Path], bundles: Any) -> None:
    import onnxruntime as ort

    from edgekit.core.formats import CPU, CUDA
    from edgekit.runtime.backends.onnx import ONNXBackend
    from edgekit.runtime.backends.onnx_binding import BoundSteps
    from edgekit.runtime.generate import Decoder, Generation, Sampling

    with Model.load(bundles["fp32"].output, allow_unsigned=True) as model:
        spec = model.manifest.generation
        assert spec is not None and model.info.provider == CPU
        assert model.backend.decoder_step(set()) == model.backend.run  # CPU: plain numpy between steps
        names = [o.name for o in model.backend.outputs]
        present = {p for _, p in spec.cache}
        bound = model.backend.decoder_step(present, device="cpu")  # the GPU path, on this machine's CPU
        assert isinstance(bound, BoundSteps)
        prompt, greedy = ids_of(files, "turn on the"), Sampling(max_new_tokens=12, stop_tokens=())
        plain = list(Decoder(model.backend.run, names, spec).without_stops().tokens(prompt, greedy, Generation()))
        kept = list(Decoder(bound, names, spec).without_stops().tokens(prompt, greedy, Generation()))
        assert kept == plain and len(plain) == 12
        decoder = Decoder(bound, names, spec)
        outputs = bound(decoder.feed(prompt, 0, decoder.empty_cache()))
        assert all(isinstance(outputs[names.index(p)], ort.OrtValue) for p in present)
        assert isinstance(outputs[names.index("logits")], np.ndarray)
        content = model.artifact_bytes

    class OnCuda:  # what a CUDA session reports; no GPU here to run one
        def __init__(self, session: Any) -> None:
            self.session = session

        def get_providers(self) -> list[str]:
            return [CUDA, CPU]

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

    def factory(model: bytes, sess_options: Any, providers: Any) -> Any:
        return OnCuda(ort.InferenceSession(model, sess_options=sess_options, providers=[CPU]))

    on_cuda = ONNXBackend(content, providers=[CUDA, CPU], available=[CUDA, CPU], session_factory=factory)
    chosen = on_cuda.decoder_step(present)
    assert isinstance(chosen, BoundSteps) and chosen.device == "cuda" and chosen.keep == present


def test_captured_generations_leave_deidentified_and_sealed_and_export_for_retraining(
    bundles: Any, tmp_path: Path, home: Path
) -> None:
    from edgekit.core.telemetry import STOP_REASONS
    from edgekit.fleet import Collector, init_fleet, load_collector_key
    from edgekit.runtime import Telemetry
    from edgekit.runtime.telemetry.outbox import Outbox

    fleet_dir = init_fleet("f7", tmp_path / "fleet")
    telemetry = Telemetry(
        "mqtt://127.0.0.1:9", "f7", device_id="hub-1", fleet_dir=fleet_dir, outbox=tmp_path / "outbox.sqlite",
        window_s=3600, close_timeout_s=0.1, k_anonymity=1, capture="random:1",
    )  # fmt: skip
    prompts = ("turn on the kitchen lights, mail anna.berg@example.com", "open the garage, call +44 20 7946 0958")
    with Model.load(bundles["int4"].output, telemetry=telemetry, allow_unsigned=True) as model:
        made = [model.generate(prompt, max_new_tokens=5, stop_tokens=[]) for prompt in prompts]
        confidence = model.last_generation.confidence  # type: ignore[union-attr]
        telemetry.flush()
    entries = Outbox(tmp_path / "outbox.sqlite", 1 << 24, 86400).pending(0, 10)
    assert [e.kind for e in entries] == ["report", "sample"]
    assert b"anna" not in entries[1].payload and b"garage" not in entries[1].payload  # sealed
    collector = Collector("f7", tmp_path / "collected", load_collector_key("f7", fleet_dir))
    assert [collector.handle(f"edgekit/f7/{e.node}/{e.kind}", e.payload) for e in entries] == ["report", "sample"]
    collector.finish()
    samples = np.load(tmp_path / "collected" / "samples.npz")
    assert samples["x"].shape == (2, 0) and list(samples["generated"]) == made
    assert "[EMAIL]" in samples["text"][0] and "anna" not in samples["text"][0]
    assert "[PHONE]" in samples["text"][1] and "7946" not in samples["text"][1]
    assert [STOP_REASONS[i] for i in samples["pred"]] == ["length", "length"]
    assert 0 < samples["confidence"][1] <= 1 and samples["confidence"][1] == pytest.approx(confidence, rel=1e-5)
    lines = [json.loads(line) for line in (tmp_path / "collected" / "generations.jsonl").read_text().splitlines()]
    assert [line["generated"] for line in lines] == made and lines[0]["text"].startswith(samples["text"][0])


def keras_gpt(path: Path, vocab: int = 64, width: int = 32, heads: int = 2, blocks: int = 2) -> Any:
    """A decoder as a user writes one in Keras: token and position embeddings, pre-norm
    blocks of causal self-attention and a GELU feed-forward, a language-model head."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    ids = keras.Input((None,), dtype="int32", name="input_ids")
    positions = keras.Input((None,), dtype="int32", name="position_ids")
    x = layers.Add()([layers.Embedding(vocab, width)(ids), layers.Embedding(256, width)(positions)])
    for _ in range(blocks):
        h = layers.LayerNormalization(epsilon=1e-5)(x)
        x = layers.Add()([x, layers.MultiHeadAttention(heads, width // heads)(h, h, use_causal_mask=True)])
        h = layers.Dense(4 * width, activation="gelu")(layers.LayerNormalization(epsilon=1e-5)(x))
        x = layers.Add()([x, layers.Dropout(0.1)(layers.Dense(width)(h))])
    logits = layers.Dense(vocab, kernel_initializer=keras.initializers.RandomNormal(stddev=1.5))(
        layers.LayerNormalization(epsilon=1e-5)(x)
    )
    model = keras.Model([ids, positions], logits, name="tinygpt")
    model.save(path)
    return model


@pytest.fixture(scope="module")
def keras_decoder(files: dict[str, Path]) -> tuple[Any, Path]:
    return keras_gpt(files["folder"] / "tinygpt.keras"), files["folder"] / "tinygpt.keras"


def keras_greedy(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    """Keras's own greedy continuation: the whole sequence again each step."""
    found = list(prompt)
    for _ in range(new_tokens):
        logits = model.predict([np.array([found]), np.arange(len(found))[None]], verbose=0)
        found.append(int(logits[0, -1].argmax()))
    return found[len(prompt) :]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_a_keras_decoder_converts_and_keeps_its_greedy_tokens(
    files: dict[str, Path], keras_decoder: tuple[Any, Path], fmt: str
) -> None:
    model, path = keras_decoder
    made = convert(options(files, "fp32", model=path, output=files["folder"] / f"k-{fmt}.ekb", format=fmt))
    assert made.manifest.source.kind == "keras" and made.manifest.generation is not None
    assert made.manifest.generation.layers == 2 and made.manifest.generation.positions == "position_ids"
    assert made.manifest.artifacts[0].format == fmt
    expected = keras_greedy(model, ids_of(files, "turn on the"), 10)
    with Model.load(made.output, allow_unsigned=True, format=fmt) as bundle:
        assert bundle.info.format == fmt
        bundle.generate("turn on the", max_new_tokens=10, stop_tokens=[])
        assert bundle.last_generation is not None and bundle.last_generation.tokens == expected


@pytest.mark.slow  # four TFLite conversions; the fast suite converts fp32 (greedy test above)
def test_a_tflite_decoder_is_one_model_with_prefill_and_decode_signatures(
    files: dict[str, Path], keras_decoder: tuple[Any, Path]
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.core.bundle import read_bundle

    _, path = keras_decoder
    made = {p: convert(options(files, p, model=path, output=files["folder"] / f"t-{p}.ekb", format="tflite",
                               allow_accuracy_drop=True))
            for p in ("fp32", "dynamic", "int8", "int4")}  # fmt: skip
    sizes = {p: m.manifest.artifacts[0].size for p, m in made.items()}
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"] and sizes["dynamic"] < 0.6 * sizes["fp32"]
    for precision in ("dynamic", "int8"):  # int4 per channel may lose more: its gate is recorded
        quality = made[precision].manifest.artifacts[0].metrics.generation
        assert quality is not None and quality.gate == "passed" and quality.agreement is not None
    scheme = made["int4"].manifest.artifacts[0].quantization
    assert scheme is not None and scheme.scheme == "litert-weight-only" and scheme.weights == "int4"
    _, contents = read_bundle(made["fp32"].output)
    interpreter = Interpreter(model_content=contents["model.fp32.tflite"])
    signatures = interpreter.get_signature_list()
    assert signatures["prefill"]["inputs"] == ["input_ids", "position_ids"]
    assert "past_1_value" in signatures["decode"]["inputs"] and "present_1_value" in signatures["decode"]["outputs"]
    with Model.load(made["dynamic"].output, allow_unsigned=True) as bundle:
        assert bundle.info.format == "tflite" and bundle.generate("turn on the", max_new_tokens=5, seed=1)


def test_a_tflite_decoder_is_refused_in_one_line_where_it_cannot_be_made(
    files: dict[str, Path], keras_decoder: tuple[Any, Path]
) -> None:
    with pytest.raises(EdgekitError, match="--format tflite: decoder.onnx is ONNX; TFLite decoders are made from a Keras"):
        convert(options(files, "fp32", format="tflite"))
    with pytest.raises(EdgekitError, match="int16x8 for a TFLite decoder: LiteRT decoders are fp32, .* use --format onnx"):
        convert(options(files, "int16x8", model=keras_decoder[1], format="tflite"))


def test_a_keras_layer_without_a_cache_path_is_one_line(files: dict[str, Path]) -> None:
    import keras
    from keras import layers

    ids = keras.Input((None,), dtype="int32", name="input_ids")
    x = layers.Embedding(64, 16)(ids)
    x = layers.Conv1D(16, 3, padding="causal")(x)
    x = layers.MultiHeadAttention(2, 8)(x, x, use_causal_mask=True)
    keras.Model(ids, layers.Dense(64)(x)).save(files["folder"] / "conv.keras")
    with pytest.raises(EdgekitError, match=r"layer conv1d.* \(Conv1D\) is not one edgekit can give a key-value cache"):
        convert(options(files, "fp32", model=files["folder"] / "conv.keras", output=files["folder"] / "c.ekb"))


def test_onnxruntime_genai_gives_the_same_greedy_tokens(files: dict[str, Path], bundles: Any) -> None:
    og = pytest.importorskip("onnxruntime_genai")
    from decoder_graphs import genai_folder

    model = og.Model(str(genai_folder(files["model"], files["folder"] / "genai", heads=2, head_size=16)))
    prompt = ids_of(files, "open the garage")
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 12, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    theirs = []
    while not generator.is_done():
        generator.generate_next_token()
        theirs.append(int(generator.get_next_tokens()[0]))
    with Model.load(bundles["fp32"].output, allow_unsigned=True) as ours:
        ours.generate("open the garage", max_new_tokens=12, stop_tokens=[])
        assert ours.last_generation is not None and ours.last_generation.tokens == theirs


def test_fit_finds_the_longest_context_that_fits_and_the_smallest_bundle_there(files: dict[str, Path]) -> None:
    from edgekit.core.bundle import read_bundle
    from edgekit.fit.search import FitOptions, fit

    profile = load_profile("raspberry-pi-5")
    tight = updated(profile, budget=updated(profile.budget, model_memory_mb=0.11))  # 128 tokens do not fit
    out = files["folder"] / "fit.ekb"
    result = fit(FitOptions(
        model=files["model"], profile=tight, output=out, evaluation=files["eval"], tokenizer=files["tokenizer"],
        precisions=("int4", "dynamic", "fp32"),
    ))  # fmt: skip
    assert result.chosen is not None and result.chosen.context == 64
    at_128 = [c for c in result.candidates if c.context == 128]
    assert len(at_128) == 3 and not any(c.fits for c in at_128)
    assert all("the largest context that fits is" in c.problems[0] for c in at_128)
    fitting = [c for c in result.candidates if c.context == 64 and c.fits]
    assert result.chosen.size_bytes == min(c.size_bytes or 0 for c in fitting)
    manifest = read_bundle(out)[0]
    assert manifest.generation is not None and manifest.generation.max_context == 64 and manifest.fit
