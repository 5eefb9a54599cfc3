"""Fetching a bundle a deployment document names, into memory only.

Plaintext model bytes never touch the device's disk: the download is held in memory, bounded
by the size the signed document declares, and its sha256 is checked against the document
before any parser sees a byte. Only the store's encrypted copy is written. HTTP downloads
resume with Range requests after a dropped connection; MQTT chunks are retained at the
broker, so a reconnect receives the missing ones again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edgekit.core.deployment import BundleRef, Source
from edgekit.core.errors import EdgekitError

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


def fetch_http(source: Source, bundle: BundleRef, progress: Progress, halt: threading.Event,
               attempts: int = 5) -> bytes:
    """GET the bundle, resuming with ``Range`` after a dropped connection."""
    assert source.url is not None
    data = bytearray()
    failures, delay = 0, 0.5
    while True:
        try:
            _get(source.url, data, bundle.size, progress, halt)
            return verify(data, bundle)
        except (OSError, urllib.error.URLError) as exc:
            failures += 1
            if failures >= attempts or halt.is_set():
                raise FetchError(f"cannot fetch {source.url}: {_reason(exc)}") from exc
            log.info("agent: download interrupted at %d bytes (%s); resuming", len(data), _reason(exc))
            halt.wait(delay)
            delay = min(delay * 2, 10.0)


def _get(url: str, data: bytearray, size: int, progress: Progress, halt: threading.Event) -> None:
    request = urllib.request.Request(url, headers={"Range": f"bytes={len(data)}-"} if data else {})
    with urllib.request.urlopen(request, timeout=30) as response:  # http and https only
        if response.status != 206:
            data.clear()  # the server ignored the range: start over
        while chunk := response.read(READ_BYTES):
            if len(data) + len(chunk) > size:
                raise FetchError(
                    f"{url} sends more than the {size} bytes the document declares", permanent=True
                )
            data.extend(chunk)
            progress(len(data) / size)
            if halt.is_set():
                raise FetchError("the agent is stopping")


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
        self.problem: str | None = None
        self.changed = threading.Condition()

    def offer(self, topic: str, payload: bytes) -> None:
        index_text = topic[len(self.topic) + 1 :]
        with self.changed:
            if not index_text.isdigit() or int(index_text) >= self.count:
                self.problem = f"chunk {index_text!r} is not one of the {self.count} the document declares"
            else:
                index = int(index_text)
                expected = self.chunk if index < self.count - 1 else self.bundle.size - self.chunk * index
                if len(payload) != expected:
                    self.problem = f"chunk {index} is {len(payload)} bytes, not {expected}"
                else:
                    self.parts[index] = payload
            self.changed.notify_all()

    def wait(self, progress: Progress, halt: threading.Event, idle_s: float) -> bytes:
        """Every chunk, verified; FetchError when none arrives for ``idle_s`` seconds."""
        last, seen = time.monotonic(), -1
        with self.changed:
            while len(self.parts) < self.count:
                if self.problem:
                    raise FetchError(f"bundle over MQTT: {self.problem}", permanent=True)
                if halt.is_set():
                    raise FetchError("the agent is stopping")
                if len(self.parts) != seen:
                    seen, last = len(self.parts), time.monotonic()
                    progress(seen / self.count)
                elif time.monotonic() - last > idle_s:
                    raise FetchError(f"bundle over MQTT: no chunk on {self.topic}/+ for {idle_s:g} s")
                self.changed.wait(0.2)
        return verify(b"".join(self.parts[i] for i in range(self.count)), self.bundle)


def _mb(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc)
