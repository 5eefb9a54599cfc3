"""Models nobody vouches for: the engine in a child process with memory and time limits
(``Model.load(..., isolate=True)``), and engine errors as the runtime's own error type."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgekit.cli import main
from edgekit.core.errors import InferenceError, RuntimeBackendError
from edgekit.runtime import Model
from edgekit.runtime.backends import ONNXBackend
from edgekit.runtime.isolated import Isolation, pack, unpack


@pytest.fixture(scope="module")
def bundle(converted: Any) -> Path:
    return converted("int8").output


def test_an_isolated_model_answers_as_the_in_process_one(bundle: Path, digits_eval: Any) -> None:
    x = digits_eval[0][:16]
    with Model.load(bundle) as here, Model.load(bundle, isolate=True) as isolated:
        assert isolated.info.engine.endswith(", isolated")
        assert isolated.info.inputs == here.info.inputs and isolated.info.outputs == here.info.outputs
        np.testing.assert_array_equal(isolated.predict(x), here.predict(x))
        with pytest.raises(Exception, match="input 'input'|expected|shape") as wrong:
            isolated.predict(np.zeros((2, 3), np.float32))  # checked here, before the child sees it
        assert "isolated" not in str(wrong.value)


def test_a_crash_or_a_hang_in_the_child_is_a_typed_error_and_the_next_call_recovers(
    bundle: Path, digits_eval: Any
) -> None:
    x = digits_eval[0][:4]
    model = Model.load(bundle, isolate=Isolation(call_timeout_s=2.0))
    expected = model.predict(x)
    child = model.backend._child  # type: ignore[attr-defined]
    os.kill(child.pid, signal.SIGSEGV)  # what a crafted model reaching native code does
    with pytest.raises(RuntimeBackendError, match="process died during this call \\(SIGSEGV\\)"):
        model.predict(x)
    np.testing.assert_array_equal(model.predict(x), expected)  # a fresh child
    os.kill(model.backend._child.pid, signal.SIGSTOP)  # type: ignore[attr-defined]  # a model that never returns
    with pytest.raises(RuntimeBackendError, match="took over 2 s for this call"):
        model.predict(x)
    np.testing.assert_array_equal(model.predict(x), expected)
    model.close()
    assert not child.is_alive()


def test_the_memory_limit_holds_in_the_child(bundle: Path) -> None:
    with pytest.raises(RuntimeBackendError, match="failed to load under its 64 MB memory limit"):
        Model.load(bundle, isolate=Isolation(memory_mb=64))


def gather_model() -> bytes:
    """A Gather whose indices come from the caller: out of range, ONNX Runtime refuses the call."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [table],
    )
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_an_engine_error_keeps_its_message_and_the_model_usable() -> None:
    backend = ONNXBackend(gather_model(), 1)
    with pytest.raises(InferenceError, match="onnxruntime .* failed on this input: .*indices"):
        backend.run({"i": np.array([99], np.int64)})
    np.testing.assert_array_equal(backend.run({"i": np.array([2, 0], np.int64)})[0], [3.0, 1.0])


def test_run_isolate_from_the_command_line(bundle: Path, digits_eval: Any, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", digits_eval[0][:2])
    result = CliRunner().invoke(
        main, ["run", str(bundle), "--input", str(tmp_path / "x.npy"), "--isolate", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert '"engine"' in result.output and "isolated" in result.output


def test_what_the_child_sends_is_checked_not_unpickled() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True])]
    packed = pack(arrays, ["a", "b"])
    assert [a.tolist() for a in unpack(packed).values()] == [a.tolist() for a in arrays]
    header = b'[["a", "<f4", [1000000000]]]'
    lies = {
        "claims a gigabyte": len(header).to_bytes(4, "big") + header + bytes(16),
        "objects": pack([np.array([1])], ["a"]).replace(b"<i8", b"|O8"),
        "trailing bytes": packed + b"x",
        "not a header": b"\x00\x00\x00\x05[[[[[",
    }
    for case, data in lies.items():
        with pytest.raises(ValueError):
            unpack(data)
            pytest.fail(case)
