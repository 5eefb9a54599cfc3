"""``edgekit serve``: the device's models over the Open Inference Protocol (REST and gRPC)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from edgekit.cli.common import ui_console
from edgekit.cli.options import artifact_format_option, bundle_options, json_option, threads_option, together
from edgekit.cli.running import model_options, telemetry_from, telemetry_options
from edgekit.core.errors import InputError

if TYPE_CHECKING:
    from edgekit.runtime.serve import Limits

_file = click.Path(path_type=Path, dir_okay=False, exists=True)

_network_options = together(
    click.option("--host", default="127.0.0.1", show_default=True,
                 help="Address to listen on. Off loopback, --token-file or mutual TLS is required."),
    click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
                 help="REST port (0: any free port; --json says which)."),
    click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True,
                 help="gRPC port (0: any free port)."),
    click.option("--no-grpc", is_flag=True, help="Serve REST only."),
    click.option("--token-file", type=_file, default=None,
                 help="A file holding the bearer token every request must send (Authorization: Bearer ...)."),
    click.option("--tls-cert", type=_file, default=None, help="Serve TLS with this certificate (PEM)."),
    click.option("--tls-key", type=_file, default=None, help="The private key of --tls-cert (PEM)."),
    click.option("--tls-client-ca", type=_file, default=None,
                 help="Mutual TLS: clients must present a certificate this CA signed."),
)
_batch_options = together(
    click.option("--max-batch", type=click.IntRange(1, 4096), default=None,
                 help="Dynamic batching: gather concurrent requests up to this many rows. Default 1 (off)."),
    click.option("--max-delay-ms", type=click.FloatRange(0, 1000), default=None,
                 help="How long the first request of a batch waits for others. Default 0."),
    click.option("--max-queue", type=click.IntRange(1, 100_000), default=None,
                 help="Requests waiting per model before new ones get 503. Default 64."),
    click.option("--config", "config_file", type=_file, default=None,
                 help="TOML: [batching] for every model, [models.NAME] for one (see docs/serve.md)."),
)
_limit_options = together(
    click.option("--max-body-mb", type=click.FloatRange(0, min_open=True), default=64.0, show_default=True,
                 help="Largest request body (413 above it)."),
    click.option("--max-elements", type=click.IntRange(1), default=16 << 20, show_default=True,
                 help="Most elements per tensor, checked from its shape before anything is allocated."),
    click.option("--max-inflight-mb", type=click.FloatRange(0, min_open=True), default=256.0,
                 show_default=True, help="Request bodies being read at once, in all: 503 above it."),
    click.option("--max-connections", type=click.IntRange(1), default=512, show_default=True,
                 help="Open REST connections; more are closed at once (kept below the open-files limit)."),
    click.option("--header-timeout", "header_timeout_s", type=click.FloatRange(0, min_open=True),
                 default=10.0, show_default=True, help="Seconds a client has to send a request's headers."),
    click.option("--timeout", "timeout_s", type=click.FloatRange(0, min_open=True), default=30.0,
                 show_default=True, help="Seconds per request, for its body to arrive and for its answer."),
    click.option("--access-log/--no-access-log", default=True, show_default=True,
                 help="One line per request on stderr: model, version, status, latency."),
)


@click.command()
@click.argument("models", nargs=-1)
@_network_options
@_batch_options
@_limit_options
@threads_option
@artifact_format_option
@bundle_options
@telemetry_options
@json_option
@click.pass_context
def serve(ctx: click.Context, models: tuple[str, ...], **fields: Any) -> None:
    """Serve models over the Open Inference Protocol (KServe v2), REST and gRPC, so that
    any v2 client (Triton's, KServe's, curl) can call them.

    MODELS are store names (the active version) or .ekb bundle paths. Without any: every
    model in the store. Store models follow `edgekit install`, `models activate` and
    `models rollback` while serving: the new version is loaded and warmed first, and no
    request fails. SIGTERM finishes the requests in flight, then exits.

    \b
      edgekit serve                                   every store model on 127.0.0.1:8000 and :8001
      edgekit serve meter --max-batch 8 --max-delay-ms 2
      edgekit serve meter --host 0.0.0.0 --token-file /etc/edgekit/serve.token
      curl localhost:8000/v2/health/ready
      curl localhost:8000/v2/models/meter
      curl -X POST localhost:8000/v2/models/meter/infer \\
           -d '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    """
    from edgekit.runtime.serve import ServeConfig, check_installed
    from edgekit.runtime.serve import serve as run_server

    check_installed()
    as_json = fields.pop("as_json")
    access_log = fields.pop("access_log")
    telemetry = (fields.pop("telemetry_url"), fields.pop("fleet"), fields.pop("telemetry_config"))
    telemetry_from(*telemetry)  # checks the options now, not at the first load
    config = ServeConfig(
        models=models, host=fields["host"], port=fields["port"],
        grpc_port=None if fields["no_grpc"] else fields["grpc_port"], token=_token(fields["token_file"]),
        tls=_tls(fields), limits=_limits(fields),
        timeout_s=fields["timeout_s"], load=model_options(fields),
        telemetry=(lambda: telemetry_from(*telemetry)) if any(telemetry) else None,
        **_batching(fields),
    )
    _logging(access_log)
    console = ui_console(ctx)
    run_server(config, lambda info: _started(info, as_json, console))


