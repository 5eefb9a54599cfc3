"""The Open Inference Protocol's tensors and errors, independent of the transport.

A request's tensors are checked here against what the model takes (name, datatype, element
count, binary sizes) before any array is built; ``predict``'s own checks (``check_feed``) then
cover ranks and dims. Every refusal is a ``ProtocolError`` with the HTTP status the protocol
gives and one line that names the tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekit.core.validation import ascii_int
from edgekit.runtime.backends import TensorInfo

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}  # fmt: skip
"""The protocol's tensor data types, as little-endian numpy dtypes (BYTES: Python bytes)."""

BINARY_SIZE = "binary_data_size"
HEADER_LENGTH = "inference-header-content-length"


class ProtocolError(Exception):
    """A request the protocol refuses: ``status`` is the HTTP status, the message one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as model metadata states it: ``-1`` marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def datatype(dtype: np.dtype | str) -> str:
    """The protocol's name for a numpy dtype."""
    kind = np.dtype(dtype)
    if kind.kind in "OSU":
        return "BYTES"
    return next(name for name, known in DATATYPES.items() if known == kind.newbyteorder("<") or known == kind)


def spec_of(info: TensorInfo) -> TensorSpec:
    """What a client sends or gets for an engine tensor: quantized ones are float to the
    caller, since ``Model`` quantizes and dequantizes inside."""
    dtype = "float32" if info.quantized else info.dtype
    return TensorSpec(info.name, datatype(dtype), tuple(-1 if d is None else d for d in info.shape))


@dataclass(frozen=True)
class Limits:
    """What one client, or many, may take of the server."""

    max_body_bytes: int = 64 << 20
    max_elements: int = 16 << 20
    """Elements per tensor, checked from the declared shape before anything is allocated."""
    max_inflight_bytes: int = 256 << 20
    """Request bodies being read at once, all clients together (the body limit alone lets N
    clients hold N times it)."""
    max_connections: int = 512
    header_timeout_s: float = 10.0
    """A client that has not sent a request's headers by then is disconnected (slowloris)."""


MAX_DIMS = 32
MAX_DIM = 2**31 - 1



