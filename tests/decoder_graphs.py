"""A small GPT-class decoder as an ONNX file in the layout optimum and ONNX Runtime's model
builder export, built here with the onnx helper API (nothing downloaded):

    inputs   input_ids [batch, seq], attention_mask [batch, past + seq], position_ids [batch, seq],
             past_key_values.{i}.key / .value [batch, heads, past, head_size]
    outputs  logits [batch, seq, vocab], present.{i}.key / .value [batch, heads, past + seq, head_size]

Pre-norm blocks: LayerNormalization, causal multi-head attention over the past and the new
tokens, a GELU (tanh) feed-forward of 4x, then a final norm and a language-model head.
``reference_greedy`` decodes by recomputing the whole sequence each step, with no cache: the
source model's own greedy tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_decoder(
    path: Path, vocab: int = 64, layers: int = 2, heads: int = 2, head_size: int = 16, seed: int = 0,
    embeddings: np.ndarray | None = None,
) -> Path:  # fmt: skip
    """Random weights, scaled so that its next-token distributions are peaked, as a trained
    model's are; ``embeddings`` (vocab, hidden) replaces the token embedding."""
    rng = np.random.default_rng(seed)
    hidden = heads * head_size
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    tokens = embeddings.astype(np.float32) if embeddings is not None else rng.standard_normal((vocab, hidden))
    const("wte", tokens.astype(np.float32))
    weight("wpe", (256, hidden), 1.0)
    const("ones", np.ones(hidden, np.float32))
    const("zeros", np.zeros(hidden, np.float32))
    const("heads_shape", np.array([0, 0, heads, head_size], np.int64))
    const("merged_shape", np.array([0, 0, hidden], np.int64))
    const("scale", np.array(1 / np.sqrt(head_size), np.float32))
    const("neg", np.array(-1e4, np.float32))
    const("one_i", np.array([1], np.int64))
    const("c_half", np.array(0.5, np.float32))
    const("c_one", np.array(1.0, np.float32))
    const("c_gelu", np.array(0.044715, np.float32))
    const("c_sqrt", np.array(np.sqrt(2 / np.pi), np.float32))

    x = node("Add", [node("Gather", ["wte", "input_ids"], "tok"), node("Gather", ["wpe", "position_ids"], "pos")], "h0")
    # the causal mask over [past + seq]: query i sees key j when j <= past + i and the mask says so
    seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), "one_i"], "seq_len")
    total = node("Gather", [node("Shape", ["attention_mask"], "mask_shape"), "one_i"], "total_len")
    past = node("Sub", [total, seq], "past_len")
    grid = node("ConstantOfShape", [node("Concat", [seq, total], "grid_shape", axis=0)], "grid",
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))  # fmt: skip
    causal = node("Trilu", [grid, node("Squeeze", [past], "past_scalar")], "causal", upper=0)
    keys = node("Unsqueeze", [node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT), "one_i"], "mask_b1")
    keys = node("Unsqueeze", [keys, "one_i"], "mask_b11")
    allowed = node("Mul", [causal, keys], "allowed")
    blocked = node("Mul", [node("Sub", ["c_one", allowed], "not_allowed"), "neg"], "mask_add")

    def norm(value: str, name: str) -> str:
        return node("LayerNormalization", [value, "ones", "zeros"], name, axis=-1, epsilon=1e-5)

    def split_heads(value: str, name: str) -> str:
        return node("Transpose", [node("Reshape", [value, "heads_shape"], f"{name}_r")], name, perm=[0, 2, 1, 3])

    present = []
    for i in range(layers):
        a = norm(x, f"ln1_{i}")
        q, k, v = (
            split_heads(node("MatMul", [a, weight(f"w{p}_{i}", (hidden, hidden), 1 / np.sqrt(hidden))], f"{p}m_{i}"), f"{p}_{i}")
            for p in "qkv"
        )  # fmt: skip
        k_all = node("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        v_all = node("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        present += [k_all, v_all]
        scores = node("Mul", [node("MatMul", [q, node("Transpose", [k_all], f"kt_{i}", perm=[0, 1, 3, 2])], f"qk_{i}"), "scale"], f"scaled_{i}")
        probs = node("Softmax", [node("Add", [scores, blocked], f"masked_{i}")], f"probs_{i}", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v_all], f"ctx_{i}")], f"ctx_t_{i}", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "merged_shape"], f"ctx_m_{i}")
        x = node("Add", [x, node("MatMul", [ctx, weight(f"wo_{i}", (hidden, hidden), 1 / np.sqrt(hidden))], f"o_{i}")], f"h_attn_{i}")
        f = node("MatMul", [norm(x, f"ln2_{i}"), weight(f"w1_{i}", (hidden, 4 * hidden), 1 / np.sqrt(hidden))], f"ff1_{i}")
        cube = node("Mul", [node("Mul", [f, f], f"sq_{i}"), f], f"cube_{i}")
        inner = node("Mul", [node("Add", [f, node("Mul", [cube, "c_gelu"], f"gc_{i}")], f"ga_{i}"), "c_sqrt"], f"gi_{i}")
        gelu = node("Mul", [node("Mul", [f, "c_half"], f"gh_{i}"), node("Add", ["c_one", node("Tanh", [inner], f"gt_{i}")], f"g1_{i}")], f"gelu_{i}")
        x = node("Add", [x, node("MatMul", [gelu, weight(f"w2_{i}", (4 * hidden, hidden), 1 / np.sqrt(4 * hidden))], f"ff2_{i}")], f"h_{i}")
    node("MatMul", [norm(x, "ln_f"), weight("lm_head", (hidden, vocab), 2 / np.sqrt(hidden))], "logits")

    cache = ["batch", heads, "past", head_size]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ] + [
        helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, cache)
        for i in range(layers) for kind in ("key", "value")
    ]  # fmt: skip
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])] + [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", heads, "total", head_size]) for name in present
    ]
    graph = helper.make_graph(nodes, "tiny_gpt", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def reference_greedy(path: Path, prompt: list[int], new_tokens: int) -> list[int]:
    """The source model's greedy tokens, the whole sequence recomputed each step (no cache)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    caches = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    ids = list(prompt)
    for _ in range(new_tokens):
        n = len(ids)
        feed = {
            "input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, n), np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None],
            **{c.name: np.zeros((1, c.shape[1], 0, c.shape[3]), np.float32) for c in caches},
        }  # fmt: skip
        logits = session.run(["logits"], feed)[0]
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def genai_folder(model: Path, folder: Path, heads: int, head_size: int, context: int = 256) -> Path:
    """``model`` as onnxruntime-genai reads one: the ONNX file beside a genai_config.json that
    names its inputs, outputs and cache (ONNX Runtime GenAI's llama layout: separate keys and
    values)."""
    import json
    import shutil

    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    layers = sum(1 for i in graph.input if i.name.startswith("past_key_values.")) // 2
    vocab = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / "model.onnx")
    config = {
        "model": {
            "type": "llama", "vocab_size": vocab, "context_length": context, "bos_token_id": 1,
            "eos_token_id": 0, "pad_token_id": 0,
            "decoder": {
                "filename": "model.onnx", "head_size": head_size, "hidden_size": heads * head_size,
                "num_attention_heads": heads, "num_key_value_heads": heads, "num_hidden_layers": layers,
                "session_options": {"intra_op_num_threads": 2, "log_id": "edgekit-tests"},
                "inputs": {
                    "input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {"do_sample": False, "max_length": context, "num_beams": 1, "past_present_share_buffer": False},
    }  # fmt: skip
    (folder / "genai_config.json").write_text(json.dumps(config))
    return folder
