"""What ``edgekit serve`` costs over ``Model.predict`` in-process, and what batching buys.

    python benchmarks/serve.py [--models digits,mobilenetv2] [--seconds 3] [--clients 1,8,32]

For each model (ONNX fp32 for an x86 gateway): ``Model.predict`` called in this process, and
``edgekit serve`` (a real process on loopback) called over REST with JSON, REST with the
binary tensor data extension, and gRPC, first without dynamic batching and then with
``--max-batch 32`` and ``--max-delay-ms`` 2 and 0. Each cell: p50 and p99 latency per request (batch 1),
and requests per second, at 1, 8 and 32 concurrent clients (threads, each with its own
connection). Clients and server share this machine's cores, as on a device. Request bodies
are encoded once, so the numbers are the server's costs, not the client's JSON encoder.
Goals: at most 0.5 ms overhead at p50 and 1 client for REST binary and gRPC; with batching,
at least 2x the unbatched throughput at 32 clients on MobileNetV2.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from convert_quality import make_digits, make_mobilenetv2  # noqa: E402
from serve_helpers import serving  # noqa: E402

BATCHING = (None, "2", "0")
"""Off, then --max-batch 32 with --max-delay-ms 2 and 0 (0: only what queued while the engine ran)."""
MAKERS = {"digits": make_digits, "mobilenetv2": make_mobilenetv2}
Caller = Callable[[], None]


def build(name: str, folder: Path) -> tuple[Path, np.ndarray]:
    from edgekit.convert import ConvertOptions, convert
    from edgekit.core.profiles import load_profile

    paths = MAKERS[name](folder)
    with np.load(paths["calibration"]) as data:
        sample = data["x"][:1].astype(np.float32)
    result = convert(ConvertOptions(
        model=paths["model"], profile=load_profile("x86-gateway"), format="onnx", precision="fp32",
        output=folder / f"{name}.ekb", name=name,
    ))
    return result.output, sample


def drive(make: Callable[[], Caller], clients: int, seconds: float) -> tuple[float, float, float]:
    """p50 and p99 latency (ms) and requests per second of ``clients`` threads for ``seconds``."""
    times: list[list[float]] = [[] for _ in range(clients)]
    callers = [make() for _ in range(clients)]
    for call in callers:
        for _ in range(5):
            call()
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    failures: list[BaseException] = []

    def loop(index: int) -> None:
        call, mine = callers[index], times[index]
        start.wait()
        try:
            while not stop.is_set():
                began = time.perf_counter()
                call()
                mine.append(time.perf_counter() - began)
        except Exception as exc:  # reported after the run, never silently dropped
            failures.append(exc)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{len(failures)} of {clients} clients failed: {failures[0]!r}")
    every = np.concatenate([np.asarray(t) for t in times]) * 1000
    return float(np.percentile(every, 50)), float(np.percentile(every, 99)), len(every) / elapsed


def in_process(bundle: Path, x: np.ndarray) -> Callable[[], Caller]:
    from edgekit.runtime import Model

    model = Model.load(bundle, warmup=True, allow_unsigned=True)
    return lambda: lambda: model.predict(x)


def engine_rows_per_second(bundle: Path, x: np.ndarray, seconds: float) -> dict[int, float]:
    """What batching can buy at most: the engine alone, rows per second at batch 1, 8 and 32."""
    from edgekit.runtime import Model

    found = {}
    with Model.load(bundle, allow_unsigned=True) as model:
        for batch in (1, 8, 32):
            stacked = np.repeat(x, batch, axis=0)
            model.predict(stacked)
            calls, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds:
                model.predict(stacked)
                calls += 1
            found[batch] = calls * batch / (time.perf_counter() - began)
    return found


def rest(url: str, name: str, x: np.ndarray, binary: bool) -> Callable[[], Caller]:
    """A REST client on the standard library's http.client: one keep-alive connection, the
    request in one write, so that the client's own cost stays small next to the server's."""
    from urllib.parse import urlsplit

    tensor = {"name": name, "shape": list(x.shape), "datatype": "FP32"}
    headers = {"content-type": "application/json"}
    if binary:
        header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                             "parameters": {"binary_data_output": True}}).encode()
        body = header + x.tobytes()
        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        }
    else:
        body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    where = urlsplit(url)

    def make() -> Caller:
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)

        def call() -> None:
            try:
                connection.request("POST", where.path, body=body, headers=headers)
                answer = connection.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected):
                # the server closed a connection idle past its keep-alive (5 s), as any
                # client sees; warming 32 clients one after another can take that long
                connection.close()
                connection.request("POST", where.path, body=body, headers=headers)
                answer = connection.getresponse()
            content = answer.read()
            if answer.status != 200:
                raise RuntimeError(content.decode())

        return call

    return make


def grpc_caller(address: str, model: str, name: str, x: np.ndarray) -> Callable[[], Caller]:
    import grpc

    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2 as pb
    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())

    def make() -> Caller:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        return lambda: stub.ModelInfer(request)

    return make


def measure(
    name: str, bundle: Path, x: np.ndarray, clients: list[int], seconds: float, folder: Path
) -> list[dict[str, Any]]:
    import httpx

    rows = [{"model": name, "path": "Model.predict", "batching": "-", "cells": {
        n: drive(in_process(bundle, x), n, seconds) for n in clients}}]  # fmt: skip
    for batching in BATCHING:
        flags = ("--max-batch", "32", "--max-delay-ms", batching) if batching else ()
        with serving(
            str(bundle), "--allow-unsigned", "--no-access-log", *flags, log=folder / f"{name}-{batching}.log"
        ) as server:
            url = f"{server.rest}/v2/models/{name}/infer"
            input_name = httpx.get(f"{server.rest}/v2/models/{name}").json()["inputs"][0]["name"]
            paths = {
                "REST JSON": rest(url, input_name, x, binary=False),
                "REST binary": rest(url, input_name, x, binary=True),
                "gRPC": grpc_caller(server.grpc, name, input_name, x),
            }
            for path, make in paths.items():
                cells = {n: drive(make, n, seconds) for n in clients}
                rows.append(
                    {
                        "model": name,
                        "path": path,
                        "batching": f"32, {batching} ms" if batching else "off",
                        "cells": cells,
                    }
                )
            if not batching:
                floors.update(floor(server.rest, server.grpc, seconds))
    return rows


floors: dict[str, float] = {}
"""p50 ms of a call that runs no model (REST GET /v2/health/live, gRPC ServerLive): the
transport's own round trip, client included."""


