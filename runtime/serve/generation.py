"""The generate extension, as Triton defines it, for decoder bundles:

- ``POST /v2/models/{m}/generate``: ``{"text_input": "...", "parameters": {...}}`` in,
  ``{"model_name", "model_version", "text_output"}`` out, in one JSON answer;
- ``POST /v2/models/{m}/generate_stream``: the same request, answered with server-sent
  events, one ``data: {... "text_output": piece}`` event per piece of text.

Parameters: ``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``,
``seed``, ``stop`` (a string or a list). Each request generates on its own cache, so two
clients never see each other's tokens. The loop runs one step at a time off the event loop,
and a client that disconnects stops its generation before the next step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Generator
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
        pieces = _pieces(served, prompt, sampling, Generation())
        text = "".join([piece async for piece in _stepped(pieces, request)])
        return JSONResponse(_answer(served, text))

    async def generate_stream(request: Request) -> Response:
        served, prompt, sampling = await _request(repository, request)
        pieces = _pieces(served, prompt, sampling, Generation())

        async def events() -> AsyncIterator[bytes]:
            async for piece in _stepped(pieces, request):
                yield f"data: {json.dumps(_answer(served, piece))}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    return [("generate", generate, "POST"), ("generate_stream", generate_stream, "POST")]


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


def _pieces(served: Served, prompt: str, sampling: Sampling, result: Generation) -> Generator[str]:
    return served.model.text_generator.stream(prompt, sampling, result)


async def _stepped(pieces: Generator[str], request: Request) -> AsyncIterator[str]:
    """Each piece, computed off the event loop one step at a time; a client gone stops it."""
    while True:
        try:
            piece = await asyncio.to_thread(next, pieces, None)
        except EdgekitError as exc:
            raise ProtocolError(400, str(exc)) from None
        if piece is None:
            return
        yield piece
        if await request.is_disconnected():
            pieces.close()
            return


def _answer(served: Served, text: str) -> dict[str, Any]:
    return {"model_name": served.name, "model_version": str(served.version), "text_output": text}
