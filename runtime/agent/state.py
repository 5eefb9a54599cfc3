"""What an agent remembers across restarts, in ``EDGEKIT_HOME/agent/FLEET.json``.

It holds the highest serial accepted on each document topic (the replay floor), the last
accepted document itself (so a restart without a broker still knows the desired state and
finishes an interrupted update), and the outcome of each document it acted on. Each write
is atomic: a kill -9 leaves the old state or the new one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.core.atomic import atomic_write


@dataclass
class AgentState:
    path: Path
    serials: dict[str, int] = field(default_factory=dict)
    document: bytes | None = None
    """The envelope of the document in force, as it arrived (signature included)."""
    outcomes: dict[int, str] = field(default_factory=dict)
    """serial -> "ok" or the reason it failed for good (it is not retried)."""

    @classmethod
    def load(cls, path: Path) -> AgentState:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError):
            # an unreadable state loses the replay floor, never the model: the store keeps its own
            # rollback protection (no version below its highest installs without a rollback document)
            return cls(path)
        document = raw.get("document")
        return cls(
            path,
            serials={str(k): int(v) for k, v in raw.get("serials", {}).items()},
            document=base64.b64decode(document) if document else None,
            outcomes={int(k): str(v) for k, v in raw.get("outcomes", {}).items()},
        )

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        recent = dict(sorted(self.outcomes.items())[-32:])
        body = {
            "serials": self.serials,
            "document": base64.b64encode(self.document).decode() if self.document else None,
            "outcomes": {str(k): v for k, v in recent.items()},
        }
        atomic_write(self.path, json.dumps(body, indent=1, sort_keys=True).encode())

    def highest(self) -> int:
        return max(self.serials.values(), default=0)
