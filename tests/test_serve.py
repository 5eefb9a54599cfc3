"""``edgekit serve`` speaks the Open Inference Protocol: every REST and gRPC endpoint, over
real sockets, on real bundles (TFLite int8, ONNX fp32, a two-input model, a text model), and
every answer equals ``Model.predict`` on the same inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx_graphs
import pytest
from serve_helpers import Server, binary_outputs, binary_request, json_input, rest_outputs, serving

from edgekit.convert import ConvertOptions, convert
from edgekit.core.profiles import load_profile
from edgekit.runtime import Model

TEXTS = ["turn on the kitchen lights", "set the garage to 21 degrees"]


@pytest.fixture(scope="module")
def bundles(
    converted: Any, digits_files: dict[str, Path], intent_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory, publisher: Path,
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve")
    fusion = onnx_graphs.save(onnx_graphs.image_and_ids(), folder / "fusion.onnx")
    made = {"digits": converted("int8").output}
    for name, model, extra in (
        ("digits_onnx", digits_files["model"], {}),
        ("fusion", fusion, {}),
        (
            "intent",
            intent_files["model"],
            {"tokenizer": intent_files["tokenizer"], "labels": intent_files["labels"]},
        ),
    ):
        made[name] = convert(ConvertOptions(
            model=model, profile=load_profile("x86-gateway"), output=folder / f"{name}.ekb", format="onnx",
            precision="fp32", name=name, sign_key=publisher, **extra,
        )).output
    return made


@pytest.fixture(scope="module")
def server(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with serving(*(str(p) for p in bundles.values()), log=log) as running:
        yield running


def _inputs(digits_eval: tuple[np.ndarray, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    return {
        "digits": {"x": digits_eval[0][:3]},
        "digits_onnx": {"x": digits_eval[0][3:5]},
        "fusion": onnx_graphs.image_and_ids_data(4, seed=5),
    }


def _expected(bundle: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with Model.load(bundle) as model:
        got = model.predict(inputs if len(inputs) > 1 else next(iter(inputs.values())))
        names = [o.name for o in model.info.outputs]
    return got if isinstance(got, dict) else {names[0]: got}


def test_health_and_metadata_over_rest(server: Server, bundles: dict[str, Path]) -> None:
    with httpx.Client(base_url=server.rest) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2").json() == {
            "name": "edgekit",
            "version": _version(),
            "extensions": ["binary_tensor_data"],
        }
        digits = client.get("/v2/models/digits").json()
        assert digits == {
            "name": "digits",
            "versions": ["2"],
            "platform": "tflite_tflite",
            "inputs": [{"name": digits["inputs"][0]["name"], "datatype": "FP32", "shape": [-1, 8, 8, 1]}],
            "outputs": [{"name": digits["outputs"][0]["name"], "datatype": "FP32", "shape": [-1, 10]}],
        }  # fmt: skip  (int8 inside: float to the caller, as Model.predict)
        fusion = client.get("/v2/models/fusion/versions/1").json()
        assert [(t["name"], t["datatype"], t["shape"]) for t in fusion["inputs"]] == [
            ("image", "FP32", [-1, 3, 8, 8]), ("ids", "INT64", [-1, 5])]  # fmt: skip
        assert client.get("/v2/models/intent").json()["inputs"] == [
            {"name": "text", "datatype": "BYTES", "shape": [-1]}
        ]
        assert client.get("/v2/models/digits/ready").status_code == 200
        assert client.get("/v2/models/digits/versions/2/ready").status_code == 200
        assert client.get("/v2/models/digits/versions/7/ready").status_code == 400
        assert client.get("/v2/models/nope/ready").status_code == 400
        index = client.post("/v2/repository/index").json()  # Triton's model repository index
        assert {(m["name"], m["version"], m["state"]) for m in index} >= {("digits", "2", "READY")}
        assert {m["name"] for m in index} >= {"digits", "fusion", "intent"}
        labels = client.get("/v2/models/intent").json()["parameters"]["labels"]  # the bundle's class names
        assert labels and all(isinstance(name, str) for name in labels)


def _version() -> str:
    import edgekit

    return edgekit.__version__


def test_infer_over_rest_equals_predict(
    server: Server, bundles: dict[str, Path], digits_eval: tuple[np.ndarray, np.ndarray]
) -> None:
    with httpx.Client(base_url=server.rest) as client:
        for name, inputs in _inputs(digits_eval).items():
            expected = _expected(bundles[name], inputs)
            meta = client.get(f"/v2/models/{name}").json()
            types = {t["name"]: t["datatype"] for t in meta["inputs"]}
            if len(inputs) == 1:
                inputs = {meta["inputs"][0]["name"]: inputs["x"]}
            body = {"id": f"req-{name}", "inputs": [json_input(n, a, types[n]) for n, a in inputs.items()]}
            answer = client.post(f"/v2/models/{name}/infer", json=body)
            assert answer.status_code == 200, answer.text
            document = answer.json()
            assert (document["id"], document["model_name"]) == (f"req-{name}", name)
            got = rest_outputs(document)
            assert set(got) == set(expected)
            for out, array in expected.items():
                np.testing.assert_allclose(got[out], array, rtol=1e-6, atol=1e-6)
            # the binary tensor data extension: raw inputs in, raw outputs out, bit for bit
            raw, length = binary_request({n: (a, types[n]) for n, a in inputs.items()}, list(expected)[:1])
            answer = client.post(f"/v2/models/{name}/infer", content=raw,
                                 headers={"Inference-Header-Content-Length": str(length)})
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == "application/octet-stream"
            got = binary_outputs(answer.content, int(answer.headers["inference-header-content-length"]))
            first = list(expected)[0]
            assert list(got) == [first] and np.array_equal(got[first], expected[first])


def test_infer_over_grpc_equals_predict(
    server: Server, bundles: dict[str, Path], digits_eval: tuple[np.ndarray, np.ndarray]
) -> None:
    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2 as pb

    stub = server.stub()
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (meta.name, list(meta.extensions)) == ("edgekit", ["binary_tensor_data"])
    assert stub.ModelReady(pb.ModelReadyRequest(name="fusion", version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="fusion", version="3")).ready
    for name, inputs in _inputs(digits_eval).items():
        expected = _expected(bundles[name], inputs)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
        assert meta.name == name and list(meta.versions) and meta.platform
        if len(inputs) == 1:
            inputs = {meta.inputs[0].name: inputs["x"]}
        types = {t.name: t.datatype for t in meta.inputs}
        raw = pb.ModelInferRequest(model_name=name, id="g1")
        typed = pb.ModelInferRequest(model_name=name, model_version=list(meta.versions)[0])
        for n, array in inputs.items():
            raw.inputs.add(name=n, datatype=types[n], shape=list(array.shape))
            raw.raw_input_contents.append(array.tobytes())
            tensor = typed.inputs.add(name=n, datatype=types[n], shape=list(array.shape))
            field = "fp32_contents" if types[n] == "FP32" else "int64_contents"
            getattr(tensor.contents, field).extend(array.ravel().tolist())
        for request in (raw, typed):
            reply = stub.ModelInfer(request)
            assert reply.model_name == name and reply.id == request.id
            got = {o.name: np.frombuffer(b, np.float32).reshape(o.shape)
                   for o, b in zip(reply.outputs, reply.raw_output_contents, strict=True)}  # fmt: skip
            assert set(got) == set(expected)
            for out, array in expected.items():
                np.testing.assert_allclose(got[out], array, rtol=1e-6, atol=1e-6)


def test_a_text_model_takes_bytes_over_rest_and_grpc(server: Server, bundles: dict[str, Path]) -> None:
    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2 as pb

    with Model.load(bundles["intent"]) as model:
        expected = np.asarray(model.predict_text(TEXTS))
    with httpx.Client(base_url=server.rest) as client:
        body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS}]}
        got = rest_outputs(client.post("/v2/models/intent/infer", json=body).json())
    np.testing.assert_allclose(next(iter(got.values())), expected, atol=1e-6)
    request = pb.ModelInferRequest(model_name="intent")
    request.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [t.encode() for t in TEXTS]
    )
    reply = server.stub().ModelInfer(request)
    scores = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(reply.outputs[0].shape)
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_the_start_up_information_and_the_access_log(server: Server) -> None:
    by_name = {m["name"]: m for m in server.info["models"]}
    assert set(by_name) == {"digits", "digits_onnx", "fusion", "intent"}
    assert (by_name["digits"]["format"], by_name["digits"]["precision"], by_name["digits"]["version"]) == (
        "tflite", "int8", 2)
    assert server.info["rest"].startswith("http://127.0.0.1:") and server.info["token"] is False
    data = onnx_graphs.image_and_ids_data(1)
    body = {"inputs": [json_input("image", data["image"], "FP32"), json_input("ids", data["ids"], "INT64")]}
    with httpx.Client(base_url=server.rest) as client:
        client.get("/v2/models/fusion")
        assert client.post("/v2/models/fusion/infer", json=body).status_code == 200
    lines = server.log.read_text().splitlines()
    assert any("GET /v2/models/fusion - 200" in line and line.endswith(" ms") for line in lines)
    assert any("POST /v2/models/fusion/infer fusion v1 200" in line for line in lines)
    assert json.dumps(server.info)  # one JSON line a script reads


def test_the_shipped_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    from edgekit.runtime.serve import proto

    folder = Path(proto.__file__).parent
    # A process of its own: protoc in a process that already loaded protobuf and grpc can crash.
    run = subprocess.run(
        [sys.executable, str(folder / "generate.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == ["grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py"]
    for name in made:
        assert (tmp_path / name).read_text() == (folder / name).read_text(), f"{name}: run generate.py"


def test_the_runtime_needs_no_server_libraries(bundles: dict[str, Path]) -> None:
    """Model.load and predict import neither Starlette, uvicorn nor grpc; without them,
    edgekit serve says which extra to install, in one line."""
    code = (
        "import sys, numpy as np\n"
        "from edgekit.runtime import Model\n"
        f"m = Model.load({str(bundles['fusion'])!r})\n"
        "m.predict({'image': np.zeros((1, 3, 8, 8), np.float32), 'ids': np.zeros((1, 5), np.int64)})\n"
        "print(sorted(n for n in ('starlette', 'uvicorn', 'grpc') if n in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
    hidden = "import sys; sys.modules['starlette'] = None\nfrom edgekit.cli import main\nmain(['serve'])\n"
    run = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.strip() == (
        "error: edgekit serve needs the 'starlette' package, which is not installed: pip install 'edgekit[serve]'"
    )
