"""Build-side commands: ``targets``, ``convert`` and ``fit``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import click
from rich.console import Console

from edgekit.cli.common import debug, print_json, ui_console
from edgekit.cli.options import (
    ShapeType,
    StatePairType,
    calibration_option,
    evaluation_option,
    format_option,
    json_option,
    max_accuracy_drop_option,
    max_robustness_drop_option,
    output_option,
    precision_option,
    report_option,
    sign_key_option,
    target_option,
    together,
    train_data_option,
)
from edgekit.compress.pruning import PRUNE_MODES
from edgekit.converters.base import CALIBRATION_METHODS, TFLITE_QUANTIZERS
from edgekit.core.manifest import GateMetric
from edgekit.core.profiles import load_all_profiles

if TYPE_CHECKING:
    from edgekit.convert import ConvertOptions
    from edgekit.fit.search import FitOptions


class RatiosType(click.ParamType):
    """``--prune-ratios``: comma-separated fractions in [0, 1)."""

    name = "ratios"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            ratios = tuple(float(r) for r in str(value).split(","))
        except ValueError:
            self.fail("write the ratios as 0,0.25,0.5", param, ctx)
        if any(not 0 <= r < 1 for r in ratios):
            self.fail("each ratio must be in [0, 1)", param, ctx)
        return ratios


@click.command()
@json_option
def targets(as_json: bool) -> None:
    """List the shipped device profiles (use --target ID or --target my.toml)."""
    from edgekit import views

    profiles = load_all_profiles()
    if as_json:
        print_json([p.model_dump(mode="json") for p in profiles])
    else:
        Console().print(views.profiles_table(profiles))


_conversion_options = together(
    click.option(
        "--calibration-method",
        type=click.Choice(CALIBRATION_METHODS),
        default="minmax",
        show_default=True,
        help="How ONNX int8 chooses activation ranges from the calibration data.",
    ),
    click.option(
        "--tflite-quantizer",
        type=click.Choice(TFLITE_QUANTIZERS),
        default="converter",
        show_default=True,
        help="What quantizes TFLite int8: the TFLite converter, or the LiteRT Quantizer on the float "
        "model (Google's successor to the converter's quantization; benchmarks/tflite_quantizers.py).",
    ),
    click.option(
        "--keep-float",
        multiple=True,
        metavar="PATTERN",
        help="Keep nodes (ONNX) or layers (TFLite int8) whose name matches PATTERN (fnmatch; repeatable) "
        "in float.",
    ),
    click.option(
        "--input-shape",
        type=ShapeType(),
        default=None,
        help="Fix an ONNX model's dynamic input dims, e.g. 1,3,224,224 (N keeps a dim dynamic). "
        "Default: from the calibration data.",
    ),
)

_output_options = together(
    click.option(
        "--eval-output",
        default=None,
        metavar="NAME",
        help="Several outputs: the one --eval measures top-1 (labels) or agreement on; every output's "
        "cosine is reported. Default: the only output that is not a state, else the only one shaped "
        "(batch, classes) or (batch, positions, classes); with none so shaped, cosine judges every output.",
    ),
    click.option(
        "--telemetry-output",
        default=None,
        metavar="NAME",
        help="Several outputs: the one telemetry reports classes and confidence of (a detector's "
        "scores). Default: as --eval-output.",
    ),
    click.option(
        "--state",
        type=StatePairType(),
        multiple=True,
        metavar="OUTPUT:INPUT",
        help="A streaming model's recurrent state: OUTPUT is fed back to INPUT at the next step "
        "(repeatable). Default: found from names (state/stateN, h/h_out, new_h).",
    ),
)

_text_options = together(
    click.option(
        "--tokenizer",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="A text model's Hugging Face tokenizer.json: it travels in the bundle (edgekit run --text), "
        'and .jsonl --calibration/--eval data ({"text": ..., "label": ...} per line) is tokenized by it.',
    ),
    click.option(
        "--max-sequence-length",
        type=click.IntRange(min=1),
        default=None,
        help="Tokens per text (longer ones are truncated and counted); a decoder's context, prompt and "
        "new tokens together. Default: the model's fixed length, else the profile's max_sequence_length, "
        "else 128 (a decoder: 256).",
    ),
    click.option(
        "--max-perplexity-increase",
        type=click.FloatRange(min=0),
        default=5.0,
        show_default=True,
        metavar="PERCENT",
        help="A decoder's gate: perplexity on the --eval text at most this much above the float model's.",
    ),
)

_pruning_options = together(
    click.option(
        "--prune",
        type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
        default=None,
        metavar="RATIO",
        help="Prune this fraction of a Keras model's channels (or weights, --prune-mode magnitude) "
        "before converting; fine-tunes on --train-data. A transformer loses this fraction of the "
        "attention heads and feed-forward neurons of every layer, by importance, and is distilled "
        "from the unpruned model.",
    ),
    click.option(
        "--prune-mode",
        type=click.Choice(PRUNE_MODES),
        default="structured",
        show_default=True,
        help="structured removes whole channels (a smaller, faster model); magnitude zeroes weights "
        "(the file compresses).",
    ),
    train_data_option,
    click.option(
        "--prune-epochs",
        type=click.IntRange(min=0),
        default=5,
        show_default=True,
        help="Fine-tuning epochs after pruning.",
    ),
    click.option(
        "--drop-layers",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        metavar="N",
        help="A transformer: remove N whole blocks (attention, feed-forward and norms), each the "
        "one whose removal raises the loss least, then distil from the full model. Works with or "
        "without --prune; the last block stays.",
    ),
)

_override_options = together(
    max_accuracy_drop_option,
    max_robustness_drop_option,
    click.option(
        "--gate-metric",
        type=click.Choice(get_args(GateMetric)),
        default="top1",
        show_default=True,
        help="With --eval labels: what the accuracy gate compares. macro-f1 weighs every class alike "
        "(a rare intent counts as much as a common one).",
    ),
    click.option(
        "--allow-accuracy-drop",
        is_flag=True,
        help="Write the bundle even if the accuracy gate fails (recorded in the manifest).",
    ),
    click.option(
        "--allow-over-budget",
        is_flag=True,
        help="Write the bundle even if it breaks the profile's memory or storage budget.",
    ),
    click.option("--force", is_flag=True, help="Accept fewer than 10 calibration or evaluation samples."),
)

_identity_options = together(
    click.option("--name", default=None, help="Model name in the manifest. Default: the file name."),
    click.option(
        "--model-version",
        "version",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Increasing model version recorded in the manifest.",
    ),
    click.option(
        "--labels",
        type=click.Path(path_type=Path),
        default=None,
        help="Text file with one class name per line, stored in the manifest.",
    ),
)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@target_option
@precision_option(
    multiple=False,
    help="auto tries the profile's precisions in order and keeps the first that passes "
    "the accuracy gate and the budgets; for ONNX on a CPU-only profile it keeps the fastest "
    "that passes, measured on this host.",
)
@format_option(
    multiple=False,
    help="Artifact format; 'both' ships TFLite and ONNX in one bundle. "
    "Default: the profile's first format that can be made from MODEL.",
)
@calibration_option
@evaluation_option(
    required=False,
    help="Held-out .npz with x and labels y (top-1 accuracy) or x alone (agreement); or a .csv with a "
    "header row, for tabular models.",
)
@click.option(
    "--label-column",
    default=None,
    metavar="NAME",
    help="CSV data: the column of class indices (default: one named y); every other column is a feature.",
)
@_conversion_options
@_output_options
@_text_options
@report_option
@_pruning_options
@_override_options
@_identity_options
@sign_key_option
@output_option("Bundle to write. Default: MODEL's name with .ekb in the current folder.")
@json_option
@click.pass_context
def convert(ctx: click.Context, model: Path, output: Path | None, as_json: bool, **params: Any) -> None:
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
      edgekit convert vad.onnx --target x86-gateway --state stateN:state -o vad.ekb
      edgekit convert model.keras --target raspberry-pi-4 --prune 0.5 --train-data train.npz \\
          --calibration calib.npz --eval eval.npz -o small.ekb
      edgekit convert intent.keras --target raspberry-pi-5 --tokenizer tokenizer.json \\
          --calibration calib.jsonl --eval eval.jsonl --labels intents.txt -o intent.ekb
    """
    from edgekit import views
    from edgekit.convert import convert as run_convert
    from edgekit.fit.report import write_convert_report
    from edgekit.views.console import RichReporter, quiet_native_output

    options = convert_options(model, output or _default_output(model), params)
    ui = ui_console(ctx)
    with quiet_native_output(enabled=not debug(ctx)):
        result = run_convert(options, RichReporter(ui))
    if params["report"] is not None:
        write_convert_report(params["report"], result, options.profile, model.name)
    if as_json:
        print_json(views.convert_json(result))
    else:
        views.print_convert_summary(ui, Console(), result)


