"""Device-side commands that run a model: ``run`` and ``bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console

from edgekit.cli.common import error_line, load_model, print_json, say
from edgekit.cli.options import (
    artifact_format_option,
    bundle_options,
    json_option,
    threads_option,
    together,
)

telemetry_options = together(
    click.option(
        "--telemetry",
        "telemetry_url",
        metavar="URL",
        default=None,
        help="Report this run to an MQTT broker (mqtt://host:1883, mqtts://host:8883); needs --fleet.",
    ),
    click.option(
        "--fleet", default=None, help="Fleet name for --telemetry (its keys from `edgekit fleet init`)."
    ),
    click.option(
        "--telemetry-config",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="TOML file with a [telemetry] table of Telemetry settings (see docs/telemetry.md).",
    ),
)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--input",
    "-i",
    "input_values",
    metavar="[NAME=]FILE",
    multiple=True,
    help="The input batch: an image, .npy, or .npz with array x. Several inputs: NAME=FILE.npy "
    "once per input, or one .npz with an array per input name.",
)
@click.option(
    "--text",
    "texts",
    multiple=True,
    help="A text model: a text to classify, tokenized on the device by the bundle's tokenizer "
    "(repeatable: one sample each); a token classification model tags each word and prints "
    "the entities it found. Needs edgekit[text].",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="Print the k best classes per sample (names from the bundle's labels).",
)
@threads_option
@artifact_format_option
@bundle_options
@click.option(
    "--isolate",
    is_flag=True,
    help="Run the engine in a child process with memory and time limits, for a model nobody "
    "vouches for: a crash there is an error line here.",
)
@telemetry_options
@json_option
@click.pass_context
def run(
    ctx: click.Context,
    bundle: Path,
    input_values: tuple[str, ...],
    texts: tuple[str, ...],
    top_k: int | None,
    as_json: bool,
    **fields: Any,
) -> None:
    """Run a bundle on an input batch and print every output, or the top-k labels.

    \b
    Examples:
      edgekit run digits.ekb --input sample.npy --top-k 3
      edgekit run digits.ekb --input meter-digit.png --top-k 1
      edgekit run detector.ekb --input image=frame.npy --input meta=meta.npy
      edgekit run digits --input x.npy --telemetry mqtt://gateway:1883 --fleet factory-7
      edgekit run intent.ekb --text "turn on the kitchen lights" --top-k 1
    """
    from edgekit import views
    from edgekit.convert.data import load_inputs
    from edgekit.core.errors import InputError

    if bool(texts) == bool(input_values):
        raise InputError("give the input batch with --input FILE, or a text model's texts with --text")
    telemetry = telemetry_from(
        fields.pop("telemetry_url"), fields.pop("fleet"), fields.pop("telemetry_config")
    )
    isolate = fields.pop("isolate")
    model = load_model(ctx, bundle, telemetry=telemetry, isolate=isolate, **model_options(fields))
    if texts and model.manifest.text is not None and model.manifest.text.task == "tokens":
        result = views.tag_result(model, model.tag_text(list(texts)))
    elif texts:
        result = views.run_result(model, model.predict_text(list(texts)), top_k)
    else:
        outputs = model.predict(load_inputs(input_values, model.manifest, model.info.inputs))
        result = views.run_result(model, outputs, top_k)
    model.close()
    if telemetry is not None:
        result["telemetry"] = telemetry.status
    if as_json:
        print_json(result)
    else:
        views.print_run(Console(), model, result)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runs", type=click.IntRange(min=1), default=None,
              help="Calls to time [default: 500; a decoder: 5 generations].")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="A decoder: tokens in each prompt (time to first token).")
@click.option("--new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="A decoder: tokens generated after each prompt (decode tokens/s).")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@threads_option
@artifact_format_option
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Samples per call.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Threads calling at once; throughput is then over the wall-clock time.",
)
@click.option(
    "--compare-bare",
    is_flag=True,
    help="Also time the bare interpreter or session on the same artifact and input, "
    "interleaved, and print edgekit's overhead.",
)
@bundle_options
@json_option
@click.pass_context
def bench(
    ctx: click.Context, bundle: Path, runs: int | None, warmup: int, compare_bare: bool, batch: int,
    concurrency: int, prompt_tokens: int, new_tokens: int, as_json: bool, **fields: Any,
) -> None:
    """Measure latency percentiles, throughput, load time and peak memory on this device;
    for a decoder, time to first token and decode tokens/s.

    Exits 1 when p90 latency breaks the profile's latency budget.

    \b
    Examples:
      edgekit bench digits.ekb --runs 1000 --compare-bare
      edgekit bench digits.ekb --batch 8 --concurrency 4   # 4 callers at once, 8 samples a call
      edgekit bench assistant.ekb --prompt-tokens 64 --new-tokens 64
    """
    from edgekit import views
    from edgekit.runtime.bench import bench as run_bench
    from edgekit.runtime.bench import bench_generation

    model = load_model(ctx, bundle, **model_options(fields))
    if model.manifest.generation is not None:
        found = bench_generation(model, prompt_tokens, new_tokens, runs or 5)
        model.close()
        found = {"model": views.model_info(model), **found}
        say(as_json, found, views.generation_line(found))
        return
    runs = runs or 500
    result = run_bench(model, runs=runs, warmup=warmup, compare_bare=compare_bare, batch=batch,
                       concurrency=concurrency)  # fmt: skip
    if as_json:
        print_json({"model": views.model_info(model), **result.as_dict()})
    else:
        views.print_bench(Console(), model, result)
    if result.within_latency_budget is False:
        error_line(
            f"p90 latency {result.edgekit.p90_ms:.3f} ms breaks the profile's "
            f"{result.latency_budget_ms:g} ms budget"
        )
        ctx.exit(1)


def model_options(fields: dict[str, Any]) -> dict[str, Any]:
    """The shared --threads, --format, --allow-unsigned and --max-size, as Model.load takes them."""
    names = {
        "threads": "threads",
        "fmt": "format",
        "allow_unsigned": "allow_unsigned",
        "max_bytes": "max_bytes",
    }
    return {option: fields[field] for field, option in names.items()}


def telemetry_from(url: str | None, fleet: str | None, config: Path | None) -> Any:
    """A Telemetry from --telemetry URL --fleet NAME, or from --telemetry-config; None without."""
    if url is None and config is None:
        if fleet is not None:
            raise click.UsageError("--fleet goes with --telemetry URL or --telemetry-config")
        return None
    from edgekit.runtime import Telemetry

    if config is not None:
        return Telemetry.from_file(config, broker=url, fleet=fleet)
    if fleet is None:
        raise click.UsageError("--telemetry needs --fleet NAME (the fleet whose keys are on this device)")
    assert url is not None  # neither given returned above
    return Telemetry(url, fleet)


COMMANDS = (run, bench)
