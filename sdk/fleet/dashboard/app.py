"""The dashboard's web app (Starlette): pages, the fragments that live updates poll, sample
previews decrypted in this process, labels written back, exports, and the token guard."""

from __future__ import annotations

import hmac
import io
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from edgekit.core.manifest import ReferenceStats
from edgekit.core.validation import ascii_int
from edgekit.fleet.dashboard import data, pages
from edgekit.fleet.dashboard.rollouts import rollout_sections
from edgekit.fleet.export import open_message, sample_arrays
from edgekit.fleet.privacy import fleet_privacy
from edgekit.fleet.queries import read_reports, sample_model, set_label

COOKIE = "edgekit_dashboard"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Dashboard:
    engine: Any
    fleet: str
    key: x25519.X25519PrivateKey
    token: bytes | None = None
    references: dict[tuple[str, int], ReferenceStats] = field(default_factory=dict)
    secure_cookie: bool = False
    hosts: frozenset[str] | None = None
    """The host names requests may name (DNS rebinding); None: any (bound to every address)."""
    classes: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    """Class names by (model, version), from the bundles given: labels are checked against them."""


NODE = re.compile(r"[0-9a-f]{32}")
"""A pseudonym, as the telemetry schema defines it: anything else names no device."""
MAX_LABEL_BODY = 4096


def label_value(text: str, classes: tuple[str, ...] | None) -> tuple[int | None, str | None]:
    """A label form's value as a class index (None clears it), or why it is refused: with the
    model's classes known, one of their names or indices; else any index."""
    if not text:
        return None, None
    if classes and text in classes:
        return classes.index(text), None
    value = ascii_int(text)
    limit = len(classes) if classes else 1_000_000
    if value is None or value >= limit:
        if classes:
            shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
            return None, f"this model has {len(classes)} classes: a label is one of {shown}, or its index"
        return None, "a label is a class index: 0, 1, 2..."
    return value, None


