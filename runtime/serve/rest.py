"""The Open Inference Protocol over HTTP/REST, as a Starlette app.

Every error is the protocol's ``{"error": "..."}`` with its status; an unexpected exception
is logged here with its traceback and answered 500 with one line, never the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import edgekit
from edgekit.core.validation import ascii_int
from edgekit.runtime.serve import generation
from edgekit.runtime.serve.protocol import (
    HEADER_LENGTH,
    Limits,
    ProtocolError,
    encode_rest,
    parse_rest,
    select_outputs,
)
from edgekit.runtime.serve.repository import Repository

log = logging.getLogger("edgekit.serve")
access = logging.getLogger("edgekit.serve.access")

EXTENSIONS = ("binary_tensor_data",)
SERVER_NAME = "edgekit"


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": edgekit.__version__, "extensions": list(EXTENSIONS)}


def model_metadata(repository: Repository, name: str, version: str | None) -> dict[str, Any]:
    served = repository.get(name, version)
    found: dict[str, Any] = {
        "name": served.name, "versions": repository.versions(name), "platform": served.platform,
        "inputs": [t.json() for t in served.inputs], "outputs": [t.json() for t in served.outputs],
    }  # fmt: skip
    labels = served.model.manifest.labels
    if labels:  # the class names, in output order: what a client needs to read the scores
        found["parameters"] = {"labels": list(labels)}
    return found


def repository_index(repository: Repository) -> list[dict[str, str]]:
    """The model repository extension's index (Triton's ``POST /v2/repository/index``): every
    model and version this server has loaded, and each model's active version."""
    index = []
    for name in repository.names():
        active = str(repository.get(name).version)
        for version in repository.versions(name):
            state = "READY" if version == active else "LOADED, NOT ACTIVE"
            index.append({"name": name, "version": version, "state": state})
    return index


def build_app(repository: Repository, limits: Limits, timeout_s: float, token: bytes | None) -> ASGIApp:
    """The REST app over ``repository``; with ``token``, every request needs ``Authorization:
    Bearer TOKEN``."""
    budget = BodyBudget(limits.max_inflight_bytes)

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if repository.names() and repository.following() else 400)

    async def metadata(request: Request) -> Response:
        return JSONResponse(server_metadata())

    async def index(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(repository_index, repository))

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        return Response(status_code=200 if repository.ready(params["name"], params.get("version")) else 400)

    async def model(request: Request) -> Response:
        params = request.path_params
        found = await asyncio.to_thread(model_metadata, repository, params["name"], params.get("version"))
        return JSONResponse(found)

    async def stats(request: Request) -> Response:
        params = request.path_params
        served = await asyncio.to_thread(repository.get, params["name"], params.get("version"))
        return JSONResponse(
            {"name": served.name, "version": str(served.version), **served.batcher.stats.json(),
             **generation.stats(served)}
        )

    async def infer(request: Request) -> Response:
        params = request.path_params
        # a version not loaded yet loads here, and a large JSON body takes seconds to decode:
        # both off the event loop, which every other request shares
        served = await asyncio.to_thread(repository.get, params["name"], params.get("version"))
        request.state.model = f"{served.name}"
        async with budget.reserve(request, limits):
            body = await _body(request, limits, timeout_s)
            specs = {t.name: t for t in served.inputs}
            length = request.headers.get(HEADER_LENGTH)
            parsed = await asyncio.to_thread(parse_rest, body, length, specs, limits)
            del body
        served, future = repository.infer(params["name"], params.get("version"), parsed.inputs)
        try:
            arrays = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except asyncio.TimeoutError:
            raise ProtocolError(504, f"{served.name} did not answer within {timeout_s:g} s") from None
        except Exception as exc:  # the engine's own error types
            raise ProtocolError(400, f"{served.name} v{served.version}: {exc}") from None
        request.state.model = f"{served.name} v{served.version}"
        chosen = select_outputs(served.output_names, arrays, parsed.outputs)
        content, header = encode_rest(served.name, served.version, parsed.id, chosen)
        if header is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header)})

    model_routes = [
        ("ready", model_ready, "GET"), ("infer", infer, "POST"), ("stats", stats, "GET"), ("", model, "GET"),
        *generation.routes(repository),
    ]  # fmt: skip
    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", metadata),
        Route("/v2/repository/index", index, methods=["POST"]),
    ]  # fmt: skip
    for suffix, handler, method in model_routes:
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes.append(Route(f"{base}/{suffix}".rstrip("/"), handler, methods=[method]))
    app = Starlette(
        routes=routes,
        exception_handlers={ProtocolError: _protocol_error, HTTPException: _http_error, Exception: _crash},
    )
    return _Guard(app, token)


class BodyBudget:
    """Bytes of request bodies being read at once, all clients together. A request reserves
    its declared length (or the body limit, when it declares none) before a byte is read, and
    gets 503 when that would pass the budget: N clients holding N bodies cannot take N times
    the body limit of memory. Used from the event loop only."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0

    @contextlib.asynccontextmanager
    async def reserve(self, request: Request, limits: Limits) -> AsyncIterator[None]:
        declared = ascii_int(request.headers.get("content-length"))
        if declared is not None and declared > limits.max_body_bytes:
            raise ProtocolError(
                413, f"the body has {declared} bytes, over this server's limit of {limits.max_body_bytes}"
            )
        size = limits.max_body_bytes if declared is None else declared
        if self.used + size > self.total:
            raise ProtocolError(
                503, f"the server is reading {self.used >> 20} MiB of other requests' bodies; retry"
            )
        self.used += size
        try:
            yield
        finally:
            self.used -= size


async def _body(request: Request, limits: Limits, timeout_s: float) -> bytes:

    async def read() -> bytes:
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ProtocolError(
                    413, f"the body is over this server's limit of {limits.max_body_bytes} bytes"
                )
            parts.append(chunk)
        return b"".join(parts)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise ProtocolError(408, f"the request body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise ProtocolError(400, "the client closed the connection before its body arrived") from None


async def _protocol_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    known = {404: f"no such endpoint: {request.url.path}", 405: f"{request.method} is not allowed here"}
    return JSONResponse({"error": known.get(exc.status_code, exc.detail)}, status_code=exc.status_code)


async def _crash(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


class _Guard:
    """Bearer-token check (constant time) and the access log, around the app."""

    def __init__(self, app: ASGIApp, token: bytes | None) -> None:
        self.app, self.expected = app, b"Bearer " + token if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if self.expected is not None and not self._authorized(scope):
            response = JSONResponse(
                {"error": "a bearer token is required: send Authorization: Bearer TOKEN"},
                status_code=401, headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, sending)
        else:
            await self.app(scope, receive, sending)
        state = scope.get("state", {})
        access.info("%s %s %s %d %.2f ms", scope["method"], scope["path"], state.get("model", "-"), status[0],
                    (time.perf_counter() - started) * 1000)

    def _authorized(self, scope: Scope) -> bool:
        assert self.expected is not None
        given = dict(scope["headers"]).get(b"authorization", b"")
        return hmac.compare_digest(given, self.expected)
