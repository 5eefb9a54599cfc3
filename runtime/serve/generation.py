"""The generate extension, as Triton defines it, for decoder bundles:

- ``POST /v2/models/{m}/generate``: ``{"text_input": "...", "parameters": {...}}`` in,
  ``{"model_name", "model_version", "text_output"}`` out, in one JSON answer;
- ``POST /v2/models/{m}/generate_stream``: the same request, answered with server-sent
  events, one ``data: {... "text_output": piece}`` event per piece of text.

Parameters: ``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``,
``seed``, ``stop`` (a string or a list). Each request generates on its own cache, so two
clients never see each other's tokens. The loop runs one step at a time off the event loop,
and a client that disconnects stops its generation after the step in flight.
``/v2/models/{m}/stats`` counts each model's generations, tokens and stop reasons.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgekit.core.errors import EdgekitError
from edgekit.runtime.generate import Generation, Sampling
from edgekit.runtime.serve.protocol import ProtocolError
from edgekit.runtime.serve.repository import Repository, Served

PARAMETERS = {
    "max_tokens": "max_new_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
    "repetition_penalty": "repetition_penalty", "seed": "seed", "stop": "stop",
}  # fmt: skip
MAX_BODY = 1 << 20


def routes(repository: Repository) -> list[tuple[str, Any, str]]:
    """(path suffix, handler, method) for each model base path."""

    async def generate(request: Request) -> Response:
        served, prompt, sampling = await _request(repository, request)
        steps = _Steps(served, prompt, sampling)
        text = "".join([piece async for piece in steps.pieces(request)])
        return JSONResponse(_answer(served, text))

    async def generate_stream(request: Request) -> Response:
        served, prompt, sampling = await _request(repository, request)
        steps = _Steps(served, prompt, sampling)

        async def events() -> AsyncIterator[bytes]:
            async for piece in steps.pieces(request):
                yield f"data: {json.dumps(_answer(served, piece))}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    return [("generate", generate, "POST"), ("generate_stream", generate_stream, "POST")]


class _Counts:
    """One served model's generations so far, for its stats."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generations, self.tokens, self.stops = 0, 0, Counter[str]()

    def add(self, result: Generation) -> None:
        with self.lock:
            self.generations += 1
            self.tokens += len(result.tokens)
            self.stops[result.stop_reason] += 1

    def json(self) -> dict[str, Any]:
        with self.lock:
            return {"generations": self.generations, "generated_tokens": self.tokens,
                    "stop_reasons": dict(self.stops)}  # fmt: skip


_COUNTS: weakref.WeakKeyDictionary[Served, _Counts] = weakref.WeakKeyDictionary()


def stats(served: Served) -> dict[str, Any]:
    """A decoder's generation counts for ``/stats``; nothing for other models."""
    if served.model.manifest.generation is None:
        return {}
    return {"generation": _COUNTS.setdefault(served, _Counts()).json()}


class _Steps:
    """One request's generation, stepped off the event loop one piece at a time. However the
    request ends (done, refused, or the client gone), the generation is closed after the step
    in flight, and counted."""

    def __init__(self, served: Served, prompt: str, sampling: Sampling) -> None:
        self.result = Generation()
        self._counts = _COUNTS.setdefault(served, _Counts())
        self._stream = served.model.text_generator.stream(prompt, sampling, self.result)
        self._lock = threading.Lock()
        """Held while a step runs: closing waits for it (a running generator cannot close)."""

    def _next(self) -> str | None:
        with self._lock:
            return next(self._stream, None)

    def _close(self) -> None:
        with self._lock:
            self._stream.close()
        if self.result.prompt_tokens:
            self._counts.add(self.result)

    async def pieces(self, request: Request) -> AsyncIterator[str]:
        try:
            while True:
                try:
                    piece = await asyncio.to_thread(self._next)
                except EdgekitError as exc:
                    raise ProtocolError(400, str(exc)) from None
                if piece is None:
                    return
                yield piece
                if await request.is_disconnected():
                    return
        finally:  # also when the server cancels us for a client gone: the step in flight ends first
            threading.Thread(target=self._close, name="edgekit-generation-close", daemon=True).start()


async def _request(repository: Repository, request: Request) -> tuple[Served, str, Sampling]:
    params = request.path_params
    served = await asyncio.to_thread(repository.get, params["name"], params.get("version"))
    if served.model.manifest.generation is None:
        raise ProtocolError(400, f"{served.name} does not generate text: use /v2/models/{served.name}/infer")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ProtocolError(413, f"the request is over {MAX_BODY} bytes")
    try:
        request_json = json.loads(body)
    except ValueError:
        raise ProtocolError(400, "the request body is not JSON") from None
    if not isinstance(request_json, dict) or not isinstance(request_json.get("text_input"), str):
        raise ProtocolError(400, 'give the prompt as {"text_input": "...", "parameters": {...}}')
    given = request_json.get("parameters") or {}
    extra = set(request_json) - {"text_input", "parameters", "id"}
    unknown = sorted((set(given) - set(PARAMETERS)) | extra) if isinstance(given, dict) else ["parameters"]
    if unknown:
        raise ProtocolError(400, f"unknown parameter '{unknown[0]}': use {', '.join(PARAMETERS)}")
    settings: dict[str, Any] = {PARAMETERS[k]: v for k, v in given.items()}
    if isinstance(settings.get("stop"), str):
        settings["stop"] = [settings["stop"]]
    try:
        sampling = Sampling.of(settings)
        sampling.check(served.model.manifest.generation.vocab_size)
        served.model.text_generator.check_prompt(request_json["text_input"])
    except (TypeError, ValueError, EdgekitError) as exc:
        raise ProtocolError(400, str(exc)) from None
    return served, request_json["text_input"], sampling


def _answer(served: Served, text: str) -> dict[str, Any]:
    return {"model_name": served.name, "model_version": str(served.version), "text_output": text}
