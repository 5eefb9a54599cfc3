"""``fleet deploy``: a canary rollout watched against the control group, then promoted or
rolled back on its numbers; and the by-hand ``promote`` and ``abort``."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.core.deployment import (
    AgentStatus,
    BundleRef,
    Canary,
    Deployment,
    Source,
    canary_count,
    canary_order,
)
from edgekit.core.errors import EdgekitError, InputError
from edgekit.core.signing import inspect_bundle, load_signing_key
from edgekit.core.telemetry import fleet_filter
from edgekit.core.validation import updated
from edgekit.fleet.inbox import Inbox
from edgekit.fleet.messages import Skip, parse
from edgekit.rollout.bundle_server import BundleServer
from edgekit.rollout.fleet import (
    CHUNK_BYTES,
    FleetState,
    connect,
    next_serial,
    publish_chunks,
    publish_document,
    signed_document,
    snapshot,
)
from edgekit.rollout.health import Rules, Verdict, Window, judge
from edgekit.rollout.history import History, history_path
from edgekit.runtime.telemetry.broker import Broker

Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class DeployOptions:
    bundle: Path
    broker: Broker
    fleet: str
    key: Path
    group: str | None = None
    canary: float = 0.1
    watch_s: float = 900.0
    rules: Rules = field(default_factory=Rules)
    serve: str | None = None
    public_host: str | None = None
    bundle_url: str | None = None
    mqtt_copy: bool = True
    serve_rate: float | None = None
    settle_s: float = 120.0
    history: Path | None = None
    db: str | None = None
    """The fleet database, where the events also go (SQLite path or postgresql:// URL)."""


@dataclass
class Outcome:
    rollout: str
    decision: str
    reason: str
    numbers: dict[str, Any]
    canaries: int
    devices: int
    running: dict[int, int] = field(default_factory=dict)
    settled: bool = False

    def summary(self) -> dict[str, Any]:
        return {**self.__dict__, "running": {str(k): v for k, v in self.running.items()}}


class Rollout:
    """One ``fleet deploy`` run, from the first document to the settled fleet."""

    def __init__(self, options: DeployOptions, progress: Progress) -> None:
        self.options = options
        self.progress = progress
        manifest, signature = inspect_bundle(options.bundle)
        if signature is None:
            raise InputError(f"{options.bundle} is not signed; devices refuse it. Sign it: "
                             f"edgekit sign {options.bundle} --key {options.key}")
        self.key = load_signing_key(options.key)
        self.name, self.version = manifest.name, manifest.version
        self.data = options.bundle.read_bytes()
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.id = re.sub(r"[^A-Za-z0-9._-]", "-", f"{self.name}-v{self.version}-{stamp}")[:64]
        self.history = History(history_path(options.fleet, options.history), options.fleet, options.db)
        self.state = FleetState(options.fleet)
        self.canary, self.control = Window(), Window()
        self.document: Deployment | None = None
        self.server: BundleServer | None = None

    def run(self) -> Outcome:
        inbox = connect(
            self.options.broker, self.options.fleet, (fleet_filter(self.options.fleet, "report"),)
        )
        try:
            return self._run(inbox)
        finally:
            inbox.stop()
            if self.server is not None:
                self.server.stop()

    def _run(self, inbox: Inbox) -> Outcome:
        snapshot(inbox, self.state)
        scope = self.state.in_scope(self.options.group)
        if not scope:
            where = f"group {self.options.group}" if self.options.group else f"fleet {self.options.fleet}"
            raise EdgekitError(f"no edgekit agent of {where} is online on {self.options.broker.url}; start "
                               "one on each device: edgekit agent --broker URL --fleet NAME")
        previous = self._previous(scope)
        canaries = self._canaries(scope)
        self.document = Deployment(
            fleet=self.options.fleet, group=self.options.group, rollout=self.id,
            serial=next_serial(self.state), issued=time.time(), phase="canary", previous=previous,
            canary=canaries,
            model=BundleRef(name=self.name, version=self.version, sha256=self.sha256, size=len(self.data),
                            sources=self._sources(inbox)),
        )
        publish_document(inbox, self.document, self.key)
        started = {"event": "started", "rollout": self.id, "model": self.name, "version": self.version,
                   "previous": previous, "devices": len(scope), "canaries": len(canaries.nodes)}  # fmt: skip
        self.history.record(started)
        self.progress("started", started)
        verdict, overridden = self._watch(inbox, canaries)
        if overridden is not None:
            return self._finish(inbox, overridden, f"{overridden.phase} by hand", verdict, manual=True)
        phase = "promoted" if verdict.healthy else "rolled-back"
        final = updated(self.document, phase=phase, serial=next_serial(self.state),
                                                 issued=time.time())
        publish_document(inbox, final, self.key)
        self.state.documents[final.group] = final
        return self._finish(inbox, final, verdict.reason, verdict)

    def _previous(self, scope: list[AgentStatus]) -> int | None:
        versions = Counter(s.models[self.name] for s in scope if s.models.get(self.name))
        previous = versions.most_common(1)[0][0] if versions else None
        if previous is not None and previous >= self.version:
            raise InputError(f"{self.name} v{self.version} is not newer than v{previous}, which the devices "
                             "run; convert it with a higher --model-version")
        return previous

    def _canaries(self, scope: list[AgentStatus]) -> Canary:
        epoch = Counter(s.epoch for s in scope).most_common(1)[0][0]
        nodes = canary_order(self.id, [s.node for s in scope if s.epoch == epoch])
        return Canary(epoch=epoch, nodes=tuple(nodes[: canary_count(self.options.canary, len(nodes))]))

    def _sources(self, inbox: Inbox) -> tuple[Source, ...]:
        sources = []
        if self.options.serve:
            self.server = BundleServer(self.data, self.sha256, self.options.serve, self.options.serve_rate)
            sources.append(Source(kind="http", url=self.server.start().url(self.options.public_host)))
        if self.options.bundle_url:
            sources.append(Source(kind="http", url=self.options.bundle_url))
        if self.options.mqtt_copy or not sources:
            topic = publish_chunks(inbox, self.options.fleet, self.data, self.sha256)
            sources.append(Source(kind="mqtt", topic=topic, chunk=CHUNK_BYTES))
        return tuple(sources)

    # --- watching ------------------------------------------------------------------------

    def _watch(self, inbox: Inbox, canaries: Canary) -> tuple[Verdict, Deployment | None]:
        assert self.document is not None
        deadline = time.monotonic() + self.options.watch_s
        shown = 0.0
        verdict = judge(self.canary, self.control, self.options.rules)
        while time.monotonic() < deadline:
            message = inbox.get(timeout=0.2)
            if message is not None:
                taken = self._take(message[0], message[1], canaries)
                if isinstance(taken, Deployment) and taken.serial > self.document.serial:
                    return verdict, taken
                if isinstance(taken, Verdict):
                    return taken, None
            verdict = judge(self.canary, self.control, self.options.rules)
            if verdict.healthy is False:
                return verdict, None
            if time.monotonic() - shown >= 1.0:
                shown = time.monotonic()
                left = max(0.0, deadline - shown)
                self.progress("watching", {"left_s": round(left, 1), **verdict.numbers})
        if verdict.healthy is None:
            verdict = Verdict(False, f"not enough evidence: {verdict.reason}", verdict.numbers)
        return verdict, None

    def _take(self, topic: str, payload: bytes, canaries: Canary) -> Deployment | Verdict | None:
        taken = self.state.take(topic, payload)
        if isinstance(taken, AgentStatus):
            if taken.rollout == self.id and taken.canary and taken.phase == "failed":
                numbers = judge(self.canary, self.control, self.options.rules).numbers
                return Verdict(False, f"canary {taken.node[:8]} failed: {taken.reason}", numbers)
            return None
        if isinstance(taken, Deployment):
            return taken if taken.group == self.options.group else None
        try:
            message = parse(self.options.fleet, topic, payload)
        except Skip:
            return None
        if message.report is not None:
            self._count(message.node, message.report, canaries)
        return None

    def _count(self, node: str, report: Any, canaries: Canary) -> None:
        assert self.document is not None
        status = self.state.agents.get(node)
        if status is None or report.model.name != self.name:
            return
        if self.options.group is not None and status.group != self.options.group:
            return
        is_canary = node in canaries.nodes or (status.rollout == self.id and status.canary)
        if is_canary and report.model.version == self.version:
            self.canary.add(report)
        elif not is_canary and report.model.version == self.document.previous:
            self.control.add(report)

    # --- the end -------------------------------------------------------------------------

    def _finish(self, inbox: Inbox, final: Deployment, reason: str, verdict: Verdict,
                manual: bool = False) -> Outcome:
        event = {"event": "decision", "rollout": self.id, "decision": final.phase, "by_hand": manual,
                 "reason": reason, "numbers": verdict.numbers}  # fmt: skip
        if not manual:  # a by-hand decision is recorded by the command that made it
            self.history.record(event)
        self.progress("decided", event)
        scope = self.state.in_scope(self.options.group)
        outcome = Outcome(self.id, final.phase, reason, verdict.numbers,
                          len(final.canary.nodes) if final.canary else 0, len(scope))
        outcome.settled = self._settle(inbox, final)
        running = [s.models.get(self.name) for s in self.state.in_scope(self.options.group)]
        outcome.running = {v: running.count(v) for v in sorted({r for r in running if r})}
        self.history.record({"event": "settled" if outcome.settled else "unsettled", "rollout": self.id,
                              "running": outcome.summary()["running"]})
        return outcome

    def _settle(self, inbox: Inbox, final: Deployment) -> bool:
        """Wait until every online device in scope runs what the final document asks."""
        deadline = time.monotonic() + self.options.settle_s
        while time.monotonic() < deadline:
            pending = [
                s for s in self.state.in_scope(self.options.group) if not _settled(s, final, self.name)
            ]
            if not pending:
                return True
            message = inbox.get(timeout=0.2)
            if message is not None:
                self.state.take(message[0], message[1])
        return False


def _settled(status: AgentStatus, final: Deployment, name: str) -> bool:
    wanted = final.target(is_canary=False)
    running = status.models.get(name)
    if wanted is None:
        return True
    return running == wanted or (status.serial == final.serial and status.phase == "failed")


def deploy(options: DeployOptions, progress: Progress) -> Outcome:
    return Rollout(options, progress).run()


def override(broker: Broker, fleet: str, group: str | None, key_path: Path, phase: str,
             history: Path | None = None, db: str | None = None) -> Deployment:
    """``rollout promote`` or ``abort``: a new document that overrides the rules."""
    key = load_signing_key(key_path)
    inbox = connect(broker, fleet)
    try:
        state = snapshot(inbox, FleetState(fleet))
        current = signed_document(state, group, key)
        allowed = {"promoted": ("canary",), "aborted": ("canary", "promoted")}[phase]
        if current.phase not in allowed:
            raise InputError(f"rollout {current.rollout} is {current.phase}; it cannot be {phase} now")
        final = updated(current, phase=phase, serial=next_serial(state), issued=time.time())
        publish_document(inbox, final, key)
    finally:
        inbox.stop()
    History(history_path(fleet, history), fleet, db).record(
        {"event": "decision", "rollout": current.rollout, "decision": phase, "by_hand": True,
         "reason": f"{phase} by hand"}
    )
    return final
