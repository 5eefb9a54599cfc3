"""The ``edgekit`` command line. Each command parses options, calls one sdk function, prints.

Heavy libraries (TensorFlow, ONNX Runtime) load only inside the commands that need them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

import edgekit
from edgekit.converters import Converter
from edgekit.converters.onnx import CALIBRATION_METHODS
from edgekit.errors import EdgekitError
from edgekit.profiles import DeviceProfile, load_all_profiles, load_profile

PRECISIONS = ("auto", "fp32", "fp16", "dynamic", "int8")


class ProfileType(click.ParamType):
    """``--target``: a shipped profile id, or a path to your own profile TOML."""

    name = "profile"

    def convert(self, value: Any, param: Any, ctx: Any) -> DeviceProfile:
        if isinstance(value, DeviceProfile):
            return value
        try:
            return load_profile(value)
        except EdgekitError as exc:
            self.fail(str(exc), param, ctx)


class ShapeType(click.ParamType):
    """``--input-shape``: comma-separated dims; N, ? or -1 for a dim left dynamic."""

    name = "shape"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int | None, ...]:
        if isinstance(value, tuple):
            return value
        dims: list[int | None] = []
        for part in str(value).replace("x", ",").split(","):
            part = part.strip()
            if part in ("N", "n", "?", "-1"):
                dims.append(None)
            elif part.isdigit() and int(part) > 0:
                dims.append(int(part))
            else:
                self.fail(f"'{value}' is not a shape like 1,3,224,224 (N for a dynamic batch)", param, ctx)
        return tuple(dims)


class EdgekitGroup(click.Group):
    """Turns edgekit errors into one line and an exit code; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            if _debug(ctx):
                raise
            _error_line(str(exc))
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            _error_line("interrupted")
            sys.exit(130)
        except Exception as exc:
            if _debug(ctx):
                raise
            _error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
            sys.exit(1)


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get("EDGEKIT_DEBUG") == "1"


