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
    help="Keep ONNX nodes whose name matches PATTERN (fnmatch; repeatable) in float.",
)
@click.option(
    "--input-shape",
    type=ShapeType(),
    default=None,
    help="Fix an ONNX model's dynamic input dims, e.g. 1,3,224,224 (N keeps a dim dynamic). "
    "Default: from the calibration data.",
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
    """
    from edgekit import views
    from edgekit.console import RichReporter, quiet_native_output
    from edgekit.convert import ConvertOptions
    from edgekit.convert import convert as run_convert

    output = output or Path(f"{model.stem or model.name}.ekb")
    options = ConvertOptions(model=model, output=output, **fields)
    ui = Console(file=ctx.obj["ui"], stderr=True)
    with quiet_native_output(enabled=not ctx.obj["debug"]):
        result = run_convert(options, RichReporter(ui))
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
    as_json: bool,
) -> None:
    """Run a bundle on an input batch and print the outputs or the top-k labels.

    \b
    Examples:
      edgekit run digits.ekb --input sample.npy --top-k 3
      edgekit run digits.ekb --input meter-digit.png --top-k 1
    """
    from edgekit import views
    from edgekit.data import load_dataset
    from edgekit.runtime.preprocess import IMAGE_SUFFIXES, load_image

    model = _load_model(ctx, bundle, threads=threads, format=fmt, allow_unsigned=allow_unsigned)
    if input_path.suffix.lower() in IMAGE_SUFFIXES:
        x = load_image(input_path, model.manifest, model.info.inputs[0])
    else:
        x = load_dataset(input_path, "input").x
    outputs = model.predict(x)
    result = views.run_result(model, outputs, top_k)
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
    from edgekit.signing import load_private_key, sign_bundle

    identifier = sign_bundle(bundle, load_private_key(key_path))
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