def floor(rest_url: str, grpc_address: str, seconds: float) -> dict[str, float]:
    from urllib.parse import urlsplit

    import grpc

    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2 as pb
    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    where = urlsplit(rest_url)

    def make_rest() -> Caller:
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)

        def call() -> None:
            connection.request("GET", "/v2/health/live")
            connection.getresponse().read()

        return call

    def make_grpc() -> Caller:
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_address))
        return lambda: stub.ServerLive(pb.ServerLiveRequest())

    return {"REST": drive(make_rest, 1, seconds)[0], "gRPC": drive(make_grpc, 1, seconds)[0]}


def table(rows: list[dict[str, Any]], clients: list[int]) -> str:
    head = ["model", "path", "batching", "p50 ms", "p99 ms", "overhead p50"] + [
        f"req/s @{n}" for n in clients
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = {row["model"]: row["cells"][clients[0]][0] for row in rows if row["path"] == "Model.predict"}
    for row in rows:
        p50, p99, _ = row["cells"][clients[0]]
        overhead = "-" if row["path"] == "Model.predict" else f"{p50 - base[row['model']]:+.2f} ms"
        rates = [f"{row['cells'][n][2]:.0f}" for n in clients]
        lines.append(
            "| "
            + " | ".join(
                [row["model"], row["path"], row["batching"], f"{p50:.2f}", f"{p99:.2f}", overhead, *rates]
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mobilenetv2")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,8,32")
    args = parser.parse_args()
    clients = [int(n) for n in args.clients.split(",")]
    rows: list[dict[str, Any]] = []
    engines: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            bundle, x = build(name, folder)
            rows += measure(name, bundle, x, clients, args.seconds, folder)
            engines[name] = engine_rows_per_second(bundle, x, args.seconds)
    counts = ", ".join(map(str, clients))
    print(f"latency at {clients[0]} client, batch 1 per request; throughput at {counts} clients")
    print(table(rows, clients))
    print(
        "a call that runs no model, p50 at 1 client: "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in floors.items())
    )
    for name, rates in engines.items():
        alone = ", ".join(f"batch {b} {r:.0f} rows/s" for b, r in rates.items())
        print(f"{name}, the engine alone: {alone}")
    for name in args.models.split(","):
        cells = {(r["path"], r["batching"]): r["cells"][clients[-1]][2] for r in rows if r["model"] == name}
        for path in ("REST binary", "gRPC"):
            gains = ", ".join(f"{cells[path, f'32, {d} ms'] / cells[path, 'off']:.2f}x at {d} ms"
                              for d in BATCHING if d)
            print(f"{name} {path}: batching gives {gains} the unbatched throughput at {clients[-1]} clients")


if __name__ == "__main__":
    main()
