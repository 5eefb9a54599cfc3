"""Every option that more than one command takes, written once, and the parameter types.

Choices come from the registries (``edgekit.converters``), so ``convert`` and ``fit`` accept
exactly the same formats and precisions. Nothing here imports TensorFlow or ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgekit.converters import format_choices, precision_choices
from edgekit.core.errors import EdgekitError
from edgekit.core.profiles import DeviceProfile, load_profile
from edgekit.core.validation import ascii_int

Decorator = Callable[[Any], Any]


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
            elif ascii_int(part):
                dims.append(int(part))
            else:
                self.fail(f"'{value}' is not a shape like 1,3,224,224 (N for a dynamic batch)", param, ctx)
        return tuple(dims)


class StatePairType(click.ParamType):
    """``--state``: OUTPUT:INPUT, the output fed back to the input at the next step."""

    name = "output:input"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        output, _, name = str(value).partition(":")
        if not output or not name:
            self.fail(f"'{value}' is not OUTPUT:INPUT, e.g. stateN:state", param, ctx)
        return output, name


def together(*decorators: Decorator) -> Decorator:
    """Several options as one decorator, listed in ``--help`` in the order given."""

    def apply(command: Any) -> Any:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


def _path(**kwargs: Any) -> click.Path:
    return click.Path(path_type=Path, **kwargs)


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
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="Default: the profile's."
)


def _megabytes(value: float | None) -> int | None:
    return None if value is None else int(value * (1 << 20))


bundle_options = together(
    click.option(
        "--allow-unsigned", is_flag=True, help="Accept a bundle no trusted publisher signed (loudly)."
    ),
    click.option(
        "--max-size",
        "max_bytes",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="MB",
        callback=lambda _ctx, _param, value: _megabytes(value),
        help="Refuse a bundle file whose artifacts are over MB in all, before reading them. "
        "Default for an unsigned bundle: its profile's model storage budget.",
    ),
)
artifact_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(format_choices()),
    default=None,
    help="Which artifact of a two-format bundle. Default: the best this device runs.",
)
target_option = click.option(
    "--target",
    "-t",
    "profile",
    type=ProfileType(),
    required=True,
    help="Device profile id (see 'edgekit targets') or a path to a profile .toml.",
)
sign_key_option = click.option(
    "--sign-key",
    type=_path(dir_okay=False),
    default=None,
    help="Sign the bundle with this Ed25519 key (edgekit keys init --publisher).",
)
calibration_option = click.option(
    "--calibration",
    "-c",
    type=_path(),
    default=None,
    help="Representative inputs for int8: .npz with array x (100-500 samples) or .npy.",
)
train_data_option = click.option(
    "--train-data",
    type=_path(),
    default=None,
    help="Training data for pruning: .npz with x and integer labels y, or .jsonl with text and label.",
)
report_option = click.option(
    "--report",
    type=_path(dir_okay=False),
    default=None,
    help="Write an HTML page with the candidates, budgets and plots (needs edgekit[fleet] for plots).",
)
max_accuracy_drop_option = click.option(
    "--max-accuracy-drop",
    type=click.FloatRange(min=0, max=100),
    default=None,
    help="Largest allowed loss in percentage points. Default: the profile's, else 1.0.",
)


max_robustness_drop_option = click.option(
    "--max-robustness-drop",
    type=click.FloatRange(min=0, max=100),
    default=None,
    metavar="POINTS",
    help="Refuse an artifact whose top-1 under common corruptions (noise, blur, brightness, contrast, "
    "JPEG for images; feature noise, dropout, drift for tables; mean over severities 1-5) falls more "
    "than POINTS below the float model's. Needs --eval with labels. Default: not checked.",
)


def output_option(help: str) -> Decorator:
    return click.option("--output", "-o", type=_path(), default=None, help=help)


def evaluation_option(required: bool, help: str) -> Decorator:
    return click.option("--eval", "evaluation", type=_path(), required=required, default=None, help=help)


def precision_option(multiple: bool, help: str) -> Decorator:
    """One precision (``convert``) or several (``fit``), from the same choices."""
    if multiple:
        choices = click.Choice([p for p in precision_choices() if p != "auto"])
        return click.option("--precision", "-p", "precisions", type=choices, multiple=True, help=help)
    choices = click.Choice(precision_choices())
    return click.option("--precision", "-p", type=choices, default="auto", show_default=True, help=help)


def format_option(multiple: bool, help: str) -> Decorator:
    """One format or ``both`` (``convert``), or several (``fit``), from the registry."""
    if multiple:
        return click.option(
            "--format", "formats", type=click.Choice(format_choices()), multiple=True, help=help
        )
    return click.option(
        "--format", "format", type=click.Choice([*format_choices(), "both"]), default=None, help=help
    )


broker_options = together(
    click.option(
        "--broker",
        required=True,
        metavar="URL",
        help="mqtt://[user@]host:1883, or mqtts://host:8883 for TLS. Password: $EDGEKIT_MQTT_PASSWORD.",
    ),
    click.option("--fleet", required=True, help="Fleet name, as the devices report it."),
    click.option("--tls-ca", type=_path(dir_okay=False), help="CA certificate (PEM)."),
    click.option("--tls-cert", type=_path(dir_okay=False), help="Client certificate."),
    click.option("--tls-key", type=_path(dir_okay=False), help="Client key."),
)
"""--broker, --fleet and the TLS files, shared by the fleet commands."""


def db_option(required: bool) -> Any:
    return click.option(
        "--db", required=required, default=None,
        help="Fleet database: a SQLite file path, or postgresql://USER@HOST[:PORT]/DB.",
    )


fleet_dir_option = click.option(
    "--fleet-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with fleet.key. Default: $EDGEKIT_HOME/fleets/FLEET.",
)
