"""A running server follows the store: v2 installed and then rolled back under load, with no
failed request and every answer computed by the version it names; and concurrent requests are
gathered into batches that answer what serial calls answer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from serve_helpers import Server, json_input, rest_outputs, serving

from edgekit.cli import main
from edgekit.runtime import Model
from edgekit.runtime.store import Store
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto


def _until(condition: Callable[[], bool], what: str, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_install_and_rollback_under_load_fail_no_request(
    home: Path, meter: dict[int, Path], digits_eval: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    from edgekit.runtime.serve.proto import grpc_predict_v2_pb2 as pb

    x = digits_eval[0][:2]
    expected = {}
    for version, bundle in meter.items():
        with Model.load(bundle) as model:
            expected[version] = np.asarray(model.predict(x))
    assert not np.allclose(expected[1], expected[2], atol=1e-5)  # the versions can be told apart
    store = Store()
    store.install(meter[1])
    answers: list[tuple[int, np.ndarray]] = []
    failures: list[str] = []
    stop = threading.Event()

    def rest_client(server: Server) -> None:
        with httpx.Client(base_url=server.rest, timeout=30) as client:
            while not stop.is_set():
                answer = client.post(
                    "/v2/models/meter/infer", json={"inputs": [json_input("image", x, "FP32")]}
                )
                if answer.status_code != 200:
                    failures.append(answer.text)
                    continue
                document = answer.json()
                answers.append((int(document["model_version"]), next(iter(rest_outputs(document).values()))))

    def grpc_client(server: Server) -> None:
        stub = server.stub()
        request = pb.ModelInferRequest(model_name="meter")
        request.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        while not stop.is_set():
            try:
                reply = stub.ModelInfer(request)
            except Exception as exc:  # every failure is recorded
                failures.append(str(exc))
                continue
            got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(reply.outputs[0].shape)
            answers.append((int(reply.model_version), got))

    def ready(server: Server, version: int) -> bool:
        return httpx.get(f"{server.rest}/v2/models/meter/versions/{version}/ready").status_code == 200

    with serving("--max-batch", "4", "--max-delay-ms", "1", log=tmp_path / "serve.log") as server:
        threads = [threading.Thread(target=rest_client, args=(server,)) for _ in range(3)]
        threads.append(threading.Thread(target=grpc_client, args=(server,)))
        for thread in threads:
            thread.start()
        try:
            _until(lambda: len(answers) > 20, "answers from v1")
            store.install(meter[2])
            _until(lambda: answers[-1][0] == 2, "v2 to answer")
            assert ready(server, 2) and httpx.get(f"{server.rest}/v2/models/meter").json()["versions"] == [
                "2"
            ]
            swapped = len(answers)
            _until(lambda: len(answers) > swapped + 20, "more answers from v2")
            assert store.rollback("meter") == 1
            _until(lambda: answers[-1][0] == 1 and not ready(server, 2), "v1 to answer again")
            count = len(answers)
            _until(lambda: len(answers) > count + 20, "more answers from v1")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert failures == []
    versions = [version for version, _ in answers]
    assert versions[0] == 1 and 2 in versions and versions[-1] == 1
    for version, got in answers:
        np.testing.assert_allclose(got, expected[version], atol=1e-5)
    log = (tmp_path / "serve.log").read_text()
    assert "meter: now serving v2 (was v1)" in log and "meter: now serving v1 (was v2)" in log


def test_concurrent_requests_form_batches_that_answer_as_serial_calls(
    meter: dict[int, Path], digits_eval: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x = digits_eval[0][:32]
    with Model.load(meter[1]) as model:
        serial = [np.asarray(model.predict(x[i : i + 1])) for i in range(32)]
    config = tmp_path / "serve.toml"
    config.write_text("[batching]\nmax_delay_ms = 50\n\n[models.meter]\nmax_batch = 8\n")
    got: dict[int, np.ndarray] = {}
    with serving(str(meter[1]), "--config", str(config), log=tmp_path / "serve.log") as server:
        assert server.info["models"][0]["max_batch"] == 8
        barrier = threading.Barrier(32)

        def call(i: int) -> None:
            with httpx.Client(base_url=server.rest, timeout=30) as client:
                body = {"inputs": [json_input("image", x[i : i + 1], "FP32")]}
                barrier.wait()
                answer = client.post("/v2/models/meter/infer", json=body)
                got[i] = next(iter(rest_outputs(answer.json()).values()))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = httpx.get(f"{server.rest}/v2/models/meter/stats").json()
    for i in range(32):
        np.testing.assert_allclose(got[i], serial[i], atol=1e-5)
    sizes = {int(k): v for k, v in stats["requests_per_call"].items()}
    assert stats["requests"] == 32 == sum(size * calls for size, calls in sizes.items())
    assert stats["batched_calls"] > 0 and max(sizes) <= 8, stats


@pytest.mark.slow
@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (.ci/run installs it)")
def test_served_requests_are_reported_like_in_process_calls(
    meter: dict[int, Path], digits_eval: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """With --telemetry-config, every row served (batched or not) is counted in the model's
    reports, and SIGTERM flushes the open window before the server exits."""
    x = digits_eval[0][:12]
    assert _cli("fleet", "init", "served").exit_code == 0
    with LocalBroker(tmp_path / "broker") as broker:
        common = ["--broker", broker.url, "--fleet", "served"]
        out = tmp_path / "collected"
        assert _cli("fleet", "collect", *common, "--out", str(out), "--duration", "0.3").exit_code == 0
        config = tmp_path / "telemetry.toml"
        config.write_text(
            f'[telemetry]\nbroker = "{broker.url}"\nfleet = "served"\noutbox = "{tmp_path / "outbox.sqlite"}"\n'
        )
        args = (str(meter[1]), "--telemetry-config", str(config), "--max-batch", "4", "--max-delay-ms", "20")
        with serving(*args, log=tmp_path / "serve.log") as server:
            threads = [threading.Thread(target=_post, args=(server, x[i : i + 3])) for i in range(0, 12, 3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert server.stop() == 0
        collect = _cli("fleet", "collect", *common, "--out", str(out), "--idle", "2", "--json")
    assert collect.exit_code == 0, collect.output
    summary = json.loads(collect.output)
    assert summary["reports"] >= 1 and summary["inferences"] == 12


def _post(server: Server, x: np.ndarray) -> None:
    answer = httpx.post(
        f"{server.rest}/v2/models/meter/infer", json={"inputs": [json_input("image", x, "FP32")]}
    )
    assert answer.status_code == 200, answer.text


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))
