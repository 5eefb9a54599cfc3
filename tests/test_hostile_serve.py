"""``edgekit serve`` against hostile and heavy clients: numbers and shapes no engine can take,
JSON nested past the parser's depth, clients that hang up, send headers slowly, open more
connections than the server has file handles, or hold large bodies together. Each gets 400,
413, 503 or a closed connection and one log line; the server keeps serving, following the
store and reporting its readiness truthfully. Memory and open files are read from /proc."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from serve_helpers import Server, json_input, serving

from edgekit.cli import main
from edgekit.runtime.store import Store


@pytest.fixture
def stored(home: Path, meter: dict[int, Path], tmp_path: Path) -> Iterator[Server]:
    Store().install(meter[1])
    args = ("meter", "--header-timeout", "1", "--max-connections", "100", "--max-body-mb", "64",
            "--max-inflight-mb", "64")  # fmt: skip
    with serving(*args, log=tmp_path / "serve.log", nofile=256) as server:
        yield server


def _rss(server: Server, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _open_files(server: Server) -> int:
    return len(list(Path(f"/proc/{server.process.pid}/fd").iterdir()))


def _address(server: Server) -> tuple[str, int]:
    host, port = server.rest.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _good(x: np.ndarray) -> dict[str, object]:
    return {"inputs": [json_input("image", x, "FP32")]}


@pytest.mark.slow
def test_hostile_numbers_and_depths_get_400_and_one_line(
    stored: Server, digits_eval: tuple[np.ndarray, np.ndarray]
) -> None:
    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2 as pb

    x = digits_eval[0][:1]
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_parameters = b'{"inputs": [], "parameters": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"
    cases = [
        ("a huge dim", {"json": {"inputs": [{"name": "image", "shape": [0, 10**30], "datatype": "FP32", "data": []}]}}, "a shape is a list of integers"),
        ("100,001 dims", {"json": {"inputs": [{"name": "image", "shape": [1] * 100_001, "datatype": "FP32", "data": [0]}]}}, "dimensions, more than 32"),
        ("JSON 100k deep", {"content": deep}, "nested too deep"),
        ("parameters 50k deep", {"content": deep_parameters}, "nested too deep"),
        ("binary length in superscript digits", {"content": b"{}", "headers": {"Inference-Header-Content-Length": "²".encode()}}, "Inference-Header-Content-Length is"),
        ("binary length of 5,000 digits", {"content": b"{}", "headers": {"Inference-Header-Content-Length": "9" * 5000}}, "Inference-Header-Content-Length is 999"),
    ]  # fmt: skip
    with httpx.Client(base_url=stored.rest, timeout=60) as client:
        for what, request, message in cases:
            answer = client.post("/v2/models/meter/infer", **request)  # type: ignore[arg-type]
            assert answer.status_code == 400, (what, answer.text[:300])
            assert message in answer.json()["error"], (what, answer.json())
        for version in ("0", "²", "9" * 5000):
            answer = client.post(f"/v2/models/meter/versions/{version}/infer", json=_good(x))
            assert answer.status_code == 400 and "positive integer" in answer.json()["error"], version
            assert client.get(f"/v2/models/meter/versions/{version}/ready").status_code == 400
        assert client.post("/v2/models/meter/infer", json=_good(x)).status_code == 200
    stub = stored.stub()
    for version in ("0", "²"):
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(pb.ModelInferRequest(model_name="meter", model_version=version))
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, version
    with socket.create_connection(_address(stored)) as client:  # hangs up mid-body
        client.sendall(b"POST /v2/models/meter/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
    time.sleep(1.0)
    log = stored.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


@pytest.mark.slow
def test_slow_headers_and_too_many_connections_neither_stop_serving_nor_hot_swaps(
    stored: Server, meter: dict[int, Path], digits_eval: tuple[np.ndarray, np.ndarray]
) -> None:
    host, port = _address(stored)
    sockets = []
    for _ in range(400):  # past the server's 256 open files
        try:
            slow = socket.create_connection((host, port), timeout=5)
            slow.sendall(b"POST /v2/models/meter/infer HTTP/1.1\r\nHost: x\r\n")  # and no more
            sockets.append(slow)
        except OSError:
            pass
    assert _open_files(stored) < 256
    try:
        assert CliRunner().invoke(main, ["install", str(meter[2])]).exit_code == 0
        deadline = time.monotonic() + 30
        version = None
        with httpx.Client(base_url=stored.rest, timeout=10) as client:
            while version != "2" and time.monotonic() < deadline:
                try:
                    answer = client.post("/v2/models/meter/infer", json=_good(digits_eval[0][:1]))
                    version = answer.json().get("model_version") if answer.status_code == 200 else None
                except httpx.TransportError:
                    pass  # closed while the slow clients held every slot; their deadline frees them
                time.sleep(0.2)
            assert version == "2", stored.log.read_text()[-2000:]
            assert client.get("/v2/health/ready").status_code == 200
        closed = sum(1 for s in sockets if _closed_by_server(s))
        assert closed == len(sockets)  # each slow client was cut off at its header deadline
    finally:
        for s in sockets:
            s.close()
    assert "Too many open files" not in stored.log.read_text()


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(3)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_clients_holding_large_bodies_together_stay_within_the_inflight_budget(stored: Server) -> None:
    baseline = _rss(stored)
    held = 30 << 20
    statuses: list[bytes] = []

    def upload() -> None:
        with socket.create_connection(_address(stored), timeout=10) as client:
            client.sendall(b"POST /v2/models/meter/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % (held + 1024))  # fmt: skip
            try:
                for _ in range(30):
                    client.sendall(b" " * (1 << 20))
            except OSError:
                pass  # answered 503 and closed before the body
            try:
                statuses.append(client.recv(64))
            except OSError:
                statuses.append(b"")

    threads = [threading.Thread(target=upload) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    grown = _rss(stored, "VmHWM") - baseline
    assert grown < 150 << 20, f"{grown >> 20} MiB for 12 clients of 30 MiB each"
    assert sum(s.startswith(b"HTTP/1.1 503") for s in statuses) >= 9, statuses


def test_a_slow_decode_does_not_hold_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request whose body takes long to decode (38 MB of JSON took seconds) must not hold
    the others: the decode stands in as two seconds, and the liveness probe beside it must
    answer while it runs, in the same app and event loop (no timing is asserted, only order)."""
    import asyncio
    from types import SimpleNamespace

    from edgekit.runtime.serve import rest
    from edgekit.runtime.serve.protocol import Limits, ProtocolError

    def slow_decode(*args: object) -> None:
        time.sleep(2.0)
        raise ProtocolError(400, "decoded at last")

    monkeypatch.setattr(rest, "parse_rest", slow_decode)
    repository = SimpleNamespace(get=lambda name, version=None: SimpleNamespace(name=name, inputs=[]),
                                 names=lambda: ["m"], following=lambda: True)  # fmt: skip
    app = rest.build_app(repository, Limits(), 30.0, None)  # type: ignore[arg-type]
    order: list[str] = []

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:

            async def big() -> None:
                answer = await client.post("/v2/models/m/infer", content=b'{"inputs": []}')
                order.append(f"big {answer.status_code}")

            async def live() -> None:
                await asyncio.sleep(0.3)
                answer = await client.get("/v2/health/live")
                order.append(f"live {answer.status_code}")

            await asyncio.gather(big(), live())

    asyncio.run(run())
    assert order == ["live 200", "big 400"]


