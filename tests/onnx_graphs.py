"""Small ONNX graphs built with onnx.helper, each shaped like a trap real models set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _rng(seed: int) -> np.random.Generator:
    """Each graph draws from its own generator, so its weights never depend on which graphs
    the tests built before it (a shared one made results depend on test order)."""
    return np.random.default_rng(seed)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def _model(
    nodes: list, inputs: list, outputs: list, inits: list, opset: int, extra_opsets: tuple = ()
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="edgekit-tests")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def conv_classifier(opset: int = 11, batch: str | int = "N", spatial: tuple = (8, 8)) -> onnx.ModelProto:
    """NCHW Conv → Relu → GlobalAveragePool → Flatten → Gemm: a PaddleOCR-style CNN head."""
    rng = _rng(7)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, *spatial])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])
    inits = [
        _init("conv_w", rng.normal(0, 0.3, (16, 3, 3, 3))),
        _init("conv_b", rng.normal(0, 0.1, (16,))),
        _init("fc_w", rng.normal(0, 0.3, (5, 16))),
        _init("fc_b", rng.normal(0, 0.1, (5,))),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    return _model(nodes, [x], [y], inits, opset)


def concat_bias_mlp() -> onnx.ModelProto:
    """A bias built by Concat of two 1-D constants with axis=-1, as exporters write it. ORT's
    symbolic shape inference asserts axis == 0 for constant Concats and fails."""
    rng = _rng(8)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    inits = [
        _init("w", rng.normal(0, 0.3, (16, 8))),
        _init("b_left", rng.normal(0, 0.1, (4,))),
        _init("b_right", rng.normal(0, 0.1, (4,))),
    ]
    nodes = [
        helper.make_node("Concat", ["b_left", "b_right"], ["b"], name="concat_bias", axis=-1),
        helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
        helper.make_node("Add", ["m", "b"], ["y"], name="add_bias"),
    ]
    return _model(nodes, [x], [y], inits, 13)


def outlier_mlp() -> onnx.ModelProto:
    """Three layers. layer2 adds a huge constant to one unit that layer3 ignores: its int8
    range swamps every other unit of that tensor, so quantizing it ruins the output."""
    rng = _rng(9)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    b2 = rng.normal(0, 0.05, (32,))
    b2[0] = 400.0
    w3 = rng.normal(0, 0.5, (32, 10))
    w3[0] = 0.0
    inits = [
        _init("w1", rng.normal(0, 0.25, (16, 32))), _init("b1", rng.normal(0, 0.05, (32,))),
        _init("w2", rng.normal(0, 0.25, (32, 32))), _init("b2", b2), _init("w3", w3),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="layer1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="layer2"),
        helper.make_node("MatMul", ["h2", "w3"], ["y"], name="layer3"),
    ]
    return _model(nodes, [x], [y], inits, 13)


def custom_op_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="com.example")
    return _model([node], [x], [y], [], 13, (helper.make_opsetid("com.example", 1),))


def save(model: onnx.ModelProto, path: Path, external: bool = False) -> Path:
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.stem + ".weights", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def leaky_integrator(opset: int = 17) -> onnx.ModelProto:
    """A streaming model shaped like Silero VAD: audio ``x`` (N, 4), a recurrent ``state``
    (2, N, 4) with the batch second, and a scalar int64 sample rate ``sr``. It gives a score
    ``y`` (N, 3) and the next state ``stateN`` = 0.9 * state + x @ W (numpy: ``integrate``)."""
    rng = _rng(11)
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 4]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
        helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 4]),
    ]
    inits = [
        _init("w", rng.normal(0, 0.5, (4, 4))),
        _init("w2", rng.normal(0, 0.5, (4, 3))),
        _init("leak", np.array(0.9)),
        _init("rate", np.array(1 / 16000)),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="input_proj"),
        helper.make_node("Mul", ["state", "leak"], ["leaked"], name="leak"),
        helper.make_node("Add", ["leaked", "xw"], ["stateN"], name="integrate"),
        helper.make_node("ReduceSum", ["stateN", "axis0"], ["summed"], name="sum", keepdims=0),
        helper.make_node("Cast", ["sr"], ["srf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["srf", "rate"], ["gain"], name="gain"),
        helper.make_node("MatMul", ["summed", "w2"], ["proj"], name="out_proj"),
        helper.make_node("Mul", ["proj", "gain"], ["y"], name="scale"),
    ]
    if opset < 13:  # ReduceSum took its axes as an attribute before opset 13
        nodes[3] = helper.make_node("ReduceSum", ["stateN"], ["summed"], name="sum", keepdims=0, axes=[0])
        inits = inits[:-1]
    return _model(nodes, inputs, outputs, inits, opset)


def integrate(
    model: onnx.ModelProto, x: np.ndarray, state: np.ndarray, sr: int
) -> tuple[np.ndarray, np.ndarray]:
    """``leaky_integrator``'s step in numpy, from its own weights."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    next_state = 0.9 * state + (x @ weights["w"])[None]
    return next_state.sum(axis=0) @ weights["w2"] * (sr / 16000), next_state