def _error_line(message: str) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
duration_option = click.option(
    "--duration", type=click.FloatRange(min=0), default=None, help="Stop after this many seconds."
)
idle_option = click.option(
    "--idle",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop after this many seconds without a message.",
)


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(edgekit.__version__, prog_name="edgekit")
@click.option("--debug", is_flag=True, help="Show tracebacks and the converters' native logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Ship trained models to edge devices.

    \b
    On the build machine:
      edgekit targets                                which device profiles exist
      edgekit keys init --publisher -o publisher.key
      edgekit convert model.keras --target raspberry-pi-5 --calibration calib.npz \\
          --eval eval.npz --sign-key publisher.key -o model.ekb
      edgekit inspect model.ekb                      what is in it, hashes checked
    On the device:
      edgekit keys init --device && edgekit trust add publisher.pub
      edgekit install model.ekb                      verified, stored encrypted
      edgekit run model --input x.npy --top-k 3      by name, from the store
      edgekit run model --input x.npy --telemetry mqtt://gateway:1883 --fleet factory-7
    At the operator's desk:
      edgekit fleet init factory-7                   fleet keys; devices get .pub and .secret
      edgekit fleet watch --broker mqtt://broker:1883 --fleet factory-7
      edgekit fleet collect --broker mqtt://broker:1883 --fleet factory-7 --out data/
    """
    from edgekit.console import route_warnings, ui_stream

    ctx.obj = {"debug": debug, "ui": ui_stream()}
    route_warnings(ctx.obj["ui"])


@main.command()
@json_option
def targets(as_json: bool) -> None:
    """List the shipped device profiles (use --target ID or --target my.toml)."""
    from edgekit import views

    profiles = load_all_profiles()
    if as_json:
        _print_json([p.model_dump(mode="json") for p in profiles])
    else:
        Console().print(views.profiles_table(profiles))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    "profile",
    type=ProfileType(),
    required=True,
    help="Device profile id (see 'edgekit targets') or a path to a profile .toml.",
)
@click.option(
    "--precision",
    "-p",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="auto tries the profile's precisions in order and keeps the first that passes "
    "the accuracy gate and the budgets; for ONNX on a CPU-only profile it keeps the fastest "
    "that passes, measured on this host.",
)
@click.option(
    "--format",
    "format",
    type=click.Choice([*sorted(Converter.registry), "both"]),
    default=None,
    help="Artifact format; 'both' ships TFLite and ONNX in one bundle. "
    "Default: the profile's first format that can be made from MODEL.",
)
@click.option(
    "--calibration",
    "-c",
    type=click.Path(path_type=Path),
    default=None,
    help="Representative inputs for int8: .npz with array x (100-500 samples) or .npy.",
)
@click.option(
    "--eval",
    "evaluation",
    type=click.Path(path_type=Path),
    default=None,
    help="Held-out .npz with x and labels y (top-1 accuracy) or x alone (agreement).",
)
@click.option(
    "--calibration-method",
    type=click.Choice(CALIBRATION_METHODS),
    default="minmax",
    show_default=True,
    help="How ONNX int8 chooses activation ranges from the calibration data.",
)
@click.option(
    "--keep-float",
    multiple=True,
    metavar="PATTERN",
    help="Keep nodes (ONNX) or layers (TFLite int8) whose name matches PATTERN (fnmatch; repeatable) "
    "in float.",
)
@click.option(
    "--input-shape",
    type=ShapeType(),
    default=None,
    help="Fix an ONNX model's dynamic input dims, e.g. 1,3,224,224 (N keeps a dim dynamic). "
    "Default: from the calibration data.",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write an HTML page with the candidates, budgets and plots (needs edgekit[fleet] for plots).",
)
@click.option(
    "--prune",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    default=None,
    metavar="RATIO",
    help="Prune this fraction of a Keras model's channels (or weights, --prune-mode magnitude) "
    "before converting; fine-tunes on --train-data.",
)
@click.option(
    "--prune-mode",
    type=click.Choice(["structured", "magnitude"]),
    default="structured",
    show_default=True,
    help="structured removes whole channels (a smaller, faster model); magnitude zeroes weights "
    "(the file compresses).",
)
@click.option(
    "--train-data",
    type=click.Path(path_type=Path),
    default=None,
    help="Training data for --prune: .npz with x and integer labels y.",
)
@click.option(
    "--prune-epochs",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Fine-tuning epochs after pruning.",
)
@click.option(
    "--max-accuracy-drop",
    type=click.FloatRange(min=0, max=100),
    default=None,
    help="Largest allowed loss in percentage points. Default: the profile's, else 1.0.",
)
@click.option(
    "--allow-accuracy-drop",
    is_flag=True,
    help="Write the bundle even if the accuracy gate fails (recorded in the manifest).",
)
@click.option(
    "--allow-over-budget",
    is_flag=True,
    help="Write the bundle even if it breaks the profile's memory or storage budget.",
)
@click.option("--force", is_flag=True, help="Accept fewer than 10 calibration or evaluation samples.")
@click.option("--name", default=None, help="Model name in the manifest. Default: the file name.")
@click.option(
    "--model-version",
    "version",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Increasing model version recorded in the manifest.",
)
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    default=None,
    help="Text file with one class name per line, stored in the manifest.",
)
@click.option(
    "--sign-key",
    type=click.Path(path_type=Path),
    default=None,
    help="Sign the bundle with this Ed25519 key (edgekit keys init --publisher).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Bundle to write. Default: MODEL's name with .ekb in the current folder.",
)
@json_option
@click.pass_context
def convert(ctx: click.Context, model: Path, output: Path | None, as_json: bool, **fields: Any) -> None:
    """Convert a trained model into a bundle sized and checked for a device.

    MODEL is a Keras .keras file, a legacy .h5 file, a TensorFlow SavedModel folder or an
    .onnx file. Nothing is written unless the result passes the accuracy gate and fits the
    budgets of the --target profile, or you explicitly allow the breach. When ONNX int8
    misses the accuracy gate, the nodes that lose the most are kept in float and int8 is
    tried again.

    \b
    Examples:
      edgekit convert digits.keras --target raspberry-pi-5 --precision int8 \\
          --calibration calib.npz --eval eval.npz -o digits.ekb
      edgekit convert model.keras --target jetson-orin-nano --calibration calib.npz -o m.ekb
      edgekit convert model.onnx --target x86-gateway --calibration calib.npz --eval eval.npz
      edgekit convert model.keras --target raspberry-pi-4 --prune 0.5 --train-data train.npz \\
          --calibration calib.npz --eval eval.npz -o small.ekb
    """
    from edgekit import views
    from edgekit.console import RichReporter, quiet_native_output
    from edgekit.convert import ConvertOptions
    from edgekit.convert import convert as run_convert

    output = output or Path(f"{model.stem or model.name}.ekb")
    report = fields.pop("report")
    options = ConvertOptions(model=model, output=output, **fields)
    ui = Console(file=ctx.obj["ui"], stderr=True)
    with quiet_native_output(enabled=not ctx.obj["debug"]):
        result = run_convert(options, RichReporter(ui))
    if report is not None:
        from edgekit.atomic import atomic_write
        from edgekit.fit_report import from_convert, render

        atomic_write(report, render(from_convert(result), options.profile, model.name).encode())
    if as_json:
        _print_json(views.convert_json(result))
    else:
        views.print_convert_summary(ui, Console(), result)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--input",
    "-i",
    "input_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Input batch: .npy, or .npz with array x.",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="Print the k best classes per sample (names from the bundle's labels).",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Default: the profile's.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(Converter.registry)),
    default=None,
    help="Which artifact of a two-format bundle. Default: the best this device runs.",
)
@click.option("--allow-unsigned", is_flag=True, help="Accept a bundle no trusted publisher signed (loudly).")
@click.option(
    "--telemetry",
    "telemetry_url",
    metavar="URL",
    default=None,
    help="Report this run to an MQTT broker (mqtt://host:1883, mqtts://host:8883); needs --fleet.",
)
@click.option(
    "--fleet", default=None, help="Fleet name for --telemetry (its keys from `edgekit fleet init`)."
)
@click.option(
    "--telemetry-config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML file with a [telemetry] table of Telemetry settings (see docs/telemetry.md).",
)
@json_option
@click.pass_context
def run(
    ctx: click.Context,
    bundle: Path,
    input_path: Path,
    top_k: int | None,
    threads: int | None,
    fmt: str | None,
    allow_unsigned: bool,
    telemetry_url: str | None,
    fleet: str | None,
    telemetry_config: Path | None,
    as_json: bool,
) -> None:
    """Run a bundle on an input batch and print the outputs or the top-k labels.

    \b
    Examples:
      edgekit run digits.ekb --input sample.npy --top-k 3
      edgekit run digits.ekb --input meter-digit.png --top-k 1
      edgekit run digits --input x.npy --telemetry mqtt://gateway:1883 --fleet factory-7
    """
    from edgekit import views
    from edgekit.data import load_dataset
    from edgekit.runtime.preprocess import IMAGE_SUFFIXES, load_image

    telemetry = _telemetry(telemetry_url, fleet, telemetry_config)
    model = _load_model(
        ctx, bundle, threads=threads, format=fmt, allow_unsigned=allow_unsigned, telemetry=telemetry
    )
    if input_path.suffix.lower() in IMAGE_SUFFIXES:
        x = load_image(input_path, model.manifest, model.info.inputs[0])
    else:
        x = load_dataset(input_path, "input").x
    outputs = model.predict(x)
    result = views.run_result(model, outputs, top_k)
    model.close()
    if telemetry is not None:
        result["telemetry"] = telemetry.status
    if as_json:
        _print_json(result)
    else:
        views.print_run(Console(), model, result)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runs", type=click.IntRange(min=10), default=500, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Default: the profile's.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(Converter.registry)),
    default=None,
    help="Which artifact of a two-format bundle. Default: the best this device runs.",
)
@click.option(
    "--compare-bare",
    is_flag=True,
    help="Also time the bare interpreter or session on the same artifact and input, "
    "interleaved, and print edgekit's overhead.",
)
@click.option("--allow-unsigned", is_flag=True, help="Accept a bundle no trusted publisher signed (loudly).")
@json_option
@click.pass_context
def bench(
    ctx: click.Context,
    bundle: Path,
    runs: int,
    warmup: int,
    threads: int | None,
    fmt: str | None,
    compare_bare: bool,
    allow_unsigned: bool,
    as_json: bool,
) -> None:
    """Measure latency percentiles, throughput, load time and peak memory on this device.

    Exits 1 when p90 latency breaks the profile's latency budget.

    \b
    Example:
      edgekit bench digits.ekb --runs 1000 --compare-bare
    """
    from edgekit import views
    from edgekit.runtime.bench import bench as run_bench

    model = _load_model(ctx, bundle, threads=threads, format=fmt, allow_unsigned=allow_unsigned)
    result = run_bench(model, runs=runs, warmup=warmup, compare_bare=compare_bare)
    if as_json:
        _print_json({"model": views.model_info(model), **result.as_dict()})
    else:
        views.print_bench(Console(), model, result)
    if result.within_latency_budget is False:
        _error_line(
            f"p90 latency {result.edgekit.p90_ms:.3f} ms breaks the profile's "
            f"{result.latency_budget_ms:g} ms budget"
        )
        ctx.exit(1)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@json_option
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what a bundle holds and who signed it, after checking every artifact's hash."""
    from edgekit import views
    from edgekit.bundle import read_bundle
    from edgekit.signing import Trust, signature_status

    seen: dict[str, dict[str, str] | None] = {}

    def note_signature(manifest_bytes: bytes, signature: bytes | None) -> None:
        seen["signature"] = signature_status(manifest_bytes, signature, Trust())

    manifest, _ = read_bundle(bundle, note_signature)
    if as_json:
        _print_json({**manifest.model_dump(mode="json"), "signature": seen["signature"]})
    else:
        views.print_manifest(Console(), bundle, manifest, seen["signature"])


@main.group()
def keys() -> None:
    """Create signing keys (publisher) and the device key that encrypts the model store."""


@keys.command("init")
@click.option("--publisher", "kind", flag_value="publisher", help="An Ed25519 signing key and its .pub.")
@click.option("--device", "kind", flag_value="device", help="This device's store key, under EDGEKIT_HOME.")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the publisher key goes (default: publisher.key).",
)
@json_option
def keys_init(kind: str | None, output: Path | None, as_json: bool) -> None:
    """Create a key; existing keys are never overwritten.

    \b
    Examples:
      edgekit keys init --publisher -o publisher.key    # on the build machine
      edgekit keys init --device                        # on each device
    """
    from edgekit.signing import create_publisher_key

    if kind is None:
        raise click.UsageError("say which key: --publisher or --device")
    if kind == "publisher":
        private = output or Path("publisher.key")
        public, identifier = create_publisher_key(private)
        result = {"private_key": str(private), "public_key": str(public), "key_id": identifier}
        message = f"wrote {private} (keep it secret) and {public} (give it to devices); key id {identifier}"
    else:
        from edgekit.runtime.keys import create_device_key

        path = create_device_key()
        result = {"device_key": str(path)}
        message = f"wrote {path} (mode 600)"
    _report(as_json, result, message)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--key", "key_path", type=click.Path(path_type=Path), required=True, help="The publisher's private key."
)
@json_option
def sign(bundle: Path, key_path: Path, as_json: bool) -> None:
    """Sign a bundle in place: Ed25519 over its manifest, which holds every artifact's hash."""
    from edgekit.signing import load_signing_key, sign_bundle

    identifier = sign_bundle(bundle, load_signing_key(key_path))
    _report(as_json, {"bundle": str(bundle), "key_id": identifier}, f"signed {bundle} with key {identifier}")


