"""``fleet watch``: the latest numbers per node, and the loop that feeds them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit.fleet.inbox import Inbox, Limits
from edgekit.fleet.messages import SKIP_REASONS, Skip, parse, summarize

Event = dict[str, Any]
log = logging.getLogger("edgekit.fleet")


@dataclass
class NodeState:
    node: str
    status: str = "?"
    last: dict[str, Any] = field(default_factory=dict)
    reports: int = 0


class FleetView:
    """What ``fleet watch`` shows: the latest numbers per node, and what was skipped."""

    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self.nodes: dict[str, NodeState] = {}
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.unknown_fields = 0
        self._seen: dict[str, set[int]] = {}

    def handle(self, topic: str, payload: bytes) -> Event | None:
        """Apply one message; returns the event line for ``--json``, or None if skipped.
        Never raises: a message that cannot be processed is counted as "unprocessable"."""
        try:
            return self._apply(topic, payload)
        except Skip as skip:
            self.skipped[skip.reason] += 1
        except Exception as exc:  # one message must never stop the watch
            log.warning("edgekit: a message on %s could not be processed: %s", topic[:200], exc)
            self.skipped["unprocessable"] += 1
        return None

    def _apply(self, topic: str, payload: bytes) -> Event | None:
        message = parse(self.fleet, topic, payload)
        self.unknown_fields += len(message.unknown_fields)
        state = self.nodes.setdefault(message.node, NodeState(message.node))
        if message.kind == "status":
            if not message.status:  # cleared when a pseudonym's epoch ended
                self.nodes.pop(message.node, None)
                return {"event": "gone", "node": message.node}
            state.status = message.status
            return {"event": "status", "node": message.node, "status": message.status}
        if message.report is None:  # a sample: watch leaves those to collect
            return None
        seen = self._seen.setdefault(message.node, set())
        if message.report.seq in seen:
            self.skipped["duplicate"] += 1
            return None
        seen.add(message.report.seq)
        state.reports += 1
        if state.status == "?":
            state.status = "online"
        if not state.last or message.report.end >= state.last["end"]:
            state.last = summarize(message.report)
        return {"event": "report", **summarize(message.report)}

    @property
    def online(self) -> int:
        return sum(1 for s in self.nodes.values() if s.status == "online")


def watch(inbox: Inbox, view: FleetView, limits: Limits, show: Callable[[Event | None], None]) -> None:
    """Feed ``view`` from ``inbox`` until ``limits`` or Ctrl-C; ``show`` gets each message's
    event (None for one that was skipped)."""
    started = last = time.monotonic()
    try:
        while not limits.reached(started, last):
            message = inbox.get(0.2)
            if message is None:
                continue
            last = time.monotonic()
            show(view.handle(message[0], message[1]))
    except KeyboardInterrupt:
        pass
