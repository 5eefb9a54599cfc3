"""``edgekit keys``: the publisher's signing key and the device's store key."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.common import say
from edgekit.cli.options import json_option, output_option


@click.group()
def keys() -> None:
    """Create signing keys (publisher) and the device key that encrypts the model store."""


@keys.command("init")
@click.option("--publisher", "kind", flag_value="publisher", help="An Ed25519 signing key and its .pub.")
@click.option("--device", "kind", flag_value="device", help="This device's store key, under EDGEKIT_HOME.")
@output_option("Where the publisher key goes (default: publisher.key).")
@json_option
def keys_init(kind: str | None, output: Path | None, as_json: bool) -> None:
    """Create a key; existing keys are never overwritten.

    \b
    Examples:
      edgekit keys init --publisher -o publisher.key    # on the build machine
      edgekit keys init --device                        # on each device
    """
    if kind is None:
        raise click.UsageError("say which key: --publisher or --device")
    if kind == "publisher":
        from edgekit.core.signing import create_publisher_key

        private = output or Path("publisher.key")
        public, identifier = create_publisher_key(private)
        result = {"private_key": str(private), "public_key": str(public), "key_id": identifier}
        message = f"wrote {private} (keep it secret) and {public} (give it to devices); key id {identifier}"
    else:
        from edgekit.runtime.keys import create_device_key

        path = create_device_key()
        result = {"device_key": str(path)}
        message = f"wrote {path} (mode 600)"
    say(as_json, result, message)


@keys.command("rotate")
@json_option
def keys_rotate(as_json: bool) -> None:
    """Replace the device key and re-wrap every stored model's data key; the old key stops working.

    Crash-safe: an interrupted rotation finishes the next time the store opens.
    """
    from edgekit.runtime.store import Store

    Store().rotate_device_key()
    say(as_json, {"rotated": True}, "device key rotated; every model re-wrapped")


COMMANDS = (keys,)