@keys.command("rotate")
@json_option
def keys_rotate(as_json: bool) -> None:
    """Replace the device key and re-wrap every stored model's data key; the old key stops working.

    Crash-safe: an interrupted rotation finishes the next time the store opens.
    """
    from edgekit.runtime.store import Store

    Store().rotate_device_key()
    _report(as_json, {"rotated": True}, "device key rotated; every model re-wrapped")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--allow-unsigned", is_flag=True, help="Accept a bundle no trusted publisher signed (loudly).")
@click.option(
    "--allow-downgrade",
    is_flag=True,
    help="Accept a version older than the highest this device has installed.",
)
@json_option
def install(bundle: Path, allow_unsigned: bool, allow_downgrade: bool, as_json: bool) -> None:
    """Verify a bundle (signature, then every hash) and store it encrypted, as the active version.

    \b
    Example:
      edgekit keys init --device && edgekit trust add publisher.pub
      edgekit install digits.ekb
    """
    from edgekit.runtime.store import Store

    done = Store().install(bundle, allow_unsigned=allow_unsigned, allow_downgrade=allow_downgrade)
    if as_json:
        _print_json(done.__dict__)
    else:
        who = f"signed by {done.signed_by}" if done.signed_by else "UNSIGNED"
        click.echo(f"installed {done.name} v{done.version} ({who}), now active")


