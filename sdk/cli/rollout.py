"""``edgekit agent`` on devices, and ``fleet deploy`` / ``fleet rollout`` for operators."""

from __future__ import annotations

import logging
import re
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli.common import print_json, ui_console
from edgekit.cli.fleet import _broker, fleet
from edgekit.cli.options import broker_options, json_option

if TYPE_CHECKING:
    from edgekit.rollout.deploy import DeployOptions

_key_option = click.option(
    "--key", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True,
    help="The publisher's private key (edgekit keys init --publisher); devices trust its .pub.",
)
_group_option = click.option(
    "--group", default=None, help="One group of the fleet. Default: the whole fleet."
)
def _history_option(command: Any) -> Any:
    command = click.option(
        "--db", default=None,
        help="Fleet database the events also go to, for the dashboard (SQLite path or postgresql:// URL).",
    )(command)
    return click.option(
        "--history", type=click.Path(path_type=Path, dir_okay=False), default=None,
        help="Rollout history (JSON lines). Default: $EDGEKIT_HOME/fleets/FLEET/rollouts.jsonl.",
    )(command)


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", value.strip())
    if not match:
        raise click.BadParameter(f"{value!r}: write seconds (90), or 90s, 15m, 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _fraction(ctx: click.Context, param: click.Parameter, value: str) -> float:
    text = value.strip()
    try:
        number = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        number = -1.0
    if not 0 < number <= 1:
        raise click.BadParameter(f"{value!r}: write a share of the devices, such as 10% or 0.1")
    return number


@click.command()
@broker_options
@_group_option
@click.option("--device-id", default=None, help="Default: this machine's id (as telemetry uses).")
@click.option("--fleet-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where fleet.secret is. Default: $EDGEKIT_HOME/fleets/FLEET.")
@click.option("--epoch-s", type=click.FloatRange(min=1), default=86400.0, show_default=True,
              help="How long one pseudonym lasts: as the device's telemetry.")
@json_option
def agent(fleet: str, group: str | None, device_id: str | None, fleet_dir: Path | None, epoch_s: float,
          as_json: bool, **tls: Any) -> None:
    """Keep this device on the version its fleet's signed rollout documents ask for.

    \b
    It verifies each document against this device's trust store (edgekit trust add),
    fetches the bundle it names into memory (HTTP with resume, or MQTT chunks), checks
    its sha256 and size, installs it through the encrypted store, checks that it loads
    and answers, and reports each step on edgekit/FLEET/NODE/agent. Whatever serves the
    model (edgekit serve, or Model.load("NAME")) keeps running the active version, and
    edgekit serve swaps to the new one with no failed request. It runs until SIGTERM.
    \b
    Example (a systemd unit is in docs/rollout.md):
      edgekit agent --broker mqtts://gw:8883 --fleet factory-7 --group line-3
    """
    from edgekit.core.deployment import check_group
    from edgekit.runtime.agent import Agent, AgentConfig

    logging.getLogger("edgekit.agent").setLevel(logging.INFO)
    config = AgentConfig(_broker(**tls), fleet, check_group(group), device_id, fleet_dir, epoch_s)
    running = Agent(config).start()
    status = {"fleet": fleet, "group": group, "node": running.status.node, "broker": config.broker.url}
    if as_json:
        print_json(status)
    else:
        logging.getLogger("edgekit.agent").info("agent: node %s of fleet %s", status["node"], fleet)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    running.stop()


@fleet.command("deploy")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@broker_options
@_key_option
@_group_option
@click.option(
    "--canary",
    default="10%",
    show_default=True,
    callback=_fraction,
    help="Share of the devices that get it first.",
)
@click.option(
    "--watch",
    "watch_s",
    default="15m",
    show_default=True,
    callback=_duration,
    help="How long the canaries are watched before a decision (90s, 15m, 1h).",
)
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="How much the canaries' error rate may exceed the control group's.",
)
@click.option(
    "--max-p95-ms",
    type=click.FloatRange(0),
    default=40.0,
    show_default=True,
    help="How many ms the canaries' p95 latency may exceed the control group's.",
)
@click.option(
    "--max-drift",
    type=click.FloatRange(0),
    default=0.25,
    show_default=True,
    help="How much the canaries' drift score (PSI) may exceed the control group's.",
)
@click.option(
    "--min-calls",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="Calls the canaries must answer before they can be promoted.",
)
@click.option(
    "--serve",
    default=None,
    metavar="HOST:PORT",
    help="Serve the bundle over HTTP from here (devices resume downloads).",
)
@click.option("--public-host", default=None, help="The host name devices use for --serve. Default: its host.")
@click.option(
    "--bundle-url", default=None, help="Devices fetch the bundle from this URL (an existing server)."
)
@click.option("--no-mqtt-copy", is_flag=True, help="Do not also publish the bundle as retained MQTT chunks.")
@click.option(
    "--settle",
    "settle_s",
    default="2m",
    show_default=True,
    callback=_duration,
    help="After the decision, how long to wait for every device to follow it.",
)
@_history_option
@json_option
@click.pass_context
def fleet_deploy(
    ctx: click.Context, bundle: Path, broker: str, fleet: str, as_json: bool, **params: Any
) -> None:
    """Roll BUNDLE out to a fleet: canaries first, watched, then promoted or rolled back.

    \b
    The signed document names the canaries (chosen from the devices' pseudonyms, the same
    on every restart), the bundle's sha256 and size, and where to fetch it. The canaries'
    telemetry is compared with the control group's for --watch; a canary that reports
    failed, or a broken rule, rolls the rollout back at once. Each decision and its numbers
    go to the rollout history. Exit status: 0 promoted, 1 rolled back.
    \b
    Example:
      edgekit fleet deploy meter-v2.ekb --broker mqtt://gw --fleet factory-7 --key publisher.key \\
          --canary 10% --watch 15m --max-error-rate 0.01 --max-p95-ms 40 --max-drift 0.25
    """
    from edgekit.rollout.deploy import deploy
    from edgekit.views.rollout import deploy_progress, print_outcome

    options = deploy_options(bundle, broker, fleet, params)
    outcome = deploy(options, deploy_progress(ui_console(ctx), as_json))
    if as_json:
        print_json(outcome.summary())
    else:
        print_outcome(ui_console(ctx), outcome)
    ctx.exit(0 if outcome.decision == "promoted" else 1)


