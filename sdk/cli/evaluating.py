"""``edgekit evaluate``: trust a bundle before shipping it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import debug, print_json, ui_console
from edgekit.cli.options import json_option


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--source",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="The float model the bundle was converted from (.keras, .h5, SavedModel or .onnx).",
)
@click.option(
    "--eval",
    "evaluation",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help=".npz with the inputs (x) and integer class labels (y).",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write one self-contained HTML page with every plot.",
)
@click.option(
    "--max-samples", type=click.IntRange(min=1), default=None, help="Evaluate on the first N samples."
)
@click.option("--quick", is_flag=True, help="Severities 1, 3 and 5, one ε (0.1), at most 200 samples.")
@click.option("--allow-unsigned", is_flag=True, help="Accept a bundle no trusted publisher signed.")
@json_option
@click.pass_context
def evaluate(ctx: click.Context, as_json: bool, **fields: Any) -> None:
    """The float model and each artifact of BUNDLE side by side, on the same labelled data.

    Per class (precision, recall, F1, support, as scikit-learn lays them out), confusion
    matrices, calibration (expected calibration error, reliability diagrams), accuracy under
    common corruptions at severities 1 to 5, under FGSM and PGD attacks crafted on the
    float model (Keras sources) and replayed on each artifact, and each model's attributions
    compared with float's (see docs/evaluate.md).

    \b
      edgekit evaluate digits.ekb --source digits.keras --eval eval.npz --report eval.html
      edgekit evaluate meter.ekb --source meter.onnx --eval eval.npz --quick --json
    """
    from rich.console import Console
    from rich.progress import Progress

    from edgekit.core.bundle import read_manifest
    from edgekit.evaluate import EvaluateOptions, stages
    from edgekit.evaluate import evaluate as run
    from edgekit.views.console import quiet_native_output
    from edgekit.views.evaluation import evaluation_table

    options = EvaluateOptions(**fields)
    total = stages(options, len(read_manifest(options.bundle).artifacts))
    with Progress(console=ui_console(ctx), transient=True) as progress, quiet_native_output(not debug(ctx)):
        task = progress.add_task("evaluating", total=total)
        result = run(options, lambda what: progress.update(task, advance=1, description=what))
    if as_json:
        print_json(result.model_dump(mode="json"))
    else:
        Console().print(evaluation_table(result))
        if options.report is not None:
            click.echo(f"report: {options.report}")


COMMANDS = (evaluate,)