def build_app(board: Dashboard) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    # Every handler but label is a plain function: Starlette runs it in its thread pool, so a
    # slow query (SQLAlchemy is synchronous) holds that request only, not the event loop.
    opened = lru_cache(maxsize=256)(lambda node, epoch, seq: _open(board, node, epoch, seq))

    def html(text: str, status: int = 200) -> Response:
        return HTMLResponse(text, status_code=status, headers=HEADERS)

    def reference(model: str, version: int) -> list[float] | None:
        found = board.references.get((model, version))
        return None if found is None or found.classes is None else list(found.classes)

    def fleet_page(request: Request) -> Response:
        return html(pages.fleet_page(board.fleet, data.fleet_rows(board.engine, board.fleet)))

    def fleet_fragment(request: Request) -> Response:
        return html(pages.fleet_rows_html(data.fleet_rows(board.engine, board.fleet)))

    def _series(request: Request) -> tuple[str, list[dict[str, Any]], list[float] | None]:
        node = request.path_params["node"]
        series = data.device_series(board.engine, node) if NODE.fullmatch(node) else []
        return node, series, reference(series[-1]["model"], series[-1]["version"]) if series else None

    def device_page(request: Request) -> Response:
        node, series, ref = _series(request)
        status = 200 if series else 404
        return html(pages.device_page(board.fleet, node, series, ref), status)

    def device_fragment(request: Request) -> Response:
        _, series, ref = _series(request)
        return html(pages.device_charts(series, ref))

    def drift_page(request: Request) -> Response:
        return html(
            pages.drift_page(board.fleet, data.drift_table(board.engine, board.fleet, board.references))
        )

    def drift_fragment(request: Request) -> Response:
        return html(pages.drift_rows_html(data.drift_table(board.engine, board.fleet, board.references)))

    def samples_page(request: Request) -> Response:
        show = request.query_params.get("show", "unlabelled")
        show = show if show in ("unlabelled", "labelled", "all") else "unlabelled"
        rows = data.sample_queue(board.engine, board.fleet, show)
        cards = [
            pages.sample_card(row, _preview(row, opened), board.classes.get((row["model"], row["version"])))
            for row in rows
        ]
        counts = data.sample_counts(board.engine, board.fleet)
        return html(pages.samples_page(board.fleet, cards, show, counts))

    def sample_image(request: Request) -> Response:
        p = _sample_key(request)
        if p is None:
            return Response("no such sample", 404, headers=HEADERS)
        arrays = opened(p["node"], p["epoch"], p["seq"])
        if arrays is None or p["idx"] >= len(arrays["x"]):
            return Response("no such sample", 404, headers=HEADERS)
        png = thumbnail(arrays["x"][p["idx"]])
        if png is None:
            return Response("this sample is not an image", 404, headers=HEADERS)
        return Response(
            png, media_type="image/png", headers={**HEADERS, "Cache-Control": "private, max-age=3600"}
        )

    async def label(request: Request) -> Response:
        p = _sample_key(request)
        body = await _small_body(request, MAX_LABEL_BODY)
        if body is None:
            return Response(f"a label form is at most {MAX_LABEL_BODY} bytes", 413, headers=HEADERS)
        text = (parse_qs(body.decode(errors="replace")).get("label") or [""])[0].strip()
        model = None
        if p is not None:
            model = await run_in_threadpool(sample_model, board.engine, p["node"], p["epoch"], p["seq"])
        value, problem = label_value(text, board.classes.get(model) if model is not None else None)
        if problem:
            return Response(problem, 400, headers=HEADERS)
        found = p is not None and await run_in_threadpool(
            set_label, board.engine, p["node"], p["epoch"], p["seq"], p["idx"], value
        )
        if not found:
            return Response("no such sample", 404, headers=HEADERS)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"label": value}, headers=HEADERS)
        return RedirectResponse(_own_page(request, "/samples"), 303, headers=HEADERS)

    def export(request: Request) -> Response:
        labelled = request.query_params.get("labelled") == "1"
        arrays = sample_arrays(board.engine, board.fleet, board.key, labelled)
        if arrays is None:
            return Response("no samples to export", 404, headers=HEADERS)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        name = "labelled-samples.npz" if labelled else "samples.npz"
        attachment = {**HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
        return Response(buffer.getvalue(), media_type="application/octet-stream", headers=attachment)

    def rollouts_page(request: Request) -> Response:
        return html(pages.rollouts_page(board.fleet, rollout_sections(board.engine, board.fleet)))

    def rollouts_fragment(request: Request) -> Response:
        page = pages.rollouts_page(board.fleet, rollout_sections(board.engine, board.fleet))
        return html(page.split('data-source="/fragment/rollouts">', 1)[1].rsplit("</div></main>", 1)[0])

    def privacy_view() -> dict[str, Any]:
        return fleet_privacy(board.fleet, read_reports(board.engine, board.fleet))

    def privacy_page(request: Request) -> Response:
        return html(pages.privacy_page(board.fleet, privacy_view()))

    def privacy_fragment(request: Request) -> Response:
        return html(pages.privacy_rows_html(privacy_view()))

    key = "{node:str}/{epoch:int}/{seq:int}/{idx:int}"
    routes = [
        Route("/", fleet_page), Route("/fragment/fleet", fleet_fragment),
        Route("/device/{node:str}", device_page), Route("/fragment/device/{node:str}", device_fragment),
        Route("/drift", drift_page), Route("/fragment/drift", drift_fragment),
        Route("/samples", samples_page), Route(f"/sample/{key}.png", sample_image),
        Route(f"/label/{key}", label, methods=["POST"]), Route("/export/samples.npz", export),
        Route("/rollouts", rollouts_page), Route("/fragment/rollouts", rollouts_fragment),
        Route("/privacy", privacy_page), Route("/fragment/privacy", privacy_fragment),
        Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]  # fmt: skip
    return Guard(Starlette(routes=routes), board.token, board.secure_cookie, board.hosts)


def _sample_key(request: Any) -> dict[str, Any] | None:
    """The sample a path names, or None when no stored sample can be it (not a pseudonym, or
    numbers past what the database holds: 10^30 would overflow its integer columns)."""
    p = request.path_params
    if not NODE.fullmatch(p["node"]) or not all(0 <= p[k] < 2**62 for k in ("epoch", "seq", "idx")):
        return None
    return dict(p)


async def _small_body(request: Any, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (read no further)."""
    declared = ascii_int(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        return None
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _own_page(request: Any, default: str) -> str:
    """Where the Referer pointed, if it is a page of this dashboard: never another site."""
    referer = urlsplit(request.headers.get("referer") or "")
    own = referer.netloc == request.url.netloc and referer.path.startswith("/")
    if own and not referer.path.startswith("//"):
        return referer.path + (f"?{referer.query}" if referer.query else "")
    return default


def _open(board: Dashboard, node: str, epoch: int, seq: int) -> dict[str, np.ndarray] | None:
    sealed = data.sealed_message(board.engine, node, epoch, seq)
    return None if sealed is None else open_message(sealed, board.key)


def _preview(row: dict[str, Any], opened: Callable[..., dict[str, np.ndarray] | None]) -> str:
    arrays = opened(row["node"], row["epoch"], row["seq"])
    if arrays is None:
        return '<p class="muted">gone</p>'
    if "text" in arrays:
        return f"<blockquote>{escape(str(arrays['text'][row['idx']]))}</blockquote>"
    x = arrays["x"][row["idx"]]
    if image_like(x):
        key = f"{row['node']}/{row['epoch']}/{row['seq']}/{row['idx']}"
        return f'<img src="/sample/{key}.png" alt="sample {row["seq"]}.{row["idx"]}" width="96" height="96">'
    values = ", ".join(f"{v:.4g}" for v in np.asarray(x, float).reshape(-1)[:16])
    return f'<code class="values">{values}{" …" if x.size > 16 else ""}</code>'


def image_like(x: np.ndarray) -> bool:
    """H×W, or H×W×C with 1, 3 or 4 channels, each side at least 4."""
    squeezed = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
    if squeezed.ndim == 2:
        return min(squeezed.shape) >= 4
    return squeezed.ndim == 3 and squeezed.shape[-1] in (3, 4) and min(squeezed.shape[:2]) >= 4


def thumbnail(x: np.ndarray, size: int = 96) -> bytes | None:
    """The sample as a PNG, scaled to its own range, nearest-neighbour up to ``size``."""
    if not image_like(x):
        return None
    from PIL import Image

    pixels = np.asarray(x, float)
    pixels = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels
    low, high = float(pixels.min()), float(pixels.max())
    scaled = ((pixels - low) / (high - low or 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(scaled)
    scale = max(1, size // max(image.size))
    image = image.resize((image.size[0] * scale, image.size[1] * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Guard:
    """What every request passes, token or not:

    - its Host must be one this dashboard is bound to (``hosts``): a page that rebinds its own
      DNS name to 127.0.0.1 could otherwise read the pages and the decrypted sample exports;
    - a POST must come from this origin (Origin, else Sec-Fetch-Site): a page on another site
      could otherwise write labels, which feed ``fleet export --labelled`` and so ``--eval``;
    - every response carries the security headers, static files and errors included.

    With a token, every request needs it: ``Authorization: Bearer TOKEN``, or the cookie that
    opening ``/?token=TOKEN`` once sets (HttpOnly, SameSite=Strict, Secure over TLS)."""

    def __init__(
        self, app: Any, token: bytes | None, secure: bool, hosts: frozenset[str] | None = None
    ) -> None:
        self.app, self.token, self.secure, self.hosts = app, token, secure, hosts

    async def __call__(self, scope: Any, receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                named = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()
                         if k.lower().encode() not in named]  # fmt: skip
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        request = Request(scope)
        problem = self._problem(request)
        if problem is not None:
            status, text = problem
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            await PlainTextResponse(text, status, headers=headers)(scope, receive, secured)
            return
        if self.token is not None and self._opening(request):
            await self._set_cookie(scope, receive, secured)
            return
        await self.app(scope, receive, secured)

    def _problem(self, request: Any) -> tuple[int, str] | None:
        host = (request.url.hostname or "").lower()
        if self.hosts is not None and host not in self.hosts:
            return 421, f"this dashboard does not answer for host {host[:100]!r}"
        if request.method not in ("GET", "HEAD") and not self._same_origin(request):
            return 403, "a form on another site cannot write to this dashboard"
        if self.token is None or self._opening(request):
            return None
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
        cookie = request.cookies.get(COOKIE, "").encode()
        if not (self._same(bearer) or self._same(cookie)):
            return 401, "a token is required: open /?token=TOKEN once, or send Authorization: Bearer TOKEN"
        return None

    @staticmethod
    def _same_origin(request: Any) -> bool:
        origin = request.headers.get("origin")
        if origin is not None:
            return urlsplit(origin).netloc == request.url.netloc
        return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")

    def _opening(self, request: Any) -> bool:
        given = request.query_params.get("token")
        return given is not None and request.method == "GET" and self._same(given.encode())

    async def _set_cookie(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.responses import RedirectResponse

        assert self.token is not None
        response = RedirectResponse(scope["path"], 303)
        response.set_cookie(COOKIE, self.token.decode(), httponly=True, samesite="strict", secure=self.secure,
                            path="/")  # fmt: skip
        await response(scope, receive, send)

    def _same(self, given: bytes) -> bool:
        assert self.token is not None
        return bool(given) and hmac.compare_digest(given, self.token)
