"""Broker addresses and paho-mqtt clients (MQTT 5) for both the device and the fleet side."""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from paho.mqtt.client import Client

from edgekit.core.errors import InputError

MQTT_LOG = logging.getLogger("edgekit.mqtt")


def _callback_errors(client: Client, userdata: object, level: int, message: str) -> None:
    """paho's word that a callback raised (and was stopped there): one error line. Its other
    lines (every packet; "not connected" at each loop while the broker is away) stay out."""
    if message.startswith("Caught exception in"):
        MQTT_LOG.error("mqtt: %s", message)

PASSWORD_ENV = "EDGEKIT_MQTT_PASSWORD"


class BrokerError(InputError):
    """A broker address or its TLS files are wrong."""


@dataclass(frozen=True)
class Broker:
    """``mqtt://[user[:password]@]host[:1883]`` or ``mqtts://...[:8883]`` (TLS), with
    optional CA, client certificate and key files. The password may come from EDGEKIT_MQTT_PASSWORD."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        ca: Path | str | None = None,
        cert: Path | str | None = None,
        key: Path | str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> Broker:
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise BrokerError(f"broker {url!r}: write it as mqtt://host:1883 or mqtts://host:8883")
        try:
            port = parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise BrokerError(f"broker {url!r}: {exc}") from exc
        files = {
            name: Path(value) if value else None for name, value in (("ca", ca), ("cert", cert), ("key", key))
        }
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise BrokerError(f"TLS {name} file {path}: no such file")
        if (files["cert"] is None) != (files["key"] is None):
            raise BrokerError("a TLS client certificate needs its key, and a key its certificate")
        return cls(
            host=parsed.hostname,
            port=port,
            tls=parsed.scheme == "mqtts" or files["ca"] is not None,
            username=username or (unquote(parsed.username) if parsed.username else None),
            password=password
            or (unquote(parsed.password) if parsed.password else None)
            or os.environ.get(PASSWORD_ENV),
            **files,
        )

    @property
    def url(self) -> str:
        """Without credentials, for log lines."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def client(self, client_id: str) -> Client:
        """A configured paho client, not yet connected."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        # A callback's exception would end paho's network thread, silently: the process lives
        # on, the broker publishes the last will, and nothing restarts it. paho logs it instead.
        client.suppress_exceptions = True
        client.on_log = _callback_errors
        if self.tls:
            client.tls_set(
                ca_certs=str(self.ca) if self.ca else None,
                certfile=str(self.cert) if self.cert else None,
                keyfile=str(self.key) if self.key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if self.username:
            client.username_pw_set(self.username, self.password)
        return client
