"""The rollout history: every decision with its numbers, appended as JSON lines (fsynced)
and, with ``--db``, recorded in the fleet database for the dashboard's rollouts page."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.core.errors import EdgekitError
from edgekit.core.paths import edgekit_home

log = logging.getLogger("edgekit.rollout")


def history_path(fleet: str, path: Path | None) -> Path:
    return path or edgekit_home() / "fleets" / fleet / "rollouts.jsonl"


def record(path: Path, event: dict[str, Any]) -> None:
    """Append one decision to the rollout history (JSON lines, fsynced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": round(time.time(), 3), **event}, sort_keys=True) + "\n"
    with open(path, "a") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class History:
    """Where rollout events go: the JSON lines file, and the fleet database when ``db`` is
    given, for the dashboard's rollouts page."""

    path: Path
    fleet: str
    db: str | None = None

    def record(self, event: dict[str, Any]) -> None:
        record(self.path, event)
        if self.db is not None:
            from edgekit.fleet.database import record_event

            try:
                record_event(self.db, self.fleet, {"time": round(time.time(), 3), **event})
            except EdgekitError as exc:  # the rollout goes on: its history file has the event
                log.warning("edgekit: %s; the event is in %s", exc, self.path)


def read_history(path: Path, rollout: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if rollout is None or e.get("rollout") == rollout]