@click.command("fit")
@click.argument("model", type=click.Path(path_type=Path))
@target_option
@evaluation_option(required=True, help="Held-out .npz with x and labels y (a text model: .jsonl).")
@calibration_option
@train_data_option
@click.option(
    "--prune-ratios",
    type=RatiosType(),
    default="0,0.25,0.5",
    show_default=True,
    help="Structured pruning ratios to try (0 = unpruned); needs --train-data.",
)
@format_option(multiple=True, help="Formats to try (repeatable). Default: the profile's.")
@precision_option(multiple=True, help="Precisions to try (repeatable). Default: all.")
@click.option("--max-minutes", type=click.FloatRange(min=0), default=30.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same search, same choice.")
@max_accuracy_drop_option
@max_robustness_drop_option
@_text_options
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="Class names, one per line.")
@report_option
@sign_key_option
@output_option("Bundle to write. Default: MODEL's name with .ekb in the current folder.")
@json_option
@click.pass_context
def fit_command(ctx: click.Context, model: Path, output: Path | None, as_json: bool, **params: Any) -> None:
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
      edgekit fit intent.keras -t raspberry-pi-5 --tokenizer tokenizer.json --labels intents.txt \\
          --eval eval.jsonl --train-data train.jsonl --calibration calib.jsonl
    """
    from edgekit import views
    from edgekit.fit.report import write_fit_report
    from edgekit.fit.search import fit, nothing_fits
    from edgekit.views.console import RichReporter, quiet_native_output

    output = output or _default_output(model)
    options = fit_options(model, output, params)
    with quiet_native_output(enabled=not debug(ctx)):
        result = fit(options, RichReporter(ui_console(ctx)))
    if params["report"] is not None:
        write_fit_report(params["report"], result, options.profile, model.name)
    if as_json:
        print_json(views.fit_json(result, output))
    else:
        views.print_fit(Console(), result, output)
    if result.chosen is None:
        raise nothing_fits(result, options.profile.id)


def convert_options(model: Path, output: Path, params: dict[str, Any]) -> ConvertOptions:
    """``convert``'s options from its click parameters, each by name: a renamed option
    fails here, in every test that converts, not silently in a field left at its default."""
    from edgekit.convert import ConvertOptions

    return ConvertOptions(
        model=model, profile=params["profile"], output=output, precision=params["precision"],
        format=params["format"], calibration=params["calibration"], evaluation=params["evaluation"],
        eval_output=params["eval_output"], telemetry_output=params["telemetry_output"], state=params["state"],
        max_accuracy_drop=params["max_accuracy_drop"], max_robustness_drop=params["max_robustness_drop"],
        allow_accuracy_drop=params["allow_accuracy_drop"], allow_over_budget=params["allow_over_budget"],
        force=params["force"], name=params["name"], version=params["version"], labels=params["labels"],
        gate_metric=params["gate_metric"], tokenizer=params["tokenizer"], label_column=params["label_column"],
        max_sequence_length=params["max_sequence_length"], calibration_method=params["calibration_method"],
        max_perplexity_increase=params["max_perplexity_increase"],
        tflite_quantizer=params["tflite_quantizer"], keep_float=params["keep_float"],
        input_shape=params["input_shape"], sign_key=params["sign_key"],
        prune=params["prune"], prune_mode=params["prune_mode"], train_data=params["train_data"],
        prune_epochs=params["prune_epochs"], drop_layers=params["drop_layers"],
    )


def fit_options(model: Path, output: Path, params: dict[str, Any]) -> FitOptions:
    """``fit``'s options from its click parameters, each by name (as ``convert_options``)."""
    from edgekit.fit.search import FitOptions

    return FitOptions(
        model=model, profile=params["profile"], output=output, evaluation=params["evaluation"],
        calibration=params["calibration"], train_data=params["train_data"],
        prune_ratios=params["prune_ratios"], formats=tuple(params["formats"]) or None,
        precisions=tuple(params["precisions"]) or None,
        max_minutes=params["max_minutes"], seed=params["seed"], max_accuracy_drop=params["max_accuracy_drop"],
        max_robustness_drop=params["max_robustness_drop"], sign_key=params["sign_key"],
        tokenizer=params["tokenizer"], max_sequence_length=params["max_sequence_length"],
        labels=params["labels"],
    )


def _default_output(model: Path) -> Path:
    return Path(f"{model.stem or model.name}.ekb")


COMMANDS = (targets, convert, fit_command)
