"""The ``edgekit`` command line: the group, its error boundary and ``--debug``.

Each command family lives in a module of its own; a command parses its options, builds a
config object, calls one function in ``edgekit`` and prints through ``edgekit.views``.
Heavy libraries (TensorFlow, ONNX Runtime) load only inside the commands that need them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

import edgekit
from edgekit.cli import (
    building,
    bundles,
    device,
    evaluating,
    fleet,
    generating,
    keys,
    rollout,
    running,
    serving,
)
from edgekit.cli.common import debug, error_line
from edgekit.core.errors import EdgekitError


class EdgekitGroup(click.Group):
    """Turns edgekit errors into one line and an exit code; tracebacks only with --debug."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:  # the group's own options: edgekit --bogus
            if os.environ.get("EDGEKIT_DEBUG") == "1" or "--debug" in args:
                raise
            error_line(f"{exc.format_message()} (see {info_name or 'edgekit'} --help)")
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            if _debugging(ctx):
                raise
            error_line(str(exc))
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # click's own is four lines: usage, a hint, a blank, the error
            if _debugging(ctx):
                raise
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            error_line(f"{exc.format_message()} (see {where} --help)")
            sys.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            error_line("interrupted")
            sys.exit(130)
        except Exception as exc:
            if _debugging(ctx):
                raise
            error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
            sys.exit(1)


def _debugging(ctx: click.Context) -> bool:
    return debug(ctx) or os.environ.get("EDGEKIT_DEBUG") == "1"


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
      edgekit generate assistant --prompt "kitchen lights are" --stream   a decoder's text
      edgekit serve                                  every store model over KServe v2 REST and gRPC
    At the operator's desk:
      edgekit fleet init factory-7                   fleet keys; devices get .pub and .secret
      edgekit fleet watch --broker mqtt://broker:1883 --fleet factory-7
      edgekit fleet collect --broker mqtt://broker:1883 --fleet factory-7 --out data/
    """
    from edgekit.views.console import route_warnings, ui_stream

    ctx.obj = {"debug": debug, "ui": ui_stream()}
    route_warnings(ctx.obj["ui"])


for family in (building, evaluating, running, generating, serving, bundles, keys, device, fleet, rollout):
    for command in family.COMMANDS:
        main.add_command(command)
