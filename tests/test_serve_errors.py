"""A served device survives what the network sends it: every bad request gets the status the
protocol gives and one line of JSON (never a traceback), and the server stays healthy."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx_graphs
import pytest
from serve_helpers import Server, json_input, serving

from edgekit.convert import ConvertOptions, convert
from edgekit.core.profiles import load_profile

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def guarded(
    digits_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, publisher: Path
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("guarded")
    bundle = convert(ConvertOptions(
        model=digits_files["model"], profile=load_profile("x86-gateway"), output=folder / "meter.ekb",
        format="onnx", precision="fp32", name="meter", sign_key=publisher,
    )).output
    (folder / "token").write_text(TOKEN + "\n")
    args = (
        "--token-file",
        str(folder / "token"),
        "--max-body-mb",
        "0.25",
        "--max-elements",
        "100000",
        "--timeout",
        "1",
    )
    with serving(str(bundle), *args, log=folder / "serve.log") as server:
        yield server


def _client(server: Server, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.rest, headers=headers, timeout=30)


def _good(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [json_input("image", x, "FP32")]}


def test_the_bad_request_matrix_over_rest(
    guarded: Server, digits_eval: tuple[np.ndarray, np.ndarray]
) -> None:
    x = digits_eval[0][:1]
    name = httpx.get(f"{guarded.rest}/v2/models/meter", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert name["inputs"][0]["name"] == "image"
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("malformed JSON", {"content": b'{"inputs": [', "path": "meter"}, 400, "not valid JSON"),
        ("wrong datatype", {"json": {"inputs": [json_input("image", x.astype(np.int64), "INT64")]}}, 400, "input 'image' takes FP32, got INT64"),
        ("wrong shape", {"json": {"inputs": [json_input("image", x[:, :4], "FP32")]}}, 400, "input 'image' takes (batch, 8, 8, 1)"),
        ("data and shape disagree", {"json": {"inputs": [{**json_input("image", x, "FP32"), "shape": [2, 8, 8, 1]}]}}, 400, "64 values for shape [2, 8, 8, 1]"),
        ("unknown model", {"json": _good(x), "path": "nope"}, 404, "no model 'nope' is served here; it serves meter"),
        ("unknown version", {"json": _good(x), "path": "meter/versions/9"}, 404, "served from a bundle file, as version 1 only"),
        ("missing input", {"json": {"inputs": []}}, 400, "input 'image' is missing"),
        ("unknown input", {"json": {"inputs": [json_input("y", x, "FP32")]}}, 400, "'y' is not an input of this model; it takes image"),
        ("unknown output", {"json": {**_good(x), "outputs": [{"name": "nope"}]}}, 400, "'nope' is not an output"),
        ("too many elements", {"json": {"inputs": [{"name": "image", "shape": [10**6, 8, 8, 1], "datatype": "FP32", "data": []}]}}, 413, "over this server's limit of 100000"),
        ("body over the limit", {"content": b"[" + b"0," * 200_000 + b"0]"}, 413, "over this server's limit"),
        ("binary header past the body", {"content": header, "headers": {"Inference-Header-Content-Length": "99999"}}, 400, "Inference-Header-Content-Length is 99999"),
        ("binary data past the body", {"content": header + b"\0" * 10, "headers": {"Inference-Header-Content-Length": str(len(header))}}, 400, "binary_data_size 256 runs past the end"),
    ]  # fmt: skip
    with _client(guarded) as client:
        for what, request, status, message in cases:
            path = request.pop("path", "meter")
            answer = client.post(f"/v2/models/{path}/infer", **request)
            assert answer.status_code == status, (what, answer.text)
            error = answer.json()["error"]
            assert message in error and "\n" not in error and "Traceback" not in error, (what, error)
            assert client.get("/v2/health/ready").status_code == 200, what
            assert client.post("/v2/models/meter/infer", json=_good(x)).status_code == 200, what
        assert client.get("/v2/models/meter/infer").status_code == 405
        assert client.get("/v2/nothing").json() == {"error": "no such endpoint: /v2/nothing"}
    for token in (None, "wrong-token-wrong-token"):
        with _client(guarded, token) as client:
            answer = client.post("/v2/models/meter/infer", json=_good(x))
            assert answer.status_code == 401 and "bearer token is required" in answer.json()["error"]
            assert answer.headers["www-authenticate"] == "Bearer"
            assert client.get("/v2/health/live").status_code == 401


def test_a_slow_client_gets_408_and_does_not_hold_the_server(
    guarded: Server, digits_eval: tuple[np.ndarray, np.ndarray]
) -> None:
    host, port = guarded.rest.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(
            b"POST /v2/models/meter/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b'\r\nContent-Length: 5000\r\n\r\n{"inputs": ['
        )
        started = time.monotonic()
        with _client(guarded) as client:  # others are served meanwhile
            assert client.post("/v2/models/meter/infer", json=_good(digits_eval[0][:2])).status_code == 200
        answer = b""
        while not answer.endswith(b"}") and (chunk := slow.recv(4096)):
            answer += chunk
        assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer


def test_the_bad_request_matrix_over_grpc(
    guarded: Server, digits_eval: tuple[np.ndarray, np.ndarray]
) -> None:
    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2 as pb

    stub, auth = guarded.stub(), (("authorization", f"Bearer {TOKEN}"),)
    x = digits_eval[0][:1]

    def request(
        model: str = "meter", datatype: str = "FP32", raw: bytes | None = None, shape: tuple = (1, 8, 8, 1)
    ) -> Any:
        made = pb.ModelInferRequest(model_name=model)
        made.inputs.add(name="image", datatype=datatype, shape=list(shape))
        made.raw_input_contents.append(x.tobytes() if raw is None else raw)
        return made

    cases = [
        (request(), (), grpc.StatusCode.UNAUTHENTICATED, "bearer token is required"),
        (request("nope"), auth, grpc.StatusCode.NOT_FOUND, "no model 'nope'"),
        (request(datatype="INT8"), auth, grpc.StatusCode.INVALID_ARGUMENT, "input 'image' takes FP32, got INT8"),
        (request(raw=b"\0" * 12), auth, grpc.StatusCode.INVALID_ARGUMENT, "12 bytes of data for shape [1, 8, 8, 1]"),
        (request(shape=(1, 4, 16, 1)), auth, grpc.StatusCode.INVALID_ARGUMENT, "input 'image' takes (batch, 8, 8, 1)"),
        (request(raw=b"\0" * 300_000, shape=(1170, 8, 8, 1)), auth, grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ]  # fmt: skip
    for message, metadata, code, text in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(message, metadata=metadata)
        assert caught.value.code() == code and text in caught.value.details(), caught.value.details()
        assert stub.ServerReady(pb.ServerReadyRequest(), metadata=auth).ready
    reply = stub.ModelInfer(request(), metadata=auth)
    assert reply.outputs[0].shape == [1, 10]


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory: pytest.TempPathFactory, publisher: Path) -> Path:
    folder = tmp_path_factory.mktemp("slow")
    model = onnx_graphs.save(onnx_graphs.slow_mlp(depth=64), folder / "slow.onnx")
    return convert(ConvertOptions(
        model=model, profile=load_profile("x86-gateway"), output=folder / "slow.ekb", format="onnx",
        precision="fp32", name="slow", sign_key=publisher,
    )).output


def _slow_request(rows: int = 1024) -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(0).normal(size=(rows, 1024)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_a_full_queue_answers_503_and_a_slow_answer_504(slow_bundle: Path, tmp_path: Path) -> None:
    body, headers = _slow_request()
    with serving(str(slow_bundle), "--max-queue", "1", "--timeout", "0.2", log=tmp_path / "log") as server:
        statuses: list[int] = []

        def call() -> None:
            with httpx.Client(base_url=server.rest, timeout=30) as client:
                answer = client.post("/v2/models/slow/infer", content=body, headers=headers)
                statuses.append(answer.status_code)
                assert "error" in answer.json()

        threads = [threading.Thread(target=call) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert 503 in statuses and 504 in statuses and set(statuses) <= {503, 504}, statuses
        with httpx.Client(base_url=server.rest) as client:
            assert client.get("/v2/health/ready").status_code == 200
            small, small_headers = _slow_request(rows=1)
            deadline = time.monotonic() + 20  # the engine first finishes the work it had started
            while (
                status := client.post(
                    "/v2/models/slow/infer", content=small, headers=small_headers
                ).status_code
            ) == 503:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert status == 200


def test_sigterm_finishes_the_requests_in_flight(slow_bundle: Path, tmp_path: Path) -> None:
    body, headers = _slow_request()
    with serving(str(slow_bundle), log=tmp_path / "log") as server:
        answers: list[int] = []

        def call() -> None:
            with httpx.Client(base_url=server.rest, timeout=30) as client:
                answers.append(
                    client.post("/v2/models/slow/infer", content=body, headers=headers).status_code
                )

        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # the three are in flight: one runs, two wait in the queue
        assert server.stop() == 0
        for thread in threads:
            thread.join()
    assert answers == [200, 200, 200]


def test_off_loopback_needs_a_token_or_mutual_tls(slow_bundle: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "edgekit", "serve", str(slow_bundle), "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines()[-1] == (
        "error: --host 0.0.0.0 is reachable from the network: give --token-file FILE, or mutual TLS "
        "with --tls-cert, --tls-key and --tls-client-ca"
    )


def test_mutual_tls_over_rest_and_grpc(slow_bundle: Path, tmp_path: Path) -> None:
    """With --tls-client-ca, a client needs a certificate that CA signed, on both transports;
    and mutual TLS is enough to leave loopback."""
    import ssl

    from serve_helpers import make_pki

    from edgekit.runtime.serve import TLS, ServeConfig
    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2 as pb
    from edgekit.runtime.serve.server import check_exposure

    pki = make_pki(tmp_path)
    tls = (
        "--tls-cert",
        str(pki["server.pem"]),
        "--tls-key",
        str(pki["server.key"]),
        "--tls-client-ca",
        str(pki["ca.pem"]),
    )
    check_exposure(ServeConfig(host="0.0.0.0", tls=TLS(pki["server.pem"], pki["server.key"], pki["ca.pem"])))
    with serving(str(slow_bundle), *tls, log=tmp_path / "log") as server:
        assert server.rest.startswith("https://127.0.0.1:") and server.info["mutual_tls"] is True
        trusted = ssl.create_default_context(cafile=str(pki["ca.pem"]))
        with (
            httpx.Client(base_url=server.rest, verify=trusted) as anonymous,
            pytest.raises(httpx.TransportError),
        ):
            anonymous.get("/v2").raise_for_status()
        trusted.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
        with httpx.Client(base_url=server.rest, verify=trusted) as client:
            assert client.get("/v2/models/slow").json()["inputs"][0]["name"] == "x"
        root = pki["ca.pem"].read_bytes()
        anonymous_channel = grpc.secure_channel(server.grpc, grpc.ssl_channel_credentials(root))
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc_stub(anonymous_channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        credentials = grpc.ssl_channel_credentials(
            root, pki["client.key"].read_bytes(), pki["client.pem"].read_bytes()
        )
        assert (
            pb_grpc_stub(grpc.secure_channel(server.grpc, credentials))
            .ServerLive(pb.ServerLiveRequest())
            .live
        )


def pb_grpc_stub(channel: grpc.Channel) -> Any:
    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    return pb_grpc.GRPCInferenceServiceStub(channel)


def test_a_protobuf_older_than_the_stubs_is_one_line_naming_no_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    """tritonclient pins protobuf < 7: a client and edgekit serve in one venv met an internal error."""
    from google.protobuf import runtime_version

    from edgekit.core.errors import EdgekitError
    from edgekit.runtime.serve import proto, server

    header = (Path(proto.__file__).parent / "grpc_predict_v2_pb2.py").read_text().splitlines()[4]
    assert header == f"# Protobuf Python Version: {server.STUBS_PROTOBUF}"  # the message names the truth

    def too_old(*args: object) -> None:
        raise runtime_version.VersionError("Detected mismatched Protobuf Gencode/Runtime version")

    monkeypatch.setattr(runtime_version, "ValidateProtobufRuntimeVersion", too_old)
    for module in [m for m in sys.modules if m.startswith(("edgekit.runtime.serve.grpc_api", "edgekit.runtime.serve.proto."))]:
        parent, _, name = module.rpartition(".")
        monkeypatch.delitem(sys.modules, module)  # imported afresh, as in a new process
        monkeypatch.delattr(sys.modules[parent], name, raising=False)
    with pytest.raises(EdgekitError) as error:
        server._grpc_api()
    assert str(error.value).startswith(f"edgekit serve's gRPC stubs need protobuf {server.STUBS_PROTOBUF} or newer")
    assert str(error.value).endswith("or serve REST alone with --no-grpc")
