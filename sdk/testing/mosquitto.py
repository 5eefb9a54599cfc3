"""A Mosquitto broker on a free loopback port, with its own config: for tests, examples and
benchmarks. Production fleets run their own broker; this one is for trying things here."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.core.errors import MissingDependencyError

INSTALL_HINT = "install Mosquitto (Debian/Ubuntu: apt-get install mosquitto; macOS: brew install mosquitto)"


def find_mosquitto() -> str | None:
    """The mosquitto binary, on PATH or in /usr/sbin where Debian puts it."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


@dataclass(frozen=True)
class BrokerTLS:
    """Server side of a TLS listener; ``require_certificate`` asks clients for one."""

    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = True


class LocalBroker:
    """``with LocalBroker(folder) as broker: broker.url`` -> mqtt://127.0.0.1:PORT.

    Persistence is on, so queued messages for persistent sessions survive ``restart()``.
    """

    def __init__(
        self, folder: Path, *, tls: BrokerTLS | None = None, acl: str | None = None, port: int | None = None
    ) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise MissingDependencyError("mosquitto", "fleet", f"a local MQTT broker ({INSTALL_HINT})")
        self.binary = binary
        self.folder = folder
        self.tls = tls
        self.port = port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {folder}/",
            f"log_dest file {folder / 'mosquitto.log'}",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")  # else it drops to 'mosquitto', who cannot write here
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
            lines.append(f"require_certificate {'true' if tls.require_certificate else 'false'}")
        if acl is not None:
            (folder / "acl").write_text(acl)
            lines.append(f"acl_file {folder / 'acl'}")
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise RuntimeError(f"mosquitto exited at start: {error.strip() or self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        """Stop cleanly (SIGTERM), which saves the persistence file."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
