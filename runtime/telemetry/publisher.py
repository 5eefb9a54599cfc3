"""The publisher thread: moves outbox entries to the broker and deletes them on PUBACK.

One thread owns the paho client and runs its network loop, so nothing here ever blocks or
raises into ``predict``. A fresh client per connection means paho's in-memory queue never
holds anything the outbox does not: after every (re)connect the outbox replays from its
oldest entry, in sequence order, and the collector drops duplicates by sequence number.

A PUBACK that says "No matching subscribers" (MQTT 5) means no collector has the message:
the broker took it and threw it away, as Mosquitto 2.0 does right after a restart, before the
collectors' shared subscriptions are made again. Such an entry stays in the outbox, and the
publisher pauses (backing off while nobody listens) and replays from the oldest entry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgekit.core.telemetry import topic
from edgekit.runtime.telemetry.broker import Broker
from edgekit.runtime.telemetry.outbox import Outbox

log = logging.getLogger("edgekit.telemetry")

NO_MATCHING_SUBSCRIBERS = 0x10


class Publisher(threading.Thread):
    def __init__(
        self,
        broker: Broker,
        fleet: str,
        outbox: Outbox,
        current_node: Callable[[], str],
        tick: Callable[[], None],
        *,
        inflight: int = 64,
        backoff_max_s: float = 30.0,
        message_expiry_s: int = 7 * 86400,
    ) -> None:
        super().__init__(name="edgekit-telemetry", daemon=True)
        self.broker = broker
        self.fleet = fleet
        self.outbox = outbox
        self._current_node = current_node
        self._tick = tick
        self._inflight_max = inflight
        self._backoff_max = backoff_max_s
        self._expiry = message_expiry_s
        self._halt = threading.Event()
        self._client: Client | None = None
        self._node: str | None = None
        self._connected = False
        self._inflight: dict[int, int] = {}
        self._acked: list[int] = []
        self._cursor = 0
        self._backoff = 0.5
        self._next_attempt = 0.0
        self._unheard_backoff = 0.5
        self._held_until: float | None = None
        self._expired = 0.0
        self.sent = 0
        self.rejected = 0
        self.last_error: str | None = None
        self._state = "starting"

    @property
    def connected(self) -> bool:
        return self._connected

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._tick()
                self._step()
            except Exception as exc:  # never let the thread die: log once and keep going
                self._fail(f"telemetry: {type(exc).__name__}: {exc}")
                self._drop_client()
                self._halt.wait(0.5)
        self._shutdown()

    def _step(self) -> None:
        wanted = self.outbox.oldest_node() or self._current_node()
        if self._client is not None and self._node != wanted and not self._inflight:
            self._leave()  # an epoch ended: entries of the new pseudonym go out under its own id
        if self._client is None:
            if time.monotonic() < self._next_attempt:
                if time.monotonic() - self._expired > 1.0:
                    self.outbox.expire()
                    self._expired = time.monotonic()
                self._halt.wait(0.05)
                return
            self._connect(wanted)
            return
        if self._connected and not self._holding():
            self._publish_pending()
        client = self._client  # a failed write may have dropped it
        if client is not None:
            client.loop(timeout=0.02)
        self._settle()

    def _connect(self, node: str) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = self.broker.client(node)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.will_set(topic(self.fleet, node, "status"), "offline", qos=1, retain=True)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        self._client, self._node = client, node
        self._inflight.clear()
        self._cursor = 0
        self._held_until = None
        try:
            client.connect(
                self.broker.host, self.broker.port, keepalive=30, clean_start=True, properties=properties
            )
        except Exception as exc:  # socket, TLS and DNS errors
            self._fail(f"telemetry: cannot reach broker {self.broker.url}: {exc}; reports wait on disk")
            self._drop_client()

    def _on_connect(
        self, client: Client, userdata: object, flags: ConnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._fail(f"telemetry: broker {self.broker.url} refused the connection: {reason}")
            self._drop_client()
            return
        self._connected = True
        self._backoff = 0.5
        assert self._node is not None
        client.publish(topic(self.fleet, self._node, "status"), "online", qos=1, retain=True)
        if self._state != "connected":
            log.info("telemetry: connected to %s", self.broker.url)
        self._state = "connected"
        self.last_error = None

    def _on_disconnect(
        self, client: Client, userdata: object, flags: DisconnectFlags, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is self._client and not self._halt.is_set():
            self._fail(f"telemetry: lost broker {self.broker.url} ({reason}); reports wait on disk")
            self._drop_client()

    def _on_publish(
        self, client: Client, userdata: object, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return  # the status message
        if reason.value == NO_MATCHING_SUBSCRIBERS:
            self._unheard(seq)
            return
        self._unheard_backoff = 0.5
        if reason.is_failure:
            self.rejected += 1
            log.warning(
                "telemetry: broker refused message %d on %s (%s); dropped", seq, self.broker.url, reason
            )
        else:
            self.sent += 1
            if self._state != "connected":
                log.info("telemetry: a collector takes reports at %s again", self.broker.url)
                self._state, self.last_error = "connected", None
        self._acked.append(seq)

    def _unheard(self, seq: int) -> None:
        """Nobody subscribed took ``seq``: keep it, and replay once the pause is over."""
        if self._held_until is None:
            self._held_until = time.monotonic() + self._unheard_backoff
            self._fail(
                f"telemetry: no collector is subscribed at {self.broker.url} (the broker answered "
                f"'No matching subscribers'); reports wait on disk, sent again in {self._unheard_backoff:g} s"
            )
            self._unheard_backoff = min(self._unheard_backoff * 2, self._backoff_max)

    def _holding(self) -> bool:
        """Paused after an unheard message, until its time passes and the rest are answered."""
        if self._held_until is None:
            return False
        if time.monotonic() < self._held_until or self._inflight:
            return True
        self._held_until, self._cursor = None, 0  # replay from the oldest entry still kept
        return False

    def _publish_pending(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        room = self._inflight_max - len(self._inflight)
        if room <= 0:
            return
        for entry in self.outbox.pending(self._cursor, room):
            if entry.node != self._node:
                break  # a later epoch's entries wait for a client of that pseudonym
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = self._expiry
            if self._client is None:
                return
            info = self._client.publish(
                topic(self.fleet, entry.node, entry.kind), entry.payload, qos=1, properties=properties
            )
            if info.rc != 0:
                return  # disconnected: on_disconnect replays from the outbox
            self._inflight[info.mid] = entry.seq
            self._cursor = entry.seq

    def _settle(self) -> None:
        if self._acked:
            acked, self._acked = self._acked, []
            self.outbox.ack(acked)

    def _leave(self) -> None:
        """Clear the old pseudonym's retained status and disconnect."""
        client = self._client
        assert self._node is not None and client is not None
        self._client = None  # so that the disconnect below is not taken for a lost broker
        client.publish(topic(self.fleet, self._node, "status"), b"", qos=1, retain=True)
        client.loop(timeout=0.1)
        client.disconnect()
        client.loop(timeout=0.1)
        self._drop_client(backoff=False)

    def _drop_client(self, backoff: bool = True) -> None:
        client, self._client = self._client, None
        self._connected = False
        self._inflight.clear()
        self._acked.clear()
        if client is not None:
            try:
                client.socket() and client.disconnect()
            except Exception:  # the socket is already gone
                pass
        if backoff:
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self._backoff_max)
        else:
            self._next_attempt = 0.0

    def _fail(self, message: str) -> None:
        self.last_error = message
        if self._state != message:
            log.warning(message)
        self._state = message

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.size()[0] == 0:
                return True
            time.sleep(0.02)
        return self.outbox.size()[0] == 0

    def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._connected and self._node is not None:
            try:
                client.publish(topic(self.fleet, self._node, "status"), "offline", qos=1, retain=True)
                client.loop(timeout=0.1)
                client.disconnect()
                client.loop(timeout=0.1)
            except Exception:  # the broker went away while closing: the will says offline
                pass
        self._client = None
        self._connected = False
