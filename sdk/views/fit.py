"""How ``edgekit fit`` looks: every candidate, the Pareto front, and the verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from edgekit.fit.search import FitResult


def fit_json(result: FitResult, output: Path) -> dict[str, Any]:
    from edgekit.fit.search import pareto

    front = set(pareto(result.candidates))
    return {
        "chosen": result.chosen.model_dump(mode="json") if result.chosen else None,
        "output": str(output) if result.chosen else None,
        "baseline_top1": result.baseline_top1,
        "candidates": [
            c.model_dump(mode="json") | {"pareto": i in front} for i, c in enumerate(result.candidates)
        ],
        "stopped_early": result.stopped_early,
        "classes": result.accuracy.classes.model_dump(mode="json")
        if result.accuracy and result.accuracy.classes
        else None,
    }


def print_fit(out: Console, result: FitResult, output: Path) -> None:
    """The candidates as a table, each verdict on its own line below (it is long prose)."""
    from edgekit.fit.search import pareto

    front = set(pareto(result.candidates))
    if any(c.context for c in result.candidates):
        _print_decoder_fit(out, result, output, front)
        return
    table = Table(
        "#", "format", "precision", "prune", "size", "host ms", "top-1", "pareto", box=box.SIMPLE_HEAD
    )
    for i, c in enumerate(result.candidates, 1):
        table.add_row(
            str(i), c.format, c.precision, f"{c.prune:g}",
            "-" if c.size_bytes is None else f"{c.size_bytes / 1024:.1f} KB",
            "-" if c.host_latency_ms is None else f"{c.host_latency_ms:.3g}",
            "-" if c.top1 is None else f"{c.top1:.2f}%", "yes" if i - 1 in front else "",
            style="green" if c.verdict.startswith("chosen") else "",
        )
    out.print(table)
    for i, c in enumerate(result.candidates, 1):
        out.print(
            f"{i:>2}. {c.verdict}", style="green" if c.verdict.startswith("chosen") else "", highlight=False
        )
    chosen = result.chosen
    if chosen is not None:
        click.echo(f"wrote {output}: {chosen.format} {chosen.precision}, pruned {chosen.prune:g}")


def _print_decoder_fit(out: Console, result: FitResult, output: Path, front: set[int]) -> None:
    """A decoder's search: precision × context, judged on perplexity and memory."""
    table = Table("#", "precision", "context", "size", "memory", "ms/token", "perplexity", "pareto",
                  box=box.SIMPLE_HEAD)  # fmt: skip
    for i, c in enumerate(result.candidates, 1):
        table.add_row(
            str(i), c.precision, str(c.context),
            "-" if c.size_bytes is None else f"{c.size_bytes / 1024:.1f} KB",
            "-" if c.peak_memory_bytes is None else f"{c.peak_memory_bytes / 2**20:.1f} MB",
            "-" if c.host_latency_ms is None else f"{c.host_latency_ms:.3g}",
            "-" if c.perplexity_increase is None else f"{c.perplexity_increase:+.2f}%",
            "yes" if i - 1 in front else "", style="green" if c.verdict.startswith("chosen") else "",
        )  # fmt: skip
    out.print(table)
    for i, c in enumerate(result.candidates, 1):
        style = "green" if c.verdict.startswith("chosen") else ""
        out.print(f"{i:>2}. {c.verdict}", style=style, highlight=False)
    chosen = result.chosen
    if chosen is not None:
        click.echo(f"wrote {output}: onnx {chosen.precision}, a context of {chosen.context} tokens")
