"""The device's store and trust: ``install``, ``models`` and ``trust``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from edgekit.cli.common import print_json, say, warning_line
from edgekit.cli.options import bundle_options, json_option


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@bundle_options
@click.option(
    "--allow-downgrade",
    is_flag=True,
    help="Accept a version older than the highest this device has installed.",
)
@json_option
def install(
    bundle: Path, allow_unsigned: bool, max_bytes: int | None, allow_downgrade: bool, as_json: bool
) -> None:
    """Verify a bundle (signature, then every hash) and store it encrypted, as the active version.

    \b
    Example:
      edgekit keys init --device && edgekit trust add publisher.pub
      edgekit install digits.ekb
    """
    from edgekit.runtime.store import Store

    done = Store().install(
        bundle, allow_unsigned=allow_unsigned, allow_downgrade=allow_downgrade, max_bytes=max_bytes
    )
    who = f"signed by {done.signed_by}" if done.signed_by else "UNSIGNED"
    if done.warning and not as_json:
        warning_line(done.warning)
    say(as_json, done.__dict__, f"installed {done.name} v{done.version} ({who}), now active")


@click.group()
def models() -> None:
    """The models in this device's encrypted store."""


@models.command("list")
@json_option
def models_list(as_json: bool) -> None:
    """Installed models and versions; * marks the active one."""
    from edgekit.runtime.store import Store

    found = Store().installed()
    if as_json:
        print_json([m.__dict__ for m in found])
        return
    for m in found:
        problem = f"  BROKEN: {m.problem}" if m.problem else ""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.installed_at)) if m.installed_at else "?"
        runs = f"{m.artifacts} for {m.target}" if m.artifacts else "(manifest unreadable here)"
        click.echo(
            f"{'*' if m.active else ' '} {m.name} v{m.version}  {runs}  installed {when}  "
            f"{m.signed_by or 'unsigned'}{problem}"
        )
    if not found:
        click.echo("no models installed; install one with: edgekit install BUNDLE")


@models.command("activate")
@click.argument("name")
@click.argument("version", type=int)
@json_option
def models_activate(name: str, version: int, as_json: bool) -> None:
    """Make an installed VERSION the one Model.load(NAME) runs."""
    from edgekit.runtime.store import Store

    Store().activate(name, version)
    say(as_json, {"name": name, "active": version}, f"{name} v{version} is active")


@models.command("rollback")
@click.argument("name")
@json_option
def models_rollback(name: str, as_json: bool) -> None:
    """Activate the newest installed version older than the active one."""
    from edgekit.runtime.store import Store

    version = Store().rollback(name)
    say(as_json, {"name": name, "active": version}, f"{name} v{version} is active")


@models.command("remove")
@click.argument("name")
@click.argument("version", type=int)
@json_option
def models_remove(name: str, version: int, as_json: bool) -> None:
    """Delete an installed version that is not active."""
    from edgekit.runtime.store import Store

    Store().remove(name, version)
    say(as_json, {"name": name, "removed": version}, f"removed {name} v{version}")


@click.group()
def trust() -> None:
    """The publishers whose bundles this device accepts (EDGEKIT_HOME/trust)."""


@trust.command("add")
@click.argument("public_key", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@json_option
def trust_add(public_key: Path, as_json: bool) -> None:
    """Trust the publisher whose public key is PUBLIC_KEY (a .pub from keys init --publisher)."""
    from edgekit.core.signing import Trust

    identifier = Trust().add(public_key)
    say(as_json, {"key_id": identifier}, f"trusting key {identifier}")


@trust.command("list")
@json_option
def trust_list(as_json: bool) -> None:
    """List the trusted publisher keys."""
    from edgekit.core.signing import Trust

    identifiers = sorted(Trust().keys())
    say(as_json, identifiers, "\n".join(identifiers) or "no trusted keys")


@trust.command("remove")
@click.argument("key_id")
@json_option
def trust_remove(key_id: str, as_json: bool) -> None:
    """Stop trusting a publisher key."""
    from edgekit.core.signing import Trust

    Trust().remove(key_id)
    say(as_json, {"removed": key_id}, f"no longer trusting {key_id}")


@click.command()
@click.option("--broker", default=None, metavar="URL", help="Also check that this MQTT broker is reachable.")
@json_option
def doctor(broker: str | None, as_json: bool) -> None:
    """What this machine can run, and what stands in the way: engines and their versions, the
    execution providers ONNX Runtime has (CUDA and TensorRT, or why not), protobuf for serve's
    gRPC, the store (readable, the device key there), trusted publishers, and with --broker
    the broker. Each problem is one line with its fix; exit code 1 when something fails.

    \b
    Examples:
      edgekit doctor
      edgekit doctor --broker mqtt://gateway:1883 --json
    """
    from dataclasses import asdict

    from edgekit.runtime.doctor import run_checks

    checks = run_checks(broker)
    if as_json:
        print_json([asdict(check) for check in checks])
    else:
        marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
        for check in checks:
            click.echo(f"{marks[check.status]}  {check.name}: {check.found}")
            if check.fix:
                click.echo(f"      {'hint' if check.status == 'ok' else 'fix'}: {check.fix}")
    if any(check.status == "fail" for check in checks):
        raise SystemExit(1)


COMMANDS = (install, models, trust, doctor)