def image_and_ids(opset: int = 17) -> onnx.ModelProto:
    """Sensor fusion: an NCHW ``image`` and int64 token ``ids`` (an embedding looked up with
    Gather), sharing the symbolic batch dim ``N``; two outputs, ``boxes`` (N, 4) and class
    ``scores`` (N, 3) after a softmax."""
    rng = _rng(12)
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5]),
    ]
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3]),
    ]
    inits = [
        _init("conv_w", rng.normal(0, 0.3, (8, 3, 3, 3))),
        _init("conv_b", rng.normal(0, 0.1, (8,))),
        _init("embedding", rng.normal(0, 0.5, (20, 8))),
        _init("box_w", rng.normal(0, 0.3, (16, 4))),
        _init("cls_w", rng.normal(0, 0.6, (16, 3))),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["visual"], name="flatten"),
        helper.make_node("Gather", ["embedding", "ids"], ["e"], name="embed"),
        helper.make_node("ReduceMean", ["e"], ["text"], name="mean", axes=[1], keepdims=0)
        if opset < 18
        else helper.make_node("ReduceMean", ["e", "axis1"], ["text"], name="mean", keepdims=0),
        helper.make_node("Concat", ["visual", "text"], ["fused"], name="fuse", axis=1),
        helper.make_node("MatMul", ["fused", "box_w"], ["boxes"], name="box_head"),
        helper.make_node("MatMul", ["fused", "cls_w"], ["logits"], name="cls_head"),
        helper.make_node("Softmax", ["logits"], ["scores"], name="softmax", axis=-1),
    ]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    return _model(nodes, inputs, outputs, inits, opset)


def image_and_ids_data(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(0, 1, (count, 3, 8, 8)).astype(np.float32),
        "ids": rng.integers(0, 20, (count, 5)).astype(np.int64),
    }


def fp16_overflow(opset: int = 17) -> onnx.ModelProto:
    """The trap of PaddleOCR's detector in fp16: an intermediate tensor past fp16's 65,504
    (a wide MatMul on large weights, scaled down again after), so fp16 gives inf and noise."""
    rng = _rng(13)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    inits = [
        _init("big", rng.normal(0, 3e4, (16, 32))),
        _init("down", np.array(1e-4)),
        _init("head", rng.normal(0, 0.5, (32, 4))),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "big"], ["wide"], name="wide"),
        helper.make_node("Mul", ["wide", "down"], ["scaled"], name="scale"),
        helper.make_node("Tanh", ["scaled"], ["t"], name="tanh"),
        helper.make_node("MatMul", ["t", "head"], ["y"], name="head"),
    ]
    return _model(nodes, [x], [y], inits, opset)


