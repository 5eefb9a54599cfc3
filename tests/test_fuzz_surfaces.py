"""Property-based fuzzing (Hypothesis) of the parsers the newest surfaces expose to anyone on
the broker or the network: the deployment document and the bundle chunks' topics (the
agent), the Open Inference Protocol's REST bodies and headers (serve), and the dashboard's
numbers. Each input ends in the surface's own typed error or a valid result, never another
exception. The budget is the suite's (see conftest.py)."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from edgekit.core.deployment import BundleRef, DocumentError, Source, open_document
from edgekit.core.errors import EdgekitError
from edgekit.core.validation import ascii_int
from edgekit.runtime.agent.fetch import Chunks
from edgekit.runtime.serve.protocol import Limits, ProtocolError, TensorSpec, parse_rest

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
deep = st.integers(1, 60_000).map(lambda n: b"[" * n + b"]" * (n if n % 2 else 0))
SPECS = {"x": TensorSpec("x", "FP32", (-1, 4))}
BUNDLE = BundleRef(name="m", version=2, sha256="0" * 64, size=10_000,
                   sources=(Source(kind="mqtt", topic="edgekit/f/bundles/s", chunk=4096),))  # fmt: skip


def _never_trusted(raw: bytes, signature: bytes, where: str) -> str:
    raise DocumentError(f"{where}: untrusted")


@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()), deep))
def test_any_bytes_on_a_rollout_topic_are_a_document_error(payload: bytes) -> None:
    try:
        open_document(payload, _never_trusted, "fuzz")
    except EdgekitError:
        pass


@given(st.text(max_size=30), st.binary(max_size=5000))
def test_any_chunk_topic_and_payload_is_kept_or_dropped(index: str, payload: bytes) -> None:
    chunks = Chunks(BUNDLE.sources[0], BUNDLE)
    kept = chunks.offer(f"edgekit/f/bundles/s/{index}", payload)
    assert kept == (index in chunks_indexes(chunks) and len(payload) == chunks_expected(chunks, int(index)))


def chunks_indexes(chunks: Chunks) -> set[str]:
    return {str(i) for i in range(chunks.count)}


def chunks_expected(chunks: Chunks, index: int) -> int:
    return chunks.chunk if index < chunks.count - 1 else chunks.bundle.size - chunks.chunk * index


@given(st.one_of(st.binary(max_size=400), json_values.map(lambda v: json.dumps({"inputs": [v]}).encode()), deep),
       st.one_of(st.none(), st.text(max_size=30)))  # fmt: skip
def test_any_rest_body_and_header_length_is_a_protocol_error_or_a_request(body: bytes, length: str | None) -> None:
    try:
        request = parse_rest(body, length, SPECS, Limits(max_elements=10_000))
    except ProtocolError as exc:
        assert exc.status in (400, 413)
    else:
        assert all(isinstance(a, np.ndarray) for a in request.inputs.values())


@given(st.text(max_size=40))
def test_a_number_from_text_is_plain_ascii_or_none(text: str) -> None:
    value = ascii_int(text)
    assert value is None or (str(value) == text and value >= 0)


def test_chunks_may_be_offered_from_another_thread() -> None:
    chunks = Chunks(BUNDLE.sources[0], BUNDLE)
    threads = [threading.Thread(target=chunks.offer, args=(f"edgekit/f/bundles/s/{i}", b"x" * 4096)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(chunks.parts) == [0, 1]


def test_a_callback_that_raises_is_one_log_line_not_a_dead_network_thread(caplog: Any) -> None:
    from paho.mqtt.client import MQTTMessage

    from edgekit.runtime.telemetry.broker import Broker

    client = Broker.parse("mqtt://127.0.0.1:1").client("guarded")

    def broken(client: object, userdata: object, message: object) -> None:
        raise ValueError("invalid literal for int() with base 10: '²'")

    client.on_message = broken
    message = MQTTMessage(topic=b"edgekit/f/bundles/s/\xc2\xb2")
    with caplog.at_level("ERROR", "edgekit.mqtt"):
        client._handle_on_message(message)  # what paho's network thread calls
    assert [r.getMessage() for r in caplog.records] == [
        "mqtt: Caught exception in on_message: invalid literal for int() with base 10: '²'"
    ]