def deploy_options(bundle: Path, broker: str, fleet: str, params: dict[str, Any]) -> DeployOptions:
    """``fleet deploy``'s options from its click parameters, each by name."""
    from edgekit.core.deployment import check_group
    from edgekit.rollout.deploy import DeployOptions
    from edgekit.rollout.health import Rules

    rules = Rules(
        max_error_rate=params["max_error_rate"], max_p95_ms=params["max_p95_ms"],
        max_drift=params["max_drift"], min_calls=params["min_calls"],
    )
    return DeployOptions(
        bundle=bundle, broker=_broker(broker, params["tls_ca"], params["tls_cert"], params["tls_key"]),
        fleet=fleet, key=params["key"], group=check_group(params["group"]), canary=params["canary"],
        watch_s=params["watch_s"], rules=rules, serve=params["serve"], public_host=params["public_host"],
        bundle_url=params["bundle_url"], mqtt_copy=not params["no_mqtt_copy"], settle_s=params["settle_s"],
        history=params["history"], db=params["db"],
    )


@fleet.group("rollout")
def rollout() -> None:
    """A fleet's rollouts: where they stand, and promote or abort by hand (docs/rollout.md)."""


@rollout.command("status")
@broker_options
@_group_option
@json_option
@click.pass_context
def rollout_status(ctx: click.Context, broker: str, fleet: str, group: str | None, as_json: bool,
                   **tls: Any) -> None:
    """Per group: the document in force, the devices running each version, healthy, phase."""
    from edgekit.rollout.fleet import FleetState, connect, snapshot
    from edgekit.views.rollout import print_status, status_rows

    inbox = connect(_broker(broker, **tls), fleet)
    try:
        state = snapshot(inbox, FleetState(fleet))
    finally:
        inbox.stop()
    rows = status_rows(state, group)
    if as_json:
        print_json(rows)
    else:
        print_status(ui_console(ctx), fleet, rows)


def _override(phase: str) -> Any:
    @broker_options
    @_key_option
    @_group_option
    @_history_option
    @json_option
    def command(broker: str, fleet: str, key: Path, group: str | None, history: Path | None, db: str | None,
                as_json: bool, **tls: Any) -> None:
        from edgekit.cli.common import say
        from edgekit.rollout.deploy import override

        final = override(_broker(broker, **tls), fleet, group, key, phase, history, db)
        target = final.target(is_canary=False)
        data = {"rollout": final.rollout, "phase": final.phase, "version": target, "serial": final.serial}
        say(as_json, data,
            f"rollout {final.rollout}: {final.phase} by hand; every device goes to v{target}")

    return command


rollout.command("promote", help="Promote the canary rollout to every device now, whatever the rules say.")(
    _override("promoted")
)
rollout.command("abort", help="Roll the rollout back on every device now (canary or promoted).")(
    _override("aborted")
)

COMMANDS = (agent,)
