"""The agent and the operator's tools against anyone who can publish to the broker, with no
key: junk on every topic the agent subscribes to, deep JSON, strangers' chunks, and bundle
servers that drop, trickle or redirect. The agent runs in its own process, as on a device,
and must still act on a valid signed document afterwards."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rollout_helpers import Device, make_bundles, make_device, until

from edgekit.core.validation import updated
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto

pytestmark = [
    pytest.mark.skipif(find_mosquitto() is None, reason="needs Mosquitto (apt-get install mosquitto)"),
    pytest.mark.slow,  # an agent process, a broker and bundle servers per test: about 45 s in all
]
FLEET = "hostile-fleet"
GROUP = "line-1"
DEEP = b"[" * 40000


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, publisher: Path) -> dict[int, Path]:
    return make_bundles(tmp_path_factory.mktemp("bundles"), publisher, {1: False, 2: False})


@pytest.fixture
def fleet(tmp_path: Path, publisher: Path, bundles: dict[int, Path]) -> Iterator[dict[str, Any]]:
    from edgekit.fleet import init_fleet
    from edgekit.rollout.fleet import connect
    from edgekit.runtime.telemetry.broker import Broker

    keys = init_fleet(FLEET, tmp_path / "keys")
    home = make_device(tmp_path / "device", publisher, keys, FLEET, bundles[1])
    with LocalBroker(tmp_path / "broker") as broker:
        device = Device(home, "hub-1", GROUP).start(broker.url, FLEET, workload=False, heartbeat_s=1.0)
        operator = connect(Broker.parse(broker.url), FLEET)
        try:
            until(lambda: _status(operator) is not None, "the agent's first status", 30)
            yield {"device": device, "operator": operator, "broker": broker}
        finally:
            operator.stop()
            device.stop()


def _status(operator: Any) -> Any:
    from edgekit.rollout.fleet import FleetState, snapshot

    state = snapshot(operator, FleetState(FLEET), quiet_s=0.2, most_s=1.0)
    return next(iter(state.agents.values()), None)


def _document(bundle: Path, serial: int, source: Any, phase: str = "promoted") -> Any:
    from edgekit.core.deployment import BundleRef, Deployment

    data = bundle.read_bytes()
    model = BundleRef(name="meter", version=2, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                      sources=(source,))
    return Deployment(fleet=FLEET, group=GROUP, rollout=f"r{serial}", serial=serial, issued=0.0, phase=phase,
                      previous=1, model=model)


def _send(operator: Any, document: Any, key: Path) -> None:
    from edgekit.core.signing import load_signing_key
    from edgekit.rollout.fleet import publish_document

    publish_document(operator, document, load_signing_key(key))


def _junk(operator: Any, topic: str, payload: bytes, retain: bool = False) -> None:
    from edgekit.rollout.fleet import publish

    publish(operator, topic, payload, retain=retain)


def _settled(operator: Any, condition: Any, what: str, within_s: float = 60) -> Any:
    found: list[Any] = []

    def check() -> bool:
        status = _status(operator)
        found[:] = [status]
        return status is not None and condition(status)

    until(check, what, within_s)
    return found[0]


def test_junk_on_every_topic_stops_nothing_and_a_signed_document_still_installs(
    fleet: dict[str, Any], bundles: dict[int, Path], publisher: Path
) -> None:
    from edgekit.core.deployment import Source, chunk_topic, rollout_topic
    from edgekit.rollout.fleet import publish_chunks

    operator, device = fleet["operator"], fleet["device"]
    data = bundles[2].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    topic = chunk_topic(FLEET, sha)
    _junk(operator, rollout_topic(FLEET, GROUP), DEEP)  # live, not retained
    _junk(operator, rollout_topic(FLEET, None), b'{"document": "%%%", "signature": {}}')
    _junk(operator, rollout_topic(FLEET, "other"), DEEP, retain=True)
    status = _settled(operator, lambda s: s.refused.get("malformed", 0) >= 3, "junk to be refused as malformed")
    assert status.phase == "idle" and device.process.poll() is None
    for index, payload in (("²", b"x"), ("-1", b"x"), ("99999999999", b"x"), ("03", b"\xff" * 4096)):
        _junk(operator, f"{topic}/{index}", payload, retain=True)  # beside the real chunks, for good
    _send(operator, _document(bundles[2], 10, Source(kind="mqtt", topic=topic, chunk=4096)), publisher)
    _settled(operator, lambda s: s.phase == "downloading", "the agent to wait for chunks")
    _junk(operator, f"{topic}/1", b"junk")  # a stranger's chunk before the real one
    publish_chunks(operator, FLEET, data, sha, chunk=4096)
    status = _settled(operator, lambda s: s.phase == "active" and s.running == 2, "v2 despite the junk")
    assert device.active() == 2 and status.reason is None
    assert status.refused.get("bad_chunk", 0) >= 5, status.refused
    _junk(operator, rollout_topic(FLEET, GROUP), DEEP)
    status = _settled(operator, lambda s: s.refused.get("malformed", 0) >= 4, "more junk refused")
    assert status.phase == "active"  # garbage never marks a healthy agent failed
    assert "Caught exception" not in device.log() and "Traceback" not in device.log()


def test_a_trickle_is_dropped_at_the_minimum_rate(bundles: dict[int, Path]) -> None:
    from edgekit.core.deployment import BundleRef, Source
    from edgekit.runtime.agent.fetch import FetchError, Pace, Stop, fetch_http

    data = bundles[2].read_bytes()
    server, url = _serve(_trickling(data))
    bundle = BundleRef(name="meter", version=2, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                       sources=(Source(kind="http", url=url),))
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match="below 100 B/s") as failed:
            fetch_http(bundle.sources[0], bundle, lambda done: None, Stop(threading.Event()), attempts=2,
                       pace=Pace(window_s=1.5, min_bytes_per_s=100))
    finally:
        server.shutdown()
    assert not failed.value.permanent and time.monotonic() - started < 20


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[_Server, str]:
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/bundle.ekb"


def _dropping(data: bytes, requests: list[str | None]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # the stdlib's name
            wanted = self.headers.get("Range")
            requests.append(wanted)
            start = int(wanted.split("=")[1].rstrip("-")) if wanted else 0
            self.send_response(206 if wanted else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start : start + len(data) // 2] if not wanted else data[start:])
            self.wfile.flush()
            self.close_connection = True

    return Handler


def _trickling(data: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for byte in data[:200]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(1.0)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent hung up, as it should

    return Handler


def _redirecting() -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()

    return Handler


def test_a_dropped_download_resumes_with_a_range_request(
    fleet: dict[str, Any], bundles: dict[int, Path], publisher: Path
) -> None:
    from edgekit.core.deployment import Source

    requests: list[str | None] = []
    server, url = _serve(_dropping(bundles[2].read_bytes(), requests))
    try:
        _send(fleet["operator"], _document(bundles[2], 20, Source(kind="http", url=url)), publisher)
        _settled(fleet["operator"], lambda s: s.phase == "active" and s.running == 2, "v2 after a resume")
    finally:
        server.shutdown()
    assert requests[0] is None and requests[1] == f"bytes={bundles[2].stat().st_size // 2}-"


def test_a_trickling_server_neither_freezes_the_agent_nor_holds_back_a_rollback(
    fleet: dict[str, Any], bundles: dict[int, Path], publisher: Path
) -> None:
    from edgekit.core.deployment import Source

    operator = fleet["operator"]
    server, url = _serve(_trickling(bundles[2].read_bytes()))
    try:
        _send(operator, _document(bundles[2], 30, Source(kind="http", url=url)), publisher)
        first = _settled(operator, lambda s: s.phase == "downloading", "the slow download to start")
        time.sleep(2.5)  # the device's heartbeat is 1 s here: its status keeps coming
        later = _settled(operator, lambda s: s.time > first.time + 1.5, "a heartbeat during the download", 10)
        assert later.phase == "downloading"
        rollback = updated(_document(bundles[2], 31, Source(kind="http", url=url), phase="rolled-back"),
                           model=updated(_document(bundles[2], 31, Source(kind="http", url=url)).model,
                                         version=1))  # fmt: skip
        _send(operator, rollback, publisher)
        status = _settled(operator, lambda s: s.serial == 31 and s.phase == "active", "the rollback at once", 20)
    finally:
        server.shutdown()
    assert status.running == 1 and fleet["device"].active() == 1


def test_a_redirect_to_a_file_url_fails_for_good(
    fleet: dict[str, Any], bundles: dict[int, Path], publisher: Path
) -> None:
    from edgekit.core.deployment import Source

    server, url = _serve(_redirecting())
    try:
        _send(fleet["operator"], _document(bundles[2], 40, Source(kind="http", url=url)), publisher)
        status = _settled(fleet["operator"], lambda s: s.serial == 40 and s.phase == "failed", "a final refusal")
    finally:
        server.shutdown()
    assert "file:///etc/passwd" in (status.reason or "") and "retrying" not in (status.reason or "")
    assert fleet["device"].active() == 1


def test_junk_on_the_rollout_topics_does_not_disable_status_or_abort(
    fleet: dict[str, Any], bundles: dict[int, Path], publisher: Path
) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main
    from edgekit.core.deployment import Source, rollout_topic
    from edgekit.rollout.fleet import FleetState

    operator, url = fleet["operator"], fleet["broker"].url
    canary = _document(bundles[2], 50, Source(kind="http", url="http://127.0.0.1:9/none"), phase="canary")
    _send(operator, canary, publisher)
    _junk(operator, rollout_topic(FLEET, GROUP), DEEP, retain=True)  # the retained document is gone
    _junk(operator, rollout_topic(FLEET, "other"), DEEP, retain=True)
    runner = CliRunner()
    status = runner.invoke(main, ["fleet", "rollout", "status", "--broker", url, "--fleet", FLEET, "--json"])
    assert status.exit_code == 0, status.output
    abort = runner.invoke(main, ["fleet", "rollout", "abort", "--broker", url, "--fleet", FLEET,
                                 "--group", GROUP, "--key", str(publisher)])  # fmt: skip
    assert abort.exit_code == 0, abort.output
    seen = _settled(operator, lambda s: (s.serial or 0) > 50, "the agent to read the abort")
    assert seen.phase != "failed" and fleet["device"].active() == 1
    state = FleetState(FLEET)
    assert state.take(rollout_topic(FLEET, GROUP), DEEP) is None and state.skipped["rollout"] == 1