@main.group()
def models() -> None:
    """The models in this device's encrypted store."""


@models.command("list")
@json_option
def models_list(as_json: bool) -> None:
    """Installed models and versions; * marks the active one."""
    from edgekit.runtime.store import Store

    found = Store().installed()
    if as_json:
        _print_json([m.__dict__ for m in found])
        return
    for m in found:
        click.echo(f"{'*' if m.active else ' '} {m.name} v{m.version}  {m.signed_by or 'unsigned'}")
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
    _report(as_json, {"name": name, "active": version}, f"{name} v{version} is active")


@models.command("rollback")
@click.argument("name")
@json_option
def models_rollback(name: str, as_json: bool) -> None:
    """Activate the newest installed version older than the active one."""
    from edgekit.runtime.store import Store

    version = Store().rollback(name)
    _report(as_json, {"name": name, "active": version}, f"{name} v{version} is active")


@models.command("remove")
@click.argument("name")
@click.argument("version", type=int)
@json_option
def models_remove(name: str, version: int, as_json: bool) -> None:
    """Delete an installed version that is not active."""
    from edgekit.runtime.store import Store

    Store().remove(name, version)
    _report(as_json, {"name": name, "removed": version}, f"removed {name} v{version}")


@main.group()
def trust() -> None:
    """The publishers whose bundles this device accepts (EDGEKIT_HOME/trust)."""


