"""Persistent MQTT session ids for the collectors on one host: one each, kept across restarts.

Two clients with one id take the session from each other at every connect (MQTT's session
takeover), and each report is delivered again at every takeover. So a collector without
``--session`` claims the lowest free slot on its host, a file lock under
``EDGEKIT_HOME/collectors`` that the kernel releases when the process ends, even by kill -9;
its id names the slot. A collector restarted while the others run takes its old slot again,
so its persistent session, and what waits in it at the broker, is its own again.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from pathlib import Path
from typing import BinaryIO

from edgekit.core.errors import EdgekitError
from edgekit.core.paths import edgekit_home

MAX_SLOTS = 256


class SessionSlot:
    """The claim of one slot; ``release`` (or the process ending) frees it."""

    def __init__(self, session_id: str, handle: BinaryIO | None = None) -> None:
        self.session_id = session_id
        self._handle = handle

    @classmethod
    def claim(cls, fleet: str, group: str, home: Path | None = None) -> SessionSlot:
        folder = (home or edgekit_home()) / "collectors"
        folder.mkdir(parents=True, exist_ok=True)
        base = f"edgekit-collect-{fleet}-{group}-{socket.gethostname()}"
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{fleet}-{group}")
        for slot in range(MAX_SLOTS):
            handle = (folder / f"{stem}-{slot}.lock").open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            os.set_inheritable(handle.fileno(), False)
            return cls(f"{base}-{slot}", handle)
        raise EdgekitError(
            f"{MAX_SLOTS} collectors of fleet {fleet}, group {group} already run on this host; "
            "give this one its own --session"
        )

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
