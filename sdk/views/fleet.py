"""How the fleet looks: the live table of ``fleet watch`` and the lines of ``fleet collect``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import click
from rich.console import Console
from rich.table import Table

from edgekit.fleet import Collector, FleetView, drift_level

_DRIFT_STYLE = {"drift": "red", "shift": "yellow"}
_PIPE_WIDTH = 200
"""Columns of the table ``fleet watch`` prints into a pipe: every number whole."""
PIPE_PROGRESS_SECONDS = 10.0


def fleet_table(view: FleetView) -> Table:
    online = view.online
    skipped = sum(view.skipped.values())
    table = Table(
        title=f"fleet {view.fleet}: {online} online, {len(view.nodes) - online} offline"
        + (f", {skipped} messages skipped" if skipped else ""),
        title_justify="left",
    )
    table.add_column("node", no_wrap=True, min_width=12)  # a pseudonym's first 12 hex digits
    for column in ("status", "model", "inf/s", "p50 ms", "p95 ms", "errors", "drift", "dropped"):
        table.add_column(column, justify="left" if column in ("status", "model") else "right")
    for state in sorted(view.nodes.values(), key=lambda s: s.node):
        last = state.last
        drift = last.get("drift")
        table.add_row(
            state.node[:12],
            state.status,
            last.get("model", "-"),
            _number(last.get("rate")),
            _number(last.get("p50_ms")),
            _number(last.get("p95_ms")),
            "-" if not last else f"{100 * last['error_rate']:.1f}%",
            "-" if drift is None else f"{drift:.2f} {drift_level(drift)}",
            str(last.get("dropped", "-")),
            style=_DRIFT_STYLE.get(drift_level(drift), ""),
        )
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@contextmanager
def fleet_display(out: Console, view: FleetView, as_json: bool) -> Iterator[Callable[[Any], None]]:
    """What ``watch`` shows each event with: a JSON line, or the live table redrawn.
    Without a terminal, rich prints the table once, when the display closes."""
    if as_json:

        def print_line(event: Any) -> None:
            if event is not None:
                click.echo(json.dumps(event, sort_keys=True))

        yield print_line
        return
    if not out.is_terminal:  # a pipe or a log: the last table once, whole lines, nothing cut short
        yield lambda _event: None
        Console(file=out.file, width=_PIPE_WIDTH).print(fleet_table(view))
        return
    from rich.live import Live

    with Live(fleet_table(view), console=out, refresh_per_second=2) as live:
        yield lambda _event: live.update(fleet_table(view))


def collect_progress(ui: IO[str], every: float = PIPE_PROGRESS_SECONDS) -> Callable[[Collector], None]:
    """On a terminal, one line redrawn; in a pipe or a log, a whole line at most every
    ``every`` seconds (a carriage return there leaves one endless line)."""
    terminal = ui.isatty()
    last = [-every]

    def show(collector: Collector) -> None:
        now = time.monotonic()
        if not terminal and now - last[0] < every:
            return
        last[0] = now
        skipped = sum(collector.skipped.values())
        line = f"{collector.reports} reports, {collector.sample_count} samples, {skipped} skipped"
        click.echo(f"\r{line}" if terminal else line, nl=not terminal, file=ui)

    return show


def print_collect_summary(ui: IO[str], summary: dict[str, Any]) -> None:
    if ui.isatty():
        click.echo("", file=ui)  # ends the redrawn progress line
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items() if n) or "none"
    drifting = ", ".join(node[:12] for node in summary["drift"]["drifting_nodes"]) or "none"
    click.echo(
        f"{summary['reports']} reports ({summary['inferences']} inferences), "
        f"{summary['samples']} samples in {summary['db']}"
        + (f", exported to {summary['out']}" if summary["out"] else "")
        + f"; skipped: {skipped}; drifting: {drifting}"
    )