@trust.command("add")
@click.argument("public_key", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@json_option
def trust_add(public_key: Path, as_json: bool) -> None:
    """Trust the publisher whose public key is PUBLIC_KEY (a .pub from keys init --publisher)."""
    from edgekit.signing import Trust

    identifier = Trust().add(public_key)
    _report(as_json, {"key_id": identifier}, f"trusting key {identifier}")


@trust.command("list")
@json_option
def trust_list(as_json: bool) -> None:
    """List the trusted publisher keys."""
    from edgekit.signing import Trust

    identifiers = sorted(Trust().keys())
    _report(as_json, identifiers, "\n".join(identifiers) or "no trusted keys")


@trust.command("remove")
@click.argument("key_id")
@json_option
def trust_remove(key_id: str, as_json: bool) -> None:
    """Stop trusting a publisher key."""
    from edgekit.signing import Trust

    Trust().remove(key_id)
    _report(as_json, {"removed": key_id}, f"no longer trusting {key_id}")


def _telemetry(url: str | None, fleet: str | None, config: Path | None) -> Any:
    if url is None and config is None:
        if fleet is not None:
            raise click.UsageError("--fleet goes with --telemetry URL or --telemetry-config")
        return None
    from edgekit.runtime import Telemetry

    if config is not None:
        return Telemetry.from_file(config, broker=url, fleet=fleet)
    if fleet is None:
        raise click.UsageError("--telemetry needs --fleet NAME (the fleet whose keys are on this device)")
    assert url is not None
    return Telemetry(url, fleet)


def _load_model(ctx: click.Context, source: Path, **options: Any) -> Any:
    """Model.load with the engines' native chatter quieted (edgekit's warnings still show)."""
    from edgekit.console import quiet_native_output
    from edgekit.runtime import Model

    with quiet_native_output(enabled=not ctx.obj["debug"]):
        return Model.load(source, **options)


def _report(as_json: bool, data: Any, message: str) -> None:
    """JSON on stdout for scripts, or one sentence for people."""
    if as_json:
        _print_json(data)
    else:
        click.echo(message)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def broker_options(command: Any) -> Any:
    """--broker and its TLS and login options, shared by the fleet commands."""
    options = [
        click.option(
            "--broker",
            required=True,
            metavar="URL",
            help="mqtt://[user@]host:1883, or mqtts://host:8883 for TLS. Password: $EDGEKIT_MQTT_PASSWORD.",
        ),
        click.option("--fleet", required=True, help="Fleet name, as the devices report it."),
        click.option(
            "--tls-ca", type=click.Path(path_type=Path, dir_okay=False), help="CA certificate (PEM)."
        ),
        click.option(
            "--tls-cert", type=click.Path(path_type=Path, dir_okay=False), help="Client certificate."
        ),
        click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), help="Client key."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _broker(url: str, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None) -> Any:
    from edgekit.runtime.telemetry.broker import Broker

    return Broker.parse(url, ca=tls_ca, cert=tls_cert, key=tls_key)


@main.group()
def fleet() -> None:
    """Operate a fleet: its keys, a live view, and retraining data (see docs/telemetry.md)."""


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
    _report(
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
@click.pass_context
def fleet_watch(
    ctx: click.Context,
    broker: str,
    fleet: str,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    duration: float | None,
    idle: float | None,
    as_json: bool,
) -> None:
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
    import time

    from rich.live import Live

    from edgekit.fleet import FleetView, Inbox, subscriptions

    view = FleetView(fleet)
    inbox = Inbox(
        _broker(broker, tls_ca, tls_cert, tls_key), subscriptions(fleet, ("report", "status"))
    ).start()
    deadline = time.monotonic() + duration if duration is not None else None
    live = None if as_json else Live(view.table(), console=Console(), refresh_per_second=2)
    last = time.monotonic()
    try:
        if live is not None:
            live.start()
        while deadline is None or time.monotonic() < deadline:
            if idle is not None and time.monotonic() - last >= idle:
                break
            message = inbox.get(0.2)
            if message is None:
                continue
            last = time.monotonic()
            event = view.handle(message[0], message[1])
            if as_json and event is not None:
                click.echo(json.dumps(event, sort_keys=True))
            elif live is not None:
                live.update(view.table())
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
        inbox.stop()


@fleet.command("collect")
@broker_options
@click.option(
    "--out", "-o", type=click.Path(path_type=Path, file_okay=False), required=True, help="Output folder."
)
@click.option(
    "--fleet-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with fleet.key. Default: $EDGEKIT_HOME/fleets/FLEET.",
)
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
    "Default: edgekit-collect-FLEET-GROUP-HOST.",
)
@duration_option
@idle_option
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Stop after this many samples.")
@json_option
@click.pass_context
def fleet_collect(
    ctx: click.Context,
    broker: str,
    fleet: str,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    out: Path,
    fleet_dir: Path | None,
    group: str,
    session: str | None,
    duration: float | None,
    idle: float | None,
    max_samples: int | None,
    as_json: bool,
) -> None:
    """Collect retraining samples and a drift report from a fleet.

    \b
    Samples are decrypted with the fleet's private key and written to OUT/shards/, and
    merged into OUT/samples.npz (arrays x, pred, confidence, node, seq: seq orders a
    node's samples in time), which `edgekit convert --calibration` takes as it is.
    OUT/drift.json and OUT/drift.html show each node's drift over time; OUT/collect.json
    counts reports, gaps and skipped messages.
    Malformed, unknown-version and duplicate messages are counted and skipped.
    \b
    Examples:
      edgekit fleet collect --broker mqtt://localhost:1883 --fleet factory-7 --out data/ --idle 30
      edgekit convert model.keras --target raspberry-pi-4 --calibration data/samples.npz -o v2.ekb
    """
    import socket
    import time

    from edgekit.fleet import Collector, Inbox, load_collector_key, subscriptions

    collector = Collector(fleet, out, load_collector_key(fleet, fleet_dir))
    shared = None if group == "none" else group
    session = session or f"edgekit-collect-{fleet}-{group}-{socket.gethostname()}"
    inbox = Inbox(
        _broker(broker, tls_ca, tls_cert, tls_key),
        subscriptions(fleet, ("report", "sample"), shared),
        session,
    ).start()
    ui = ctx.obj["ui"]
    started = last = time.monotonic()
    unacked: list[tuple[int, int]] = []
    flushed = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                break
            if idle is not None and now - last >= idle:
                break
            if max_samples is not None and collector.sample_count >= max_samples:
                break
            message = inbox.get(0.1)
            if message is not None:
                last = time.monotonic()
                collector.handle(message[0], message[1])
                unacked.append((message[2], message[3]))
            if unacked and (len(unacked) >= 256 or time.monotonic() - flushed > 0.5 or message is None):
                collector.flush()  # durable first, then acknowledged: a crash loses nothing
                inbox.ack(unacked)
                unacked, flushed = [], time.monotonic()
                if not as_json:
                    click.echo(
                        f"\r{collector.reports} reports, {collector.sample_count} samples, "
                        f"{sum(collector.skipped.values())} skipped",
                        nl=False,
                        file=ui,
                    )
    except KeyboardInterrupt:
        pass
    finally:
        summary = collector.finish()
        inbox.ack(unacked)
        inbox.stop()
    if as_json:
        summary.pop("seen")
        _print_json(summary)
    else:
        click.echo("", file=ui)
        skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items() if n) or "none"
        drifting = ", ".join(node[:12] for node in summary["drift"]["drifting_nodes"]) or "none"
        click.echo(
            f"{summary['reports']} reports ({summary['inferences']} inferences), "
            f"{summary['samples']} samples in {out}; skipped: {skipped}; drifting: {drifting}"
        )


