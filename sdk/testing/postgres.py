"""A PostgreSQL server on a free loopback port, in its own data folder: for tests and
benchmarks, as ``edgekit.testing.mosquitto`` starts a broker. Production fleets run their own database."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgekit.core.errors import EdgekitError
from edgekit.testing.mosquitto import free_port

INSTALL_HINT = (
    "install PostgreSQL (Debian, Ubuntu: apt-get install postgresql; macOS: brew install postgresql)"
)


def find_postgres() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent  # a link on PATH, to the folder with initdb
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


class LocalPostgres:
    """``with LocalPostgres() as db: db.url`` -> postgresql://edgekit@127.0.0.1:PORT/edgekit.

    Run as root, the server runs as the ``postgres`` user (PostgreSQL refuses root), in a
    folder that user can enter.
    """

    def __init__(self) -> None:
        self.bin = find_postgres()
        if self.bin is None:
            raise EdgekitError(f"PostgreSQL is not installed: {INSTALL_HINT}")
        self.folder = Path(tempfile.mkdtemp(prefix="edgekit-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql://edgekit@127.0.0.1:{self.port}/edgekit"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, cwd=self.folder)
        if done.returncode:
            raise RuntimeError(f"{Path(command[0]).name} failed: {done.stderr.strip()[-500:]}")

    def start(self) -> LocalPostgres:
        if os.geteuid() == 0:
            os.chmod(self.folder, 0o777)
        bin_ = self.bin
        assert bin_ is not None
        self._run(str(bin_ / "initdb"), "-D", str(self.data), "-U", "edgekit", "--auth=trust", "-E", "UTF8")
        self.resume()
        self.create_database("edgekit")
        return self

    def resume(self) -> None:
        """Start the server on its data folder (after ``pause``, with everything it held)."""
        assert self.bin is not None
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=on"
        log = str(self.folder / "log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def pause(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping its data."""
        assert self.bin is not None
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new, empty database on this server; returns its URL."""
        assert self.bin is not None
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "edgekit", name)
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        if self.bin is not None and (self.data / "postmaster.pid").exists():
            self.pause()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
