"""Fetching a bundle a deployment document names, into memory only.

Plaintext model bytes never touch the device's disk: the download is held in memory, bounded
by the size the signed document declares, and its sha256 is checked against the document
before any parser sees a byte. Only the store's encrypted copy is written. HTTP downloads
resume with Range requests after a dropped connection; MQTT chunks are retained at the
broker, so a reconnect receives the missing ones again.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO

from edgekit.core.deployment import BundleRef, Source
from edgekit.core.errors import EdgekitError
from edgekit.core.validation import ascii_int

log = logging.getLogger("edgekit.agent")
READ_BYTES = 64 * 1024
DISK_MARGIN = 16 * 1024 * 1024
Progress = Callable[[float], None]


class FetchError(EdgekitError):
    """A bundle that cannot be fetched, or that is not what the document declares.
    ``permanent`` errors (a wrong hash or size) are not retried for the same document."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def check_space(folder: Path, size: int) -> None:
    """The store needs room for the encrypted copy: refuse before downloading a byte."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    needed = size + size // 10 + DISK_MARGIN
    if free < needed:
        raise FetchError(
            f"not enough disk space: the bundle needs {_mb(needed)} in {folder}, {_mb(free)} is free; "
            "free some space (edgekit models remove NAME VERSION)",
            permanent=True,
        )


def verify(data: bytes | bytearray, bundle: BundleRef) -> bytes:
    if len(data) != bundle.size:
        raise FetchError(
            f"the bundle is {len(data)} bytes, the document declares {bundle.size}", permanent=True
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != bundle.sha256:
        raise FetchError(
            f"the bundle's sha256 is {digest[:16]}..., the document declares {bundle.sha256[:16]}...; "
            "it is corrupt or tampered with",
            permanent=True,
        )
    return bytes(data)


class Stop:
    """Why a download ends early: the agent stops, or a newer signed document came."""

    def __init__(self, halt: threading.Event) -> None:
        self.halt = halt
        self.reason: str | None = None
        self._event = threading.Event()

    def supersede(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self.halt.is_set() or self._event.is_set()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.is_set() and time.monotonic() < deadline:
            self._event.wait(min(0.2, max(deadline - time.monotonic(), 0)))

    def check(self) -> None:
        if self.halt.is_set():
            raise Interrupted("the agent is stopping")
        if self._event.is_set():
            raise Interrupted(self.reason or "superseded")


class Interrupted(FetchError):
    """The download was stopped on purpose (see ``Stop``): not a failure of the document."""


@dataclass(frozen=True)
class Pace:
    """How slow a download may be before it is dropped and resumed: a server that trickles
    would hold the agent for hours (12 KB at one byte a second is 3.3 hours)."""

    window_s: float = 30.0
    min_bytes_per_s: float = 1024.0
    read_timeout_s: float = 30.0


def fetch_http(source: Source, bundle: BundleRef, progress: Progress, stop: Stop,
               attempts: int = 5, pace: Pace = Pace()) -> bytes:  # fmt: skip
    """GET the bundle, resuming with ``Range`` after a dropped, short or too slow connection."""
    assert source.url is not None
    data = bytearray()
    failures, delay = 0, 0.5
    while True:
        stop.check()
        try:
            _get(source.url, data, bundle.size, progress, stop, pace)
            return verify(data, bundle)
        except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
            failures += 1
            if failures >= attempts or stop.is_set():
                stop.check()
                raise FetchError(f"cannot fetch {source.url}: {_reason(exc)}") from exc
            log.info("agent: download interrupted at %d bytes (%s); resuming", len(data), _reason(exc))
            stop.wait(delay)
            delay = min(delay * 2, 10.0)


def _get(url: str, data: bytearray, size: int, progress: Progress, stop: Stop, pace: Pace) -> None:
    request = urllib.request.Request(url, headers={"Range": f"bytes={len(data)}-"} if data else {})
    with _OPENER.open(request, timeout=pace.read_timeout_s) as response:
        if response.status != 206:
            data.clear()  # the server ignored the range: start over
        window_start, window_bytes = time.monotonic(), 0
        while chunk := response.read1(READ_BYTES):
            if len(data) + len(chunk) > size:
                raise FetchError(
                    f"{url} sends more than the {size} bytes the document declares", permanent=True
                )
            data.extend(chunk)
            window_bytes += len(chunk)
            progress(len(data) / size)
            stop.check()
            elapsed = time.monotonic() - window_start
            if elapsed >= pace.window_s:
                if window_bytes < pace.min_bytes_per_s * elapsed and len(data) < size:
                    rate = window_bytes / elapsed
                    raise TimeoutError(f"{rate:.0f} B/s, below {pace.min_bytes_per_s:g} B/s")
                window_start, window_bytes = time.monotonic(), 0
    if len(data) < size:
        raise ConnectionResetError(f"the connection closed after {len(data)} of {size} bytes")


class _HTTPOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http:// and https:// only; anything else is final, not retried
    (urllib's own refusal is an HTTPError, which would be retried as a passing fault)."""

    def http_error_302(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: HTTPMessage
    ) -> object:
        target = urllib.parse.urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
            raise FetchError(
                f"{req.full_url} redirects to {target!r}: only http:// and https:// are fetched",
                permanent=True,
            )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_HTTPOnly)


def check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise FetchError(f"bundle URL {url!r}: only http:// and https:// are fetched", permanent=True)


class Chunks:
    """The bundle's retained MQTT chunks as they arrive (``edgekit/FLEET/bundles/SHA/INDEX``)."""

    def __init__(self, source: Source, bundle: BundleRef) -> None:
        assert source.topic is not None and source.chunk is not None
        self.topic = source.topic
        self.chunk = source.chunk
        self.bundle = bundle
        self.count = -(-bundle.size // source.chunk)
        self.parts: dict[int, bytes] = {}
        self.changed = threading.Condition()

    def offer(self, topic: str, payload: bytes) -> bool:
        """Keep a chunk that fits the document; False for one that does not, which is dropped
        and the right one awaited: anyone on the broker can publish here, and only the
        assembled bundle's sha256 decides."""
        index = ascii_int(topic[len(self.topic) + 1 :])  # '03' is another topic than '3': not a chunk
        if index is None or index >= self.count:
            return False
        expected = self.chunk if index < self.count - 1 else self.bundle.size - self.chunk * index
        if len(payload) != expected:
            return False
        with self.changed:
            self.parts[index] = payload
            self.changed.notify_all()
        return True

    def wait(self, progress: Progress, stop: Stop, idle_s: float) -> bytes:
        """Every chunk, verified; FetchError when none arrives for ``idle_s`` seconds."""
        last, seen = time.monotonic(), -1
        with self.changed:
            while len(self.parts) < self.count:
                stop.check()
                if len(self.parts) != seen:
                    seen, last = len(self.parts), time.monotonic()
                    progress(seen / self.count)
                elif time.monotonic() - last > idle_s:
                    raise FetchError(f"bundle over MQTT: no chunk on {self.topic}/+ for {idle_s:g} s")
                self.changed.wait(0.2)
            data = b"".join(self.parts[i] for i in range(self.count))
        try:
            return verify(data, self.bundle)
        except FetchError:
            self.parts.clear()  # a stranger's chunk of the right size: the retained ones come again
            raise FetchError("bundle over MQTT: the chunks do not add up to the document's sha256") from None


def _mb(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc)
