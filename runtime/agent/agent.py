"""``edgekit agent``: the device side of a rollout.

It subscribes to its fleet's deployment documents, verifies each one (signature, fleet,
group, replay floor), fetches the bundle it names into memory, installs it through the
encrypted store (atomic, so a kill -9 leaves the old version or the new one), checks that
it loads and answers, and reports each step on its status topic. Whatever serves the model
(``edgekit serve``, or an application's ``Model.load(name)``) keeps running the active
version throughout; ``edgekit serve`` swaps to the new one without failing a request.

Threads: paho's network thread (reconnecting with capped backoff) only queues what arrives;
one worker thread does everything else, in order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgekit.core.deployment import (
    AgentStatus,
    Deployment,
    DocumentError,
    agent_topic,
    open_document,
    rollout_filter,
)
from edgekit.core.errors import EdgekitError, SignatureError
from edgekit.core.paths import edgekit_home
from edgekit.core.signing import Trust
from edgekit.core.validation import updated
from edgekit.runtime.agent.fetch import (
    Chunks,
    FetchError,
    Interrupted,
    Stop,
    check_space,
    check_url,
    fetch_http,
)
from edgekit.runtime.agent.state import AgentState
from edgekit.runtime.store import Store
from edgekit.runtime.telemetry.broker import Broker
from edgekit.runtime.telemetry.privacy import DeviceFleetKeys, epoch_at, machine_id, pseudonym

log = logging.getLogger("edgekit.agent")


@dataclass(frozen=True)
class AgentConfig:
    broker: Broker
    fleet: str
    group: str | None = None
    device_id: str | None = None
    fleet_dir: Path | None = None
    epoch_s: float = 86400.0
    """As the device's telemetry: status and reports then carry the same pseudonym."""
    backoff_max_s: float = 30.0
    chunk_idle_s: float = 60.0
    heartbeat_s: float = 30.0
    """The status is published again this often: the operator's "last seen"."""
    retry_s: tuple[float, ...] = field(default=(2.0, 5.0, 15.0, 60.0))


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.home = edgekit_home()
        self.store = Store(self.home)
        self.trust = Trust(self.home / "trust")
        self.secret = DeviceFleetKeys.load(config.fleet, config.fleet_dir, need_public=False).secret
        self.device_id = config.device_id or machine_id()
        self.state = AgentState.load(self.home / "agent" / f"{config.fleet}.json")
        self.queue: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.halt = threading.Event()
        self.refused: dict[str, int] = {}
        self.last_refused: str | None = None
        self.status = AgentStatus(node=self.node(), epoch=self.epoch(), group=config.group,
                                  time=time.time(), phase="idle", models=self._models())
        self._chunks: Chunks | None = None
        self._client: Client | None = None
        self._retry: tuple[float, bytes, int] | None = None
        self._attempts = 0
        self._published = 0.0
        self._download: tuple[int, Stop] | None = None
        """The serial being downloaded, and what stops it early."""
        self._worker = threading.Thread(target=self._work, name="edgekit-agent", daemon=True)
        self._beat = threading.Thread(target=self._heartbeat, name="edgekit-agent-heartbeat", daemon=True)

    def _models(self) -> dict[str, int]:
        return {name: version for name, version in self.store.active().items() if version is not None}

    def epoch(self, now: float | None = None) -> int:
        return epoch_at(self.config.epoch_s, now)

    def node(self, epoch: int | None = None) -> str:
        return pseudonym(self.secret, self.device_id, self.epoch() if epoch is None else epoch)

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> Agent:
        if self.state.document is not None:  # finish what a restart interrupted, broker or not
            self.queue.put(("", self.state.document))
        self._connect()
        self._worker.start()
        self._beat.start()
        return self

    def stop(self) -> None:
        self.halt.set()
        self._worker.join(timeout=30)
        self._beat.join(timeout=5)
        self._publish(updated(self.status, phase="offline", time=time.time()))
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _connect(self) -> None:
        node = self.node()
        client = self.config.broker.client(f"edgekit-agent-{node}")
        offline = AgentStatus(node=node, epoch=self.epoch(), group=self.config.group, time=time.time(),
                              phase="offline")
        client.will_set(agent_topic(self.config.fleet, node), offline.model_dump_json(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        client.reconnect_delay_set(0.5, self.config.backoff_max_s)  # type: ignore[arg-type]  # paho says int; it sleeps floats
        self._client = client  # before the network thread starts: on_connect publishes through it
        client.connect_async(self.config.broker.host, self.config.broker.port, keepalive=30)
        client.loop_start()

    def _on_connect(
        self, client: Client, userdata: object, flags: ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("agent: broker %s refused the connection: %s", self.config.broker.url, reason)
            return
        log.info("agent: connected to %s", self.config.broker.url)
        client.subscribe(rollout_filter(self.config.fleet), qos=1)
        if self._chunks is not None:
            client.subscribe(f"{self._chunks.topic}/+", qos=1)
        self._publish(self.status)

    def _on_connect_fail(self, client: Client, userdata: object) -> None:
        log.warning("agent: cannot reach broker %s; retrying (the active version keeps serving)",
                    self.config.broker.url)

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        chunks = self._chunks
        if chunks is not None and message.topic.startswith(chunks.topic + "/"):
            if not chunks.offer(message.topic, bytes(message.payload)):
                self.refused["bad_chunk"] = self.refused.get("bad_chunk", 0) + 1
        elif message.topic.startswith(rollout_filter(self.config.fleet)[:-1]) and message.payload:
            self.queue.put((message.topic, bytes(message.payload)))
            self._preempt(message.topic, bytes(message.payload))

    def _preempt(self, topic: str, payload: bytes) -> None:
        """A newer document, signed by a trusted publisher, stops the download in progress
        (a rollback must not wait behind a slow download); junk stops nothing."""
        download = self._download
        if download is None:
            return
        try:
            document, _ = open_document(payload, self.trust.check, f"deployment document on {topic}")
        except EdgekitError:
            return
        if document.fleet == self.config.fleet and document.topic == topic and document.serial > download[0]:
            download[1].supersede(f"superseded by document {document.rollout} #{document.serial}")

    def _publish(self, status: AgentStatus) -> None:
        client = self._client
        self._published = time.monotonic()
        if client is not None:
            client.publish(
                agent_topic(self.config.fleet, status.node), status.model_dump_json(), qos=1, retain=True
            )

    def _report(self, **fields: object) -> None:
        """Update the status and publish it (it waits in paho's queue while offline)."""
        fields.setdefault("reason", None)
        self.status = updated(self.status,
            **fields, time=time.time(), refused=dict(self.refused), last_refused=self.last_refused,
            models=self._models(),
        )
        self._publish(self.status)

    # --- the worker ----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """The status again every ``heartbeat_s``, whatever the worker is doing (a download)."""
        while not self.halt.wait(min(1.0, self.config.heartbeat_s)):
            stale = time.monotonic() - self._published >= self.config.heartbeat_s
            if stale and self.status.node == self.node():  # not the old pseudonym at an epoch's turn
                self._publish(updated(self.status, time=time.time()))

    def _work(self) -> None:
        while not self.halt.is_set():
            self._roll_epoch()
            try:
                topic, payload = self.queue.get(timeout=0.5)
            except queue.Empty:
                if self._retry is None or time.monotonic() < self._retry[0]:
                    continue
                topic, payload = "", self._retry[1]
            try:
                self._handle(topic, payload)
            except Exception as exc:  # never let the worker die; report and go on
                log.exception("agent: unexpected error")
                self._report(phase="failed", reason=f"{type(exc).__name__}: {exc}")

    def _roll_epoch(self) -> None:
        """A new epoch means a new pseudonym: clear the old status and reconnect as the new one."""
        if self.status.epoch == self.epoch() or self._client is None:
            return
        old = self._client
        old.publish(agent_topic(self.config.fleet, self.status.node), b"", qos=1, retain=True)
        old.disconnect()
        old.loop_stop()
        self.status = updated(self.status, node=self.node(), epoch=self.epoch())
        self._connect()

    def _handle(self, topic: str, payload: bytes) -> None:
        where = f"deployment document on {topic or 'the saved state'}"
        try:
            document, _ = open_document(payload, self.trust.check, where)
        except SignatureError as exc:
            return self._refuse("untrusted", str(exc))
        except DocumentError as exc:
            return self._refuse("malformed", str(exc))
        if document.fleet != self.config.fleet or (topic and document.topic != topic):
            return self._refuse(
                "wrong_topic", f"{where} is signed for fleet {document.fleet}, group "
                f"{document.group or '(all)'}; it was moved, and is ignored"
            )
        if document.group not in (None, self.config.group):
            self.refused["other_group"] = self.refused.get("other_group", 0) + 1
            return None
        return self._accept(document, payload, topic)

    def _accept(self, document: Deployment, payload: bytes, topic: str) -> None:
        floor = self.state.serials.get(document.topic, 0)
        if document.serial < floor:
            return self._refuse(
                "replay", f"document {document.rollout} #{document.serial} is older than #{floor}, "
                "the one in force on its topic: a replay, ignored"
            )
        if document.serial < self.state.highest():
            self.state.serials[document.topic] = document.serial
            self.state.save()  # a fleet-wide document older than this group's own: superseded
            return None
        if document.serial > floor or self.state.document != payload:
            self.state.serials[document.topic] = document.serial
            self.state.document = payload
            self.state.save()
        if self._retry is not None and self._retry[2] != document.serial:
            self._retry, self._attempts = None, 0
        outcome = self.state.outcomes.get(document.serial)
        if outcome is not None and outcome != "ok":
            return None  # failed for good: its status says why, and it is not retried
        if outcome == "ok" and topic:
            return None  # a redelivery of what is done (a restart checks it again)
        self._apply(document, payload)
        return None

    def _refuse(self, reason: str, message: str) -> None:
        log.warning("agent: %s", message)
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.last_refused = message
        self._report(phase=self.status.phase, reason=self.status.reason)

    # --- acting on a document ------------------------------------------------------------

    def _apply(self, document: Deployment, payload: bytes) -> None:
        name = document.model.name
        canary = document.canary is not None and self.node(document.canary.epoch) in document.canary.nodes
        running = self.store.active().get(name)
        target = document.target(canary)
        context = {"model": name, "rollout": document.rollout, "serial": document.serial, "canary": canary}
        desired = target or running
        try:
            if target is not None and target != running:
                self._change(document, running, target, context)
        except Interrupted as exc:
            log.info("agent: %s: the download stopped: %s", document.rollout, exc)
            return None  # stopping, or a newer document waits in the queue
        except FetchError as exc:
            if not exc.permanent and not self.halt.is_set():
                return self._later(document, payload, str(exc), context, desired)
            return self._fail(document, str(exc), context, desired)
        except EdgekitError as exc:
            return self._fail(document, str(exc), context, desired)
        self._retry, self._attempts = None, 0
        self.state.outcomes[document.serial] = "ok"
        self.state.save()
        self._report(phase="active", running=self.store.active().get(name), desired=desired, **context)
        return None

    def _change(
        self, document: Deployment, running: int | None, target: int, context: dict[str, object]
    ) -> None:
        name = document.model.name
        installed = {e.version for e in self.store.installed() if e.name == name and e.problem is None}
        if running is not None and target < running:
            if document.phase not in ("rolled-back", "aborted"):
                raise EdgekitError(f"the document would take {name} from v{running} down to v{target}; "
                                   "only a rollback document downgrades")
            if target not in installed:
                raise EdgekitError(f"cannot roll back to {name} v{target}: it is not installed here")
            while (self.store.active().get(name) or 0) > target:
                self.store.rollback(name)
            log.info("agent: rolled %s back to v%d (%s)", name, target, document.rollout)
            return
        if target in installed:
            self.store.activate(name, target)
        elif target == document.model.version:
            self._install(document, context)
        else:
            raise EdgekitError(
                f"{name} v{target} is not installed here and the document carries v{document.model.version}"
            )
        self._smoke(name, running, target)

    def _install(self, document: Deployment, context: dict[str, object]) -> None:
        bundle = document.model
        check_space(self.store.root, bundle.size)
        self._report(phase="downloading", progress=0.0, desired=bundle.version, **context)
        data = self._fetch(document, lambda done: self._progress(done, bundle.version, context))
        self._report(phase="installing", desired=bundle.version, **context)
        label = Path(f"{bundle.name}-v{bundle.version}.ekb")
        installed = self.store.install(label, trust=self.trust, data=data)
        if (installed.name, installed.version) != (bundle.name, bundle.version):
            self.store.rollback(installed.name)
            raise EdgekitError(f"the bundle holds {installed.name} v{installed.version}, "
                               f"the document declares {bundle.name} v{bundle.version}")
        log.info("agent: installed %s v%d (%s)", bundle.name, bundle.version, document.rollout)

    def _progress(self, done: float, version: int, context: dict[str, object]) -> None:
        if done - (self.status.progress or 0.0) >= 0.1 or done >= 1.0:
            self._report(phase="downloading", progress=round(done, 3), desired=version, **context)

    def _fetch(self, document: Deployment, progress: Callable[[float], None]) -> bytes:
        problems = []
        stop = Stop(self.halt)
        self._download = (document.serial, stop)
        try:
            for source in document.model.sources:
                try:
                    if source.kind == "http":
                        assert source.url is not None
                        check_url(source.url)
                        return fetch_http(source, document.model, progress, stop)
                    return self._fetch_chunks(Chunks(source, document.model), progress, stop)
                except FetchError as exc:
                    if exc.permanent or isinstance(exc, Interrupted):
                        raise
                    problems.append(str(exc))
        finally:
            self._download = None
        raise FetchError("; ".join(problems) or "the document names no source")

    def _fetch_chunks(self, chunks: Chunks, progress: Callable[[float], None], stop: Stop) -> bytes:
        self._chunks = chunks
        client = self._client
        if client is not None:
            client.subscribe(f"{chunks.topic}/+", qos=1)
        try:
            return chunks.wait(progress, stop, self.config.chunk_idle_s)
        finally:
            self._chunks = None
            if client is not None:
                client.unsubscribe(f"{chunks.topic}/+")

    def _smoke(self, name: str, running: int | None, target: int) -> None:
        """The new version must load and answer a call before it stays active."""
        from edgekit.runtime.model import Model

        try:
            with Model.load(name, warmup=True, trust=self.trust):
                pass
        except Exception as exc:
            if running is not None:
                self.store.activate(name, running)
            raise EdgekitError(
                f"{name} v{target} does not run here ({exc}); v{running} stays active"
            ) from exc

    def _fail(
        self, document: Deployment, reason: str, context: dict[str, object], desired: int | None
    ) -> None:
        log.warning("agent: %s: %s", document.rollout, reason)
        self._retry, self._attempts = None, 0
        self.state.outcomes[document.serial] = reason
        self.state.save()
        running = self.store.active().get(document.model.name)
        self._report(phase="failed", reason=reason[:1024], running=running, desired=desired, **context)

    def _later(self, document: Deployment, payload: bytes, reason: str, context: dict[str, object],
               desired: int | None) -> None:
        delay = self.config.retry_s[min(self._attempts, len(self.config.retry_s) - 1)]
        self._attempts += 1
        self._retry = (time.monotonic() + delay, payload, document.serial)
        running = self.store.active().get(document.model.name)
        self._report(phase="failed", reason=f"{reason[:900]}; retrying in {delay:g} s", running=running,
                     desired=desired, **context)
