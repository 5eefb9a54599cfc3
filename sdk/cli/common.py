"""What every command module shares: JSON or a sentence out, and loading a model quietly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def say(as_json: bool, data: Any, message: str) -> None:
    """JSON on stdout for scripts, or one sentence for people."""
    if as_json:
        print_json(data)
    else:
        click.echo(message)


def warning_line(message: str) -> None:
    click.echo(f"warning: {' '.join(message.split())}", err=True)


def error_line(message: str) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)


def ui_console(ctx: click.Context) -> Console:
    """Progress and warnings: stderr, so that stdout stays clean for --json and pipes."""
    return Console(file=ctx.obj["ui"], stderr=True)


def debug(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug"))


def load_model(ctx: click.Context, source: Path, **options: Any) -> Any:
    """Model.load with the engines' native chatter quieted (edgekit's warnings still show)."""
    from edgekit.runtime import Model
    from edgekit.views.console import quiet_native_output

    with quiet_native_output(enabled=not debug(ctx)):
        return Model.load(source, **options)