@dataclass
class InferRequest:
    """One inference request, checked: its inputs as arrays by name."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[tuple[str, bool]] | None = None
    """Requested outputs and whether each goes back as binary data; None: every output."""
    parameters: dict[str, Any] = field(default_factory=dict)


def decode_tensor(
    name: str, datatype_name: str, shape: Sequence[int], specs: Mapping[str, TensorSpec], limits: Limits
) -> tuple[TensorSpec, np.dtype, int]:
    """Check a tensor's header against the model: its spec, dtype and element count."""
    spec = specs.get(name)
    if spec is None:
        raise ProtocolError(400, f"'{name}' is not an input of this model; it takes {', '.join(specs)}")
    if datatype_name not in DATATYPES:
        raise ProtocolError(400, f"input '{name}': unknown datatype '{datatype_name}'")
    if datatype_name != spec.datatype:
        raise ProtocolError(400, f"input '{name}' takes {spec.datatype}, got {datatype_name}")
    if len(shape) > MAX_DIMS:
        raise ProtocolError(400, f"input '{name}': {len(shape)} dimensions, more than {MAX_DIMS}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape):
        raise ProtocolError(
            400, f"input '{name}': a shape is a list of integers from 0 to {MAX_DIM}, got {str(shape)[:200]}"
        )
    count = math.prod(shape)
    if count > limits.max_elements:
        raise ProtocolError(
            413, f"input '{name}' has {count} elements, over this server's limit of {limits.max_elements}"
        )
    return spec, DATATYPES[datatype_name], count


def from_buffer(name: str, raw: bytes | memoryview, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """A tensor from its binary form: little-endian, row-major; BYTES as 4-byte lengths."""
    count = math.prod(shape)
    if dtype.kind == "O":
        return np.array(_split_bytes(name, bytes(raw), count), dtype=object).reshape(shape)
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            400, f"input '{name}': {len(raw)} bytes of data for shape {list(shape)}, "
            f"which takes {count * dtype.itemsize}",
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _split_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    items: list[bytes] = []
    at = 0
    for _ in range(count):
        if at + 4 > len(raw):
            raise ProtocolError(400, f"input '{name}': its BYTES data ends before element {len(items)}")
        size = int.from_bytes(raw[at : at + 4], "little")
        items.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    if at != len(raw):
        raise ProtocolError(400, f"input '{name}': its BYTES data does not match {count} elements")
    return items


def from_list(name: str, data: Any, dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """A tensor from JSON data, nested or flat."""
    try:
        if dtype.kind == "O":
            items = np.array(data, dtype=object).ravel()
            array = np.array([s.encode() if isinstance(s, str) else s for s in items], dtype=object)
        else:
            array = np.asarray(data, dtype=dtype).ravel()
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(400, f"input '{name}': its data are not {datatype(dtype)} values") from None
    if array.size != math.prod(shape):
        raise ProtocolError(
            400, f"input '{name}': {array.size} values for shape {list(shape)} ({math.prod(shape)})"
        )
    return array.reshape(shape)


def encode_bytes(array: np.ndarray) -> bytes:
    """BYTES elements in binary form: each a 4-byte little-endian length, then the bytes."""
    parts = []
    for item in array.ravel():
        raw = item.encode() if isinstance(item, str) else bytes(item)
        parts += [len(raw).to_bytes(4, "little"), raw]
    return b"".join(parts)


def raw_bytes(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        return encode_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def parse_rest(
    body: bytes, header_length: str | None, specs: Mapping[str, TensorSpec], limits: Limits
) -> InferRequest:
    """A REST inference request: JSON, or JSON then binary tensors (the binary tensor data
    extension, with ``Inference-Header-Content-Length``)."""
    size = len(body)
    if header_length is not None:
        declared = ascii_int(header_length)
        if declared is None or declared > size:
            raise ProtocolError(
                400, f"Inference-Header-Content-Length is {header_length[:40]}, and the body has {size} bytes"
            )
        size = declared
    try:
        document = json.loads(body[:size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(400, f"the request is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(400, "the request's JSON is nested too deep") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise ProtocolError(400, 'an inference request is a JSON object with an "inputs" list')
    binary = memoryview(body)[size:]
    inputs: dict[str, np.ndarray] = {}
    for item in document["inputs"]:
        name, array, used = _rest_input(item, specs, limits, binary)
        if name in inputs:
            raise ProtocolError(400, f"input '{name}' is given twice")
        inputs[name], binary = array, binary[used:]
    if len(binary):
        raise ProtocolError(400, f"{len(binary)} bytes of binary data follow the inputs that use it")
    return InferRequest(
        inputs, _optional_str(document.get("id")), _rest_outputs(document), _parameters(document)
    )


def _rest_input(
    item: Any, specs: Mapping[str, TensorSpec], limits: Limits, binary: memoryview
) -> tuple[str, np.ndarray, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ProtocolError(400, 'each input is an object with "name", "shape", "datatype" and "data"')
    name, shape = item["name"], item.get("shape")
    if not isinstance(shape, list):
        raise ProtocolError(400, f"input '{name}' has no shape list")
    _, dtype, _ = decode_tensor(name, str(item.get("datatype")), shape, specs, limits)
    size = _parameters(item).get(BINARY_SIZE)
    if size is None:
        if "data" not in item:
            raise ProtocolError(400, f"input '{name}' has neither \"data\" nor a {BINARY_SIZE} parameter")
        return name, from_list(name, item["data"], dtype, shape), 0
    if not isinstance(size, int) or size < 0 or size > len(binary):
        raise ProtocolError(
            400, f"input '{name}': {BINARY_SIZE} {size} runs past the end of the body ({len(binary)} left)"
        )
    return name, from_buffer(name, binary[:size], dtype, shape), size


def _rest_outputs(document: dict[str, Any]) -> list[tuple[str, bool]] | None:
    default = bool(_parameters(document).get("binary_data_output", False))
    wanted = document.get("outputs")
    if wanted is None:
        return None if not default else [("*", True)]
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and "name" in o for o in wanted):
        raise ProtocolError(400, '"outputs" is a list of objects with a "name"')
    return [(str(o["name"]), bool(_parameters(o).get("binary_data", default))) for o in wanted]


def _parameters(item: dict[str, Any]) -> dict[str, Any]:
    found = item.get("parameters") or {}
    if not isinstance(found, dict):
        raise ProtocolError(400, '"parameters" is a JSON object')
    return found


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def select_outputs(
    names: Sequence[str], arrays: Sequence[np.ndarray], wanted: list[tuple[str, bool]] | None
) -> list[tuple[str, np.ndarray, bool]]:
    """The outputs a request asked for, in its order, each with its binary flag."""
    if wanted is None:
        return [(n, a, False) for n, a in zip(names, arrays, strict=True)]
    if wanted == [("*", True)]:
        return [(n, a, True) for n, a in zip(names, arrays, strict=True)]
    by_name = dict(zip(names, arrays, strict=True))
    for name, _ in wanted:
        if name not in by_name:
            raise ProtocolError(400, f"'{name}' is not an output of this model; it has {', '.join(names)}")
    return [(name, by_name[name], binary) for name, binary in wanted]


def encode_rest(
    model: str, version: int, request_id: str | None, outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    tensors, blobs = [], []
    for name, array, binary in outputs:
        tensor: dict[str, Any] = {"name": name, "datatype": datatype(array.dtype), "shape": list(array.shape)}
        if binary:
            blob = raw_bytes(array)
            tensor["parameters"] = {BINARY_SIZE: len(blob)}
            blobs.append(blob)
        elif array.dtype.kind in "OSU":
            tensor["data"] = [
                x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in array.ravel()
            ]
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": tensors}
    if request_id is not None:
        document["id"] = request_id
    header = json.dumps(document, separators=(",", ":")).encode()
    return (header + b"".join(blobs), len(header)) if blobs else (header, None)