def _limits(fields: dict[str, Any]) -> Limits:
    from edgekit.runtime.serve import Limits

    return Limits(
        max_body_bytes=int(fields["max_body_mb"] * (1 << 20)), max_elements=fields["max_elements"],
        max_inflight_bytes=int(fields["max_inflight_mb"] * (1 << 20)),
        max_connections=fields["max_connections"], header_timeout_s=fields["header_timeout_s"],
    )  # fmt: skip


def _started(info: dict[str, Any], as_json: bool, console: Any) -> None:
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
        sys.stdout.flush()
        return
    for model in info["models"]:
        batch = f", batches up to {model['max_batch']}" if model["max_batch"] > 1 else ""
        console.print(
            f"serving {model['name']} v{model['version']} ({model['format']} {model['precision']}{batch})"
        )
    grpc = f" and gRPC {info['grpc']}" if info["grpc"] else ""
    console.print(f"listening: REST {info['rest']}/v2{grpc}; Ctrl-C or SIGTERM to stop", soft_wrap=True)


def _token(path: Path | None) -> bytes | None:
    if path is None:
        return None
    token = path.read_bytes().strip()
    if len(token) < 16 or any(c <= 32 or c > 126 for c in token):
        raise InputError(f"--token-file {path}: a token is 16 or more printable characters without spaces")
    return token


def _tls(fields: dict[str, Any]) -> Any:
    from edgekit.runtime.serve import TLS

    cert, key, ca = fields["tls_cert"], fields["tls_key"], fields["tls_client_ca"]
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if cert is None:
        if ca is not None:
            raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    return TLS(cert, key, ca)


def _batching(fields: dict[str, Any]) -> dict[str, Any]:
    """``batch`` and ``per_model``: [batching] from --config, then the flags, then [models.NAME]."""
    from pydantic import ValidationError

    from edgekit.runtime.serve import BatchSettings

    table: dict[str, Any] = {}
    path = fields["config_file"]
    try:
        if path is not None:
            table = tomllib.loads(path.read_text())
        flags = {k: fields[k] for k in ("max_batch", "max_delay_ms", "max_queue") if fields[k] is not None}
        batch = BatchSettings(**{**table.get("batching", {}), **flags})
        per_model = {
            name: BatchSettings(**{**batch.model_dump(), **settings})
            for name, settings in table.get("models", {}).items()
        }
    except (tomllib.TOMLDecodeError, ValidationError, TypeError) as exc:
        first = str(exc).splitlines()
        raise InputError(f"--config {path}: {' '.join(first[:3])}") from None
    return {"batch": batch, "per_model": per_model}


def _logging(access_log: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    serve_log = logging.getLogger("edgekit.serve")
    serve_log.addHandler(handler)
    serve_log.setLevel(logging.INFO)
    serve_log.propagate = False
    logging.getLogger("edgekit.serve.access").setLevel(logging.INFO if access_log else logging.WARNING)


COMMANDS = (serve,)
