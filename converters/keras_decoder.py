"""A Keras decoder (causal self-attention blocks written with Keras's own layers) rebuilt as
an ONNX decoder with a key-value cache, in the layout ``sdk/convert/decoder.py`` converts.

A decoder as a user writes it in Keras has no cache: each call attends over the whole
sequence. This walks the model's functional graph layer by layer and writes the same
computation with each ``MultiHeadAttention`` taking ``past_key_values.{i}.key/value`` and
returning ``present.{i}.key/value``, so one graph serves the prompt (an empty cache) and each
later token. The weights are the model's own; a test holds the greedy tokens of the result to
the Keras model's, recomputed over the whole sequence.

Layers it reads: ``InputLayer`` (``input_ids``, and ``position_ids`` when the model takes
positions), ``Embedding``, ``Add``, ``LayerNormalization``, ``Dense`` and ``Activation``
(linear, relu, gelu, tanh, sigmoid, silu), ``Dropout`` (nothing at inference), and
``MultiHeadAttention`` called on one tensor as query, key and value with
``use_causal_mask=True``. Anything else is one line naming the layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.core.errors import InputError

OPSET = 17


def is_keras_decoder(model: Any) -> bool:
    """A functional Keras model with causal self-attention and a score per token out."""
    import keras

    causal = any(
        isinstance(op, keras.layers.MultiHeadAttention)
        and any(node.arguments.kwargs.get("use_causal_mask") for node in op._inbound_nodes)
        for op in getattr(model, "operations", [])
    )
    return causal and len(model.outputs) == 1 and len(model.outputs[0].shape) == 3


def check_layers(model: Any) -> None:
    """One line naming the first layer edgekit cannot give a cache to, if any."""
    import keras

    layers = keras.layers
    kinds = (layers.InputLayer, layers.Embedding, layers.Add, layers.LayerNormalization, layers.Dense,
             layers.Activation, layers.Dropout)  # fmt: skip
    shapes: set[tuple[int, int]] = set()
    for op in model.operations:
        if isinstance(op, keras.layers.MultiHeadAttention):
            _check_attention(op, op._inbound_nodes[0])
            shapes.add((op.num_heads, op.key_dim))
            if len(shapes) > 1:
                raise InputError(
                    f"layer {op.name}: every attention layer must have the same heads and key size"
                )
        elif not isinstance(op, kinds):
            raise _unsupported(op)


def _unsupported(op: Any) -> InputError:
    return InputError(
        f"layer {op.name} ({type(op).__name__}) is not one edgekit can give a key-value cache to: a decoder "
        "is built of Embedding, Add, LayerNormalization, Dense, Activation, Dropout and "
        "MultiHeadAttention(use_causal_mask=True); export it to ONNX with its cache instead"
    )


def _check_attention(op: Any, node: Any) -> None:
    sources = {id(t) for t in node.input_tensors}
    if not node.arguments.kwargs.get("use_causal_mask") or len(sources) != 1:
        raise InputError(
            f"layer {op.name}: a decoder's attention is self-attention with use_causal_mask=True "
            "(one tensor as query, key and value)"
        )


def keras_decoder_to_onnx(model: Any) -> Any:
    """The ONNX decoder with a cache that computes what ``model`` computes."""
    check_layers(model)
    graph = _Graph()
    for op in model.operations:
        graph.add(op)
    return graph.finish(model)


class _Graph:
    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.tensor: dict[str, str] = {}
        self.inputs: list[str] = []
        self.layers = 0
        self.cache: tuple[int, int] | None = None
        self._mask: str | None = None

    def add(self, op: Any) -> None:
        import keras

        kind = type(op).__name__
        node = op._inbound_nodes[0]
        sources = [self.tensor[t._keras_history.operation.name] for t in node.input_tensors]
        if isinstance(op, keras.layers.InputLayer):
            name = "position_ids" if "position" in op.name else "input_ids"
            self.inputs.append(name)
            self.tensor[op.name] = name
        elif isinstance(op, keras.layers.Embedding):
            self.tensor[op.name] = self._node("Gather", [self._const(op.embeddings), sources[0]])
        elif kind == "Add":
            out = sources[0]
            for other in sources[1:]:
                out = self._node("Add", [out, other])
            self.tensor[op.name] = out
        elif isinstance(op, keras.layers.LayerNormalization):
            self.tensor[op.name] = self._norm(op, sources[0])
        elif isinstance(op, keras.layers.Dense):
            self.tensor[op.name] = self._dense(op, sources[0])
        elif isinstance(op, keras.layers.Activation):
            self.tensor[op.name] = self._activation(op.activation, sources[0], op.name)
        elif isinstance(op, keras.layers.Dropout):
            self.tensor[op.name] = sources[0]
        elif isinstance(op, keras.layers.MultiHeadAttention):
            self.tensor[op.name] = self._attention(op, sources)
        else:
            raise _unsupported(op)

    def _const(self, value: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        name = f"w{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def _node(self, op: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        out = name or f"t{len(self.nodes)}"
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def _norm(self, op: Any, x: str) -> str:
        width = int(op.gamma.shape[0]) if op.scale else int(op.beta.shape[0])
        gamma = self._const(op.gamma if op.scale else np.ones(width))
        beta = self._const(op.beta if op.center else np.zeros(width))
        if op.axis not in (-1, [-1]) and list(np.atleast_1d(op.axis)) != [2]:
            raise InputError(f"layer {op.name}: LayerNormalization over axis {op.axis}, not the last")
        return self._node("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=float(op.epsilon))

    def _dense(self, op: Any, x: str) -> str:
        out = self._node("MatMul", [x, self._const(op.kernel)])
        if op.use_bias:
            out = self._node("Add", [out, self._const(op.bias)])
        return self._activation(op.activation, out, op.name)

    def _activation(self, activation: Any, x: str, layer: str) -> str:
        name = getattr(activation, "__name__", str(activation))
        if name == "linear":
            return x
        if name in ("relu", "tanh", "sigmoid"):
            return self._node({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[name], [x])
        if name in ("silu", "swish"):
            return self._node("Mul", [x, self._node("Sigmoid", [x])])
        if name == "gelu":  # Keras's default: exact, 0.5 x (1 + erf(x / sqrt 2))
            scaled = self._node("Div", [x, self._const(np.sqrt(2.0))])
            erf = self._node("Add", [self._node("Erf", [scaled]), self._const(1.0)])
            return self._node("Mul", [self._node("Mul", [x, erf]), self._const(0.5)])
        raise InputError(
            f"layer {layer}: activation {name} is not one edgekit rebuilds (linear, relu, gelu, tanh, "
            "sigmoid, silu)"
        )

    def _attention(self, op: Any, sources: list[str]) -> str:
        heads, size = op.num_heads, op.key_dim  # the same in every layer: check_layers
        self.cache = (heads, size)
        x, i = sources[0], self.layers
        self.layers += 1
        shape = self._const(np.array([0, 0, heads, size]), np.int64)

        def project(dense: Any) -> str:
            kernel = dense.kernel.numpy().reshape(dense.kernel.shape[0], heads * size)
            out = self._node("MatMul", [x, self._const(kernel)])
            out = self._node("Add", [out, self._const(dense.bias.numpy().reshape(-1))])
            return self._node("Transpose", [self._node("Reshape", [out, shape])], perm=[0, 2, 1, 3])

        q, k, v = project(op._query_dense), project(op._key_dense), project(op._value_dense)
        keys = self._node("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
        values = self._node("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        scores = self._node("MatMul", [q, self._node("Transpose", [keys], perm=[0, 1, 3, 2])])
        scaled = self._node("Mul", [scores, self._const(1 / np.sqrt(size))])
        scores = self._node("Add", [scaled, self._causal()])
        context = self._node("MatMul", [self._node("Softmax", [scores], axis=-1), values])
        merged = self._node("Transpose", [context], perm=[0, 2, 1, 3])
        merged = self._node("Reshape", [merged, self._const(np.array([0, 0, heads * size]), np.int64)])
        out = op._output_dense
        kernel = out.kernel.numpy().reshape(heads * size, -1)
        return self._node("Add", [self._node("MatMul", [merged, self._const(kernel)]), self._const(out.bias)])

    def _causal(self) -> str:
        """-1e4 where query i (at past + i) may not see key j: later keys, or masked ones."""
        if self._mask is not None:
            return self._mask
        one = self._const(np.array([1]), np.int64)
        seq = self._node("Gather", [self._node("Shape", ["input_ids"]), one])
        total = self._node("Gather", [self._node("Shape", ["attention_mask"]), one])
        past = self._node("Squeeze", [self._node("Sub", [total, seq])])
        grid = self._node(
            "ConstantOfShape", [self._node("Concat", [seq, total], axis=0)],
            value=self.helper.make_tensor("one", 1, [1], [1.0]),
        )  # fmt: skip
        causal = self._node("Trilu", [grid, past], upper=0)
        keys = self._node("Cast", ["attention_mask"], to=1)
        keys = self._node("Unsqueeze", [self._node("Unsqueeze", [keys, one]), one])
        blocked = self._node("Sub", [self._const(1.0), self._node("Mul", [causal, keys])])
        self._mask = self._node("Mul", [blocked, self._const(-1e4)])
        return self._mask

    def finish(self, model: Any) -> Any:
        import onnx
        from onnx import TensorProto

        if self.cache is None:
            raise InputError(f"{model.name} has no causal self-attention: it is not a decoder")
        heads, size = self.cache
        last = self.tensor[model.outputs[0]._keras_history.operation.name]
        self.nodes.append(self.helper.make_node("Identity", [last], ["logits"]))
        vocab = int(model.outputs[0].shape[-1])
        value = self.helper.make_tensor_value_info
        inputs = [value("input_ids", TensorProto.INT64, ["batch", "seq"]),
                  value("attention_mask", TensorProto.INT64, ["batch", "total"])]  # fmt: skip
        if "position_ids" in self.inputs:
            inputs.append(value("position_ids", TensorProto.INT64, ["batch", "seq"]))
        cache: list[str | int | None] = ["batch", heads, "past", size]
        inputs += [value(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, cache)
                   for i in range(self.layers) for kind in ("key", "value")]  # fmt: skip
        outputs = [value("logits", TensorProto.FLOAT, ["batch", "seq", vocab])]
        outputs += [value(f"present.{i}.{kind}", TensorProto.FLOAT, ["batch", heads, "total", size])
                    for i in range(self.layers) for kind in ("key", "value")]  # fmt: skip
        graph = self.helper.make_graph(self.nodes, model.name, inputs, outputs, self.inits)
        opset = [self.helper.make_opsetid("", OPSET)]
        made = self.helper.make_model(graph, opset_imports=opset, producer_name="edgekit")
        made.ir_version = 8
        onnx.checker.check_model(made)
        return made
