"""Serving one bundle over HTTP from the operator's machine while a rollout runs, with
``Range`` requests so devices resume interrupted downloads."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgekit.core.errors import InputError
from edgekit.core.validation import ascii_int

_RANGE = re.compile(r"^bytes=(\d+)-$")


class BundleServer:
    """``http://HOST:PORT/SHA256.ekb`` -> the bundle's bytes; anything else is 404."""

    def __init__(self, data: bytes, sha256: str, address: str, rate: float | None = None) -> None:
        host, _, port = address.rpartition(":")
        if not host or ascii_int(port) is None:
            raise InputError(f"--serve {address!r}: write it as HOST:PORT, such as 0.0.0.0:8765")
        self.data = data
        self.path = f"/{sha256}.ekb"
        self.rate = rate
        try:
            self.server = ThreadingHTTPServer((host, int(port)), self._handler())
        except OSError as exc:
            raise InputError(f"--serve {address}: cannot listen there ({exc})") from exc
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="edgekit-bundles", daemon=True)

    def url(self, public_host: str | None = None) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{public_host or str(host)}:{port}{self.path}"

    def start(self) -> BundleServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the standard library's name
                if self.path != owner.path:
                    self.send_error(404)
                    return
                start = 0
                match = _RANGE.match(self.headers.get("Range", ""))
                if match and int(match.group(1)) < len(owner.data):
                    start = int(match.group(1))
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(owner.data) - start))
                if start:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(owner.data) - 1}/{len(owner.data)}"
                    )
                self.end_headers()
                owner.send(self.wfile, start)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # devices' downloads are reported in their status

        return Handler

    def send(self, out: Any, start: int) -> None:
        step = 64 * 1024
        for offset in range(start, len(self.data), step):
            out.write(self.data[offset : offset + step])
            if self.rate:
                time.sleep(step / self.rate)