def test_a_version_loading_on_first_request_holds_no_other_request(
    home: Path, meter: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests by name (v1, loaded) keep being answered while a first request for v2 loads
    it: the load stands in for a large model by waiting until the test has seen 30 answers to
    v1, so a load on the event loop would hold them all (the test would time out, not pass).
    Two first requests for v2 load it once. The p99 of the v1 requests is in the message."""
    import asyncio

    from edgekit.runtime.model import Model
    from edgekit.runtime.serve import rest
    from edgekit.runtime.serve.protocol import Limits
    from edgekit.runtime.serve.server import ServeConfig, open_repository

    store = Store()
    store.install(meter[1])
    store.install(meter[2])
    store.activate("meter", 1)
    release, loads = threading.Event(), []
    real_load = Model.load

    def large_load(where: str, version: int | None = None, **kwargs: object) -> Model:
        if version == 2:
            loads.append(version)
            assert release.wait(30), "the v1 requests never got through"
        return real_load(where, version=version, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Model, "load", large_load)
    repository = open_repository(ServeConfig(models=("meter",), grpc_port=None))
    app = rest.build_app(repository, Limits(), 60.0, None)
    x = np.zeros((1, 8, 8, 1), np.float32)
    latencies: list[float] = []

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            first = [asyncio.create_task(client.post("/v2/models/meter/versions/2/infer", json=_good(x)))
                     for _ in range(2)]  # fmt: skip
            try:
                while len(latencies) < 30:
                    started = time.perf_counter()
                    answer = await asyncio.wait_for(client.post("/v2/models/meter/infer", json=_good(x)), 20)
                    assert answer.status_code == 200, answer.text
                    latencies.append(time.perf_counter() - started)
            finally:
                release.set()
            return [(await task).status_code for task in first]

    try:
        statuses = asyncio.run(run())
    finally:
        repository.close()
    p99 = sorted(latencies)[int(0.99 * len(latencies))]
    assert statuses == [200, 200], f"v1 p99 {p99 * 1e3:.1f} ms while v2 loaded"
    assert loads == [2], "two first requests for v2 loaded it twice"
