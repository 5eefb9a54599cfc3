"""The MQTT side of the fleet tools: a subscriber whose messages wait in a queue, and the
limits that end a watch or a collection."""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgekit.core.errors import EdgekitError
from edgekit.core.telemetry import Kind, fleet_filter
from edgekit.runtime.telemetry.broker import Broker

log = logging.getLogger("edgekit.fleet")

SESSION_TAKEN_OVER = 142
"""MQTT 5's DISCONNECT reason when another client connected with this client's id."""
FLAPS, FLAP_WINDOW_S, SHORT_S = 5, 30.0, 10.0
"""Mosquitto 2.0.11 closes a taken-over connection without that reason: this many
connections closed by the broker within ``SHORT_S`` of their CONNACK, within
``FLAP_WINDOW_S``, are read as two clients taking one session from each other."""


class SessionTakenOver(EdgekitError):
    """Another client connected with this one's session id."""


@dataclass(frozen=True)
class Limits:
    """When a watch or a collection stops: after ``duration`` seconds, or ``idle`` seconds
    without a message (None: never)."""

    duration: float | None = None
    idle: float | None = None

    def reached(self, started: float, last_message: float) -> bool:
        now = time.monotonic()
        if self.duration is not None and now - started >= self.duration:
            return True
        return self.idle is not None and now - last_message >= self.idle


def subscriptions(fleet: str, kinds: tuple[Kind, ...], group: str | None = None) -> list[str]:
    """Topic filters for ``kinds``; with ``group``, MQTT 5 shared subscriptions, so several
    collectors in one group split the messages between them."""
    filters = [fleet_filter(fleet, kind) for kind in kinds]
    return [f"$share/{group}/{f}" for f in filters] if group else filters


class Inbox:
    """A subscriber whose messages wait in a queue for the caller's thread. With
    ``session`` it keeps a persistent MQTT 5 session, so messages queue at the broker
    while it is away, and it acknowledges each one only when ``ack`` is called."""

    def __init__(self, broker: Broker, subscriptions: list[str], session: str | None = None) -> None:
        self.broker = broker
        self.subscriptions = subscriptions
        self.queue: queue.Queue[tuple[str, bytes, int, int]] = queue.Queue()
        client = broker.client(session or f"edgekit-watch-{secrets.token_hex(4)}")
        client.manual_ack_set(session is not None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self.session = session
        self.connected = False
        self.taken_over: str | None = None
        self._connected_at: float | None = None
        self._flaps: list[float] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._network, name="edgekit-inbox", daemon=True)

    def start(self, timeout: float = 10.0) -> Inbox:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 7 * 86400 if self.session else 0
        try:
            self.client.connect(
                self.broker.host, self.broker.port, clean_start=self.session is None, properties=properties
            )
        except Exception as exc:
            raise EdgekitError(
                f"cannot reach broker {self.broker.url}: {exc}; check the address, port and TLS files"
            ) from exc
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.connected:
            self.stop()
            raise EdgekitError(f"broker {self.broker.url} did not accept the connection within {timeout:g} s")
        return self

    def _network(self) -> None:
        """paho's network loop, reconnecting with capped backoff whatever went wrong."""
        delay, attempt = 0.1, time.monotonic()
        while not self._halt.is_set() and not self.taken_over:
            try:
                up = self.client.loop(timeout=0.1) == 0  # also reads a pending CONNACK
                if self.connected:
                    delay = 0.1
                    continue
                if up and time.monotonic() - attempt < 5:
                    continue  # connected at the socket, waiting for the broker's answer
                self._halt.wait(delay)
                attempt = time.monotonic()
                self.client.reconnect()
            except Exception as exc:  # refused, reset, TLS: keep trying
                log.debug("reconnecting to %s: %s", self.broker.url, exc)
                delay = min(delay * 2, 2.0)

    def _on_disconnect(
        self, client: Client, userdata: object, flags: DisconnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = False
        now, since = time.monotonic(), self._connected_at
        self._connected_at = None
        if self.session is None or self._halt.is_set():
            return
        # reconnecting would take the session back, and the two clients would never stop
        if reason.value == SESSION_TAKEN_OVER:
            self.taken_over = (
                f"another client connected to {self.broker.url} as {self.session} and took this "
                "collector's MQTT session"
            )
        elif since is not None and now - since < SHORT_S:
            self._flaps = [t for t in self._flaps if now - t < FLAP_WINDOW_S] + [now]
            if len(self._flaps) >= FLAPS:
                self.taken_over = (
                    f"{self.broker.url} closed this collector's connection {FLAPS} times in "
                    f"{FLAP_WINDOW_S:g} s, each right after it connected: another client is taking "
                    f"its MQTT session {self.session}"
                )

    def _on_connect(
        self, client: Client, userdata: object, flags: ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("broker %s refused the connection: %s", self.broker.url, reason)
            return
        for subscription in self.subscriptions:
            client.subscribe(subscription, qos=1)
        self._connected_at = time.monotonic()
        self.connected = True

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        self.queue.put((message.topic, bytes(message.payload), message.mid, message.qos))

    def get(self, timeout: float) -> tuple[str, bytes, int, int] | None:
        """The next message, or None after ``timeout``; raises SessionTakenOver once another
        client has taken this one's session."""
        if self.taken_over and self.queue.empty():
            raise SessionTakenOver(
                f"{self.taken_over}; give each collector its own --session, or leave it out (each "
                "then takes one of its own)"
            )
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def ack(self, mids: list[tuple[int, int]]) -> None:
        for mid, qos in mids:
            self.client.ack(mid, qos)

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.client.disconnect()
