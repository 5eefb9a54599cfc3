"""``edgekit fleet``: a fleet's keys, its live view, and its retraining data."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from edgekit.cli.common import print_json, say
from edgekit.cli.options import (
    broker_options,
    db_option,
    duration_option,
    fleet_dir_option,
    idle_option,
    json_option,
)


@click.group()
def fleet() -> None:
    """Operate a fleet: keys, a live view, the fleet database and dashboard, rollouts.

    See docs/telemetry.md, docs/fleet.md and docs/rollout.md."""


@fleet.command("init")
@click.argument("name")
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the keys go. Default: $EDGEKIT_HOME/fleets/NAME.",
)
@json_option
def fleet_init(name: str, folder: Path | None, as_json: bool) -> None:
    """Create a fleet's keys: fleet.key (keep it), fleet.pub and fleet.secret (for devices).

    \b
    Devices need fleet.secret (their ids become pseudonyms with it) and fleet.pub
    (retraining samples are encrypted to it); copy both to $EDGEKIT_HOME/fleets/NAME/
    on each device. Only fleet.key decrypts samples: it never leaves the operator.
    """
    from edgekit.fleet import init_fleet

    where = init_fleet(name, folder)
    say(
        as_json,
        {"fleet": name, "folder": str(where), "device_files": ["fleet.pub", "fleet.secret"]},
        f"fleet {name}: keys in {where}; copy fleet.pub and fleet.secret to each device's "
        f"$EDGEKIT_HOME/fleets/{name}/, keep fleet.key here",
    )


@fleet.command("watch")
@broker_options
@duration_option
@idle_option
@json_option
def fleet_watch(fleet: str, duration: float | None, idle: float | None, as_json: bool, **tls: Any) -> None:
    """Live table of a fleet: online/offline, inferences/s, p50/p95 latency, errors, drift.

    \b
    Drift is the population stability index against the bundle's reference data:
    below 0.1 ok, 0.1-0.25 a shift, above 0.25 drift (in red). With --json, one JSON
    line per event (report, status, gone) for scripts.
    \b
    Examples:
      edgekit fleet watch --broker mqtt://localhost:1883 --fleet factory-7
      edgekit fleet watch --broker mqtt://localhost:1883 --fleet factory-7 --json --duration 60
    Without a terminal (a pipe, a log) the table is printed once, when watch stops.
    """
    from edgekit.fleet import FleetView, Inbox, Limits, subscriptions, watch
    from edgekit.views.fleet import fleet_display

    view = FleetView(fleet)
    inbox = Inbox(_broker(**tls), subscriptions(fleet, ("report", "status"))).start()
    try:
        with fleet_display(Console(), view, as_json) as show:
            watch(inbox, view, Limits(duration, idle), show)
    finally:
        inbox.stop()


@fleet.command("collect")
@broker_options
@db_option(required=False)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder for the exports when collect stops (samples.npz, drift.html...). With no --db, the "
    "database is OUT/fleet.sqlite.",
)
@fleet_dir_option
@click.option(
    "--group",
    default="edgekit-collectors",
    show_default=True,
    help="Shared-subscription group: collectors in one group split the messages. 'none' subscribes "
    "plainly (one collector; Mosquitto 2.0 forgets shared subscriptions when it restarts).",
)
@click.option(
    "--session",
    default=None,
    help="Persistent session id, so messages wait at the broker while this collector is away. "
    "Default: edgekit-collect-FLEET-GROUP-HOST-N, N the lowest slot no other collector on this "
    "host holds (a restarted collector gets its own back). Two clients with one id take the "
    "session from each other: collect stops with an error when that happens.",
)
@duration_option
@idle_option
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Stop after this many samples.")
@json_option
@click.pass_context
def fleet_collect(
    ctx: click.Context, broker: str, duration: float | None, idle: float | None, as_json: bool, **fields: Any
) -> None:
    """Collect a fleet's reports, samples and statuses into the fleet database.

    \b
    Each message is committed before it is acknowledged to the broker, keyed by node,
    epoch and sequence number: a redelivered message is one row, and a collector that
    dies loses nothing. Run several with one --group (an MQTT 5 shared subscription) and
    one PostgreSQL to split a large fleet. Samples stay sealed in the database; each is
    checked to decrypt with the fleet key (which stays on this machine).
    Malformed, unknown-version and duplicate messages are counted and skipped.
    \b
    Examples:
      edgekit fleet collect --broker mqtt://gw:1883 --fleet factory-7 --db fleet.sqlite
      edgekit fleet collect --broker mqtt://gw:1883 --fleet factory-7 \\
          --db postgresql://ops@db/fleet --group ingest        # run N of these
      edgekit fleet collect --broker mqtt://gw:1883 --fleet factory-7 --out data/ --idle 30
      edgekit convert model.keras --target raspberry-pi-4 --calibration data/samples.npz -o v2.ekb
    With --out, collect exports there when it stops, as `edgekit fleet export` does.
    """
    from edgekit.fleet import CollectConfig, Limits, collect
    from edgekit.views.fleet import collect_progress, print_collect_summary

    if fields["db"] is None and fields["out"] is None:
        raise click.UsageError("give --db (SQLite path or postgresql:// URL) or --out FOLDER")
    tls = {name: fields.pop(name) for name in ("tls_ca", "tls_cert", "tls_key")}
    config = CollectConfig(_broker(broker, **tls), limits=Limits(duration, idle), **fields)
    progress = None if as_json else collect_progress(ctx.obj["ui"])
    summary = collect(config, progress)
    if as_json:
        print_json(summary)
    else:
        print_collect_summary(ctx.obj["ui"], summary)


@fleet.command("export")
@db_option(required=True)
@click.option("--fleet", default=None, help="Fleet name. Default: the only fleet in the database.")
@click.option(
    "--out", "-o", type=click.Path(path_type=Path, file_okay=False), required=True, help="Output folder."
)
@fleet_dir_option
@click.option("--labelled", is_flag=True, help="Only samples an operator labelled, with their labels as y.")
@json_option
def fleet_export(
    db: str, fleet: str | None, out: Path, fleet_dir: Path | None, labelled: bool, as_json: bool
) -> None:
    """Export a fleet's data from the database for retraining and review.

    \b
    OUT/samples.npz: arrays x, pred, confidence, node, seq (and y when every sample has a
    label: see --labelled), which `edgekit convert --calibration` and `--eval` take.
    OUT/drift.html and drift.json: each node's drift over time. OUT/reports.jsonl: every
    report. OUT/deadletter.jsonl: skipped messages. OUT/collect.json: the totals and gaps.
    Samples are decrypted here, with fleet.key.
    \b
    Examples:
      edgekit fleet export --db fleet.sqlite --fleet factory-7 --out data/
      edgekit fleet export --db fleet.sqlite --fleet factory-7 --out labelled/ --labelled
      edgekit convert model.keras --target raspberry-pi-4 --eval labelled/samples.npz -o v2.ekb
    """
    from edgekit.core.errors import EdgekitError
    from edgekit.fleet import drift_report, export, load_collector_key, open_engine
    from edgekit.fleet.export import check_fleet_known
    from edgekit.fleet.queries import fleet_state, only_fleet, read_reports

    engine = open_engine(db, create=False)
    fleet = fleet or only_fleet(engine, db)
    key = load_collector_key(fleet, fleet_dir)
    try:
        check_fleet_known(engine, fleet)
        summary = {
            **fleet_state(engine, fleet),
            "drift": drift_report(fleet, read_reports(engine, fleet))["fleet"],
        }
        written = export(engine, fleet, out, key, summary, labelled)
    except OSError as exc:  # a read-only or full folder
        raise EdgekitError(
            f"cannot write the export to {out}: {exc.strerror or exc}; choose another --out"
        ) from None
    finally:
        engine.dispose()
    say(
        as_json,
        {**summary, "out": str(out), "files": written},
        f"{summary['reports']} reports, {summary['samples']} samples of fleet {fleet} exported to {out}: "
        + ", ".join(written),
    )


@fleet.command("privacy")
@db_option(required=True)
@click.option("--fleet", default=None, help="Fleet name. Default: the only fleet in the database.")
@json_option
def fleet_privacy(db: str, fleet: str | None, as_json: bool) -> None:
    """What each device's reports say of their privacy, checked where a reader can check it.

    \b
    Per device pseudonym: the ε each report cost, the ε spent and the budget, what ε
    protects (one inference, or a device's whole window up to dp_clip inferences), k of
    k-suppression, what the device captures, and whether captured text is de-identified.
    Findings: ε spent that does not rise by each report's ε, a spent value past the
    budget, differential privacy switched off mid-epoch. Exits 1 when there is any.
    See docs/privacy.md.
    \b
    Examples:
      edgekit fleet privacy --db fleet.sqlite
      edgekit fleet privacy --db postgresql://ops@db/fleet --fleet factory-7 --json
    """
    from edgekit.fleet import open_engine
    from edgekit.fleet.privacy import fleet_privacy as privacy_of
    from edgekit.fleet.queries import only_fleet, read_reports
    from edgekit.views.privacy import findings, privacy_table

    engine = open_engine(db, create=False)
    try:
        fleet = fleet or only_fleet(engine, db)
        view = privacy_of(fleet, read_reports(engine, fleet))
    finally:
        engine.dispose()
    if as_json:
        print_json(view)
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(privacy_table(view))  # whole in a pipe
        for line in findings(view):
            click.echo(f"finding: {line}")
    if view["summary"]["findings"]:
        sys.exit(1)


@fleet.command("dashboard")
@db_option(required=True)
@click.option("--fleet", default=None, help="Fleet name. Default: the only fleet in the database.")
@fleet_dir_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Another host name requests may give (a reverse proxy's); others get 421. Repeatable.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port to listen on."
)
@click.option(
    "--token-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
    help="A file holding the access token; required off loopback.",
)
@click.option(
    "--bundle", "bundles", multiple=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A deployed bundle: its reference data gives the expected class shares and per-feature drift. "
    "Repeatable.",
)
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Serve HTTPS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="The certificate's private key.")
@json_option
def fleet_dashboard(token_file: Path | None, bundles: tuple[Path, ...], as_json: bool, **fields: Any) -> None:
    """A web dashboard over the fleet database, at http://127.0.0.1:8080.

    \b
    Pages: Fleet (one row per device: online, version, rate, latency, errors, drift,
    drops; sortable and filterable), Device (time series), Drift (which devices and
    features drift, since when), Samples (the captured samples, decrypted here with
    fleet.key, to label: labels go to the database and to `fleet export --labelled`),
    Rollouts (canary against control, the decisions; from `fleet deploy --db`), and
    Privacy (as `fleet privacy`).
    Pages update live. Everything is served from edgekit: no CDN, works offline.
    \b
    Off loopback a token is required: open http(s)://HOST:PORT/?token=TOKEN once (a
    secure, HttpOnly cookie keeps it), or send Authorization: Bearer TOKEN. Reach it over
    HTTPS there (--tls-cert/--tls-key, or a proxy).
    \b
    Examples:
      edgekit fleet dashboard --db fleet.sqlite
      edgekit fleet dashboard --db postgresql://ops@db/fleet --fleet factory-7 --bundle v2.ekb
      edgekit fleet dashboard --db fleet.sqlite --host 0.0.0.0 --token-file ops.token \\
          --tls-cert site.crt --tls-key site.key
    """
    from edgekit.fleet.dashboard import DashboardConfig, run_dashboard

    if (fields["tls_cert"] is None) != (fields["tls_key"] is None):
        raise click.UsageError("give --tls-cert and --tls-key together")
    token = token_file.read_text().strip().encode() if token_file else None
    if token_file is not None and not token:
        raise click.UsageError(f"{token_file} is empty: put the token in it")
    config = DashboardConfig(token=token, bundles=bundles, **fields)
    run_dashboard(config, partial(_started, as_json))


def _started(as_json: bool, info: dict[str, Any]) -> None:
    """One line when the dashboard listens: JSON for scripts, or where to open it."""
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
    else:
        click.echo(
            f"dashboard of fleet {info['fleet']}: {info['url']} (database {info['db']}); Ctrl-C stops it"
        )
    sys.stdout.flush()


def _broker(broker: str, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None) -> Any:
    from edgekit.runtime.telemetry.broker import Broker

    return Broker.parse(broker, ca=tls_ca, cert=tls_cert, key=tls_key)


COMMANDS = (fleet,)