@main.command("fit")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--target", "-t", "profile", type=ProfileType(), required=True, help="Device profile id or TOML file."
)
@click.option(
    "--eval", "evaluation", type=click.Path(path_type=Path), required=True, help=".npz with x and labels y."
)
@click.option(
    "--calibration", "-c", type=click.Path(path_type=Path), default=None, help="For int8 candidates."
)
@click.option("--train-data", type=click.Path(path_type=Path), default=None, help="For pruned candidates.")
@click.option(
    "--prune-ratios",
    default="0,0.25,0.5",
    show_default=True,
    help="Structured pruning ratios to try (0 = unpruned); needs --train-data.",
)
@click.option(
    "--format", "formats", multiple=True, help="Formats to try (repeatable). Default: the profile's."
)
@click.option(
    "--precision", "precisions", multiple=True, help="Precisions to try (repeatable). Default: all."
)
@click.option("--max-minutes", type=click.FloatRange(min=0), default=30.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same search, same choice.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0, max=100), default=None)
@click.option("--report", type=click.Path(path_type=Path), default=None, help="Write an HTML report here.")
@click.option("--sign-key", type=click.Path(path_type=Path), default=None, help="Sign the chosen bundle.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Bundle to write.")
@json_option
@click.pass_context
def fit_command(ctx: click.Context, model: Path, output: Path | None, as_json: bool, **fields: Any) -> None:
    """Search pruning × format × precision and write the smallest bundle that fits the device.

    Every candidate is converted and measured (size, peak memory, host latency, top-1 on
    --eval against the unpruned float model). The smallest candidate that fits every
    budget of --target wins; the table says why each other one lost, and marks the Pareto
    front (size, latency, accuracy). Host latency is shown but does not decide: this host
    is not the device, and the choice must repeat under --seed.

    \b
    Examples:
      edgekit fit model.keras --target jetson-nano --train-data train.npz --eval eval.npz \\
          --calibration calib.npz --report fit.html -o best.ekb
      edgekit fit model.keras -t my-hub.toml --eval eval.npz --format tflite --json
    """
    from rich.table import Table

    from edgekit.console import RichReporter, quiet_native_output
    from edgekit.fit import FitOptions, fit, nothing_fits, pareto
    from edgekit.fit_report import render

    try:
        ratios = tuple(float(r) for r in fields.pop("prune_ratios").split(","))
    except ValueError:
        raise click.BadParameter("write the ratios as 0,0.25,0.5", param_hint="--prune-ratios") from None
    if any(not 0 <= r < 1 for r in ratios):
        raise click.BadParameter("each ratio must be in [0, 1)", param_hint="--prune-ratios")
    report = fields.pop("report")
    output = output or Path(f"{model.stem or model.name}.ekb")
    options = FitOptions(
        model=model, output=output, prune_ratios=ratios,
        formats=tuple(fields.pop("formats")) or None, precisions=tuple(fields.pop("precisions")) or None,
        **fields,
    )  # fmt: skip
    ui = Console(file=ctx.obj["ui"], stderr=True)
    with quiet_native_output(enabled=not ctx.obj["debug"]):
        result = fit(options, RichReporter(ui))
    if report is not None:
        from edgekit.atomic import atomic_write

        atomic_write(report, render(result, options.profile, model.name).encode())
    front = set(pareto(result.candidates))
    if as_json:
        _print_json(
            {
                "chosen": result.chosen.model_dump(mode="json") if result.chosen else None,
                "output": str(output) if result.chosen else None,
                "baseline_top1": result.baseline_top1,
                "candidates": [
                    c.model_dump(mode="json") | {"pareto": i in front}
                    for i, c in enumerate(result.candidates)
                ],
                "stopped_early": result.stopped_early,
            }
        )
    else:
        table = Table("format", "precision", "prune", "size", "host ms", "top-1", "pareto", "verdict")
        for i, c in enumerate(result.candidates):
            table.add_row(
                c.format, c.precision, f"{c.prune:g}",
                "-" if c.size_bytes is None else f"{c.size_bytes / 1024:.1f} KB",
                "-" if c.host_latency_ms is None else f"{c.host_latency_ms:.3g}",
                "-" if c.top1 is None else f"{c.top1:.2f}%", "yes" if i in front else "", c.verdict,
                style="green" if c.verdict.startswith("chosen") else "",
            )  # fmt: skip
        Console().print(table)
    if result.chosen is None:
        raise nothing_fits(result, options.profile.id)
    if not as_json:
        click.echo(
            f"wrote {output}: {result.chosen.format} {result.chosen.precision}, "
            f"pruned {result.chosen.prune:g}"
        )
