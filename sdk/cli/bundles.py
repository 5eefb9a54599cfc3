"""Commands on a bundle file: ``inspect`` and ``sign``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from edgekit.cli.common import print_json, say
from edgekit.cli.options import json_option


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@json_option
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what a bundle holds and who signed it, after checking every artifact's hash."""
    from edgekit import views
    from edgekit.core.signing import inspect_bundle

    manifest, signature = inspect_bundle(bundle)
    if as_json:
        print_json({**manifest.model_dump(mode="json"), "signature": signature})
    else:
        views.print_manifest(Console(), bundle, manifest, signature)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--key", "key_path", type=click.Path(path_type=Path), required=True, help="The publisher's private key."
)
@json_option
def sign(bundle: Path, key_path: Path, as_json: bool) -> None:
    """Sign a bundle in place: Ed25519 over its manifest, which holds every artifact's hash."""
    from edgekit.core.signing import load_signing_key, sign_bundle

    identifier = sign_bundle(bundle, load_signing_key(key_path))
    say(as_json, {"bundle": str(bundle), "key_id": identifier}, f"signed {bundle} with key {identifier}")


COMMANDS = (inspect, sign)