def bag_of_embeddings(
    vocab: int = 300, hidden: int = 16, classes: int = 4, opset: int = 17
) -> onnx.ModelProto:
    """A text classifier as optimum exports one: int64 ``input_ids``, ``attention_mask`` and
    ``token_type_ids``, batch and sequence dynamic; word plus type embeddings, mean over the
    unmasked tokens, a linear head and softmax."""
    rng = _rng(17)
    names = ("input_ids", "attention_mask", "token_type_ids")
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names]
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["w"]),
        helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["w", "t"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "last"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["m", "seq_axis"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["safe"]),
        helper.make_node("Div", ["total", "safe"], ["pooled"]),
        helper.make_node("Gemm", ["pooled", "head", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
    ]
    inits = [
        _init("words", rng.normal(0, 1, (vocab, hidden))), _init("types", rng.normal(0, 0.1, (2, hidden))),
        _init("head", rng.normal(0, 1, (hidden, classes))), _init("bias", np.zeros(classes)),
        _init("one", np.ones(1)), numpy_helper.from_array(np.array([2], np.int64), "last"),
        numpy_helper.from_array(np.array([1], np.int64), "seq_axis"),
    ]  # fmt: skip
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes])]
    return _model(nodes, inputs, outputs, inits, opset)


def slow_mlp(width: int = 1024, depth: int = 16, opset: int = 17) -> onnx.ModelProto:
    """A model that takes its time: ``depth`` (width × width) MatMuls with one shared weight
    and a Tanh between them, so that a batch of a few hundred rows runs for tens of
    milliseconds. For a server's queues, timeouts and drains, with a real engine busy."""
    rng = _rng(21)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])
    nodes, last = [], "x"
    for i in range(depth):
        nodes += [
            helper.make_node("MatMul", [last, "w"], [f"m{i}"], name=f"matmul{i}"),
            helper.make_node("Tanh", [f"m{i}"], [f"t{i}"] if i < depth - 1 else ["y"], name=f"tanh{i}"),
        ]
        last = f"t{i}"
    weight = rng.normal(0, 1 / np.sqrt(width), (width, width))
    return _model(nodes, [x], [y], [_init("w", weight)], opset)


def score_and_box_maps(batch: str | int = "N") -> onnx.ModelProto:
    """A two-scale detector head in the layout of PaddleOCR's and many anchor-free detectors:
    per scale a score map (N, 1, H, W) after a Sigmoid and a box map (N, 4, H, W). Four
    outputs, none shaped like class scores."""
    rng = _rng(13)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 16, 16])
    inits = [_init("stem_w", rng.normal(0, 0.3, (8, 3, 3, 3)))]
    nodes = [
        helper.make_node("Conv", ["image", "stem_w"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["features_16"], name="stem_relu"),
        helper.make_node("MaxPool", ["features_16"], ["features_8"], name="down", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    outputs = []
    for size in (16, 8):
        inits += [_init(f"score{size}_w", rng.normal(0, 0.3, (1, 8, 1, 1))),
                  _init(f"box{size}_w", rng.normal(0, 0.3, (4, 8, 1, 1)))]  # fmt: skip
        nodes += [
            helper.make_node("Conv", [f"features_{size}", f"score{size}_w"], [f"logit{size}"], name=f"score{size}"),
            helper.make_node("Sigmoid", [f"logit{size}"], [f"score_map_{size}"], name=f"sigmoid{size}"),
            helper.make_node("Conv", [f"features_{size}", f"box{size}_w"], [f"box_map_{size}"], name=f"box{size}"),
        ]
        outputs += [helper.make_tensor_value_info(f"score_map_{size}", TensorProto.FLOAT, [batch, 1, size, size]),
                    helper.make_tensor_value_info(f"box_map_{size}", TensorProto.FLOAT, [batch, 4, size, size])]  # fmt: skip
    return _model(nodes, [x], outputs, inits, 13)
