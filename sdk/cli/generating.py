"""``edgekit generate``: a decoder bundle's continuation of a prompt, whole or streamed."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import load_model, print_json
from edgekit.cli.options import artifact_format_option, bundle_options, json_option, threads_option


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="The text to continue.")
@click.option("--max-tokens", "max_new_tokens", type=int, default=64, show_default=True,
              help="New tokens at most (the bundle's context bounds prompt and new tokens together).")
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="0 is greedy: the likeliest token each step. Above 0 samples, flatter as it grows.")
@click.option("--top-k", type=int, default=0, show_default=True,
              help="Sample from the k likeliest tokens (0: all).")
@click.option("--top-p", type=float, default=1.0, show_default=True,
              help="Sample from the likeliest tokens that together reach p (nucleus sampling).")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True,
              help="Above 1 makes tokens already in the text less likely.")
@click.option("--seed", type=int, default=None, help="The same seed and settings give the same tokens.")
@click.option("--stop", multiple=True, help="A string that ends the text (repeatable); it is not printed.")
@click.option("--stream", is_flag=True, help="Print each piece of text as it is generated.")
@threads_option
@artifact_format_option
@bundle_options
@json_option
@click.pass_context
def generate(
    ctx: click.Context, bundle: Path, prompt: str, stream: bool, as_json: bool, **fields: Any
) -> None:
    """Continue a prompt with a decoder bundle (one converted from a decoder with a
    key-value cache), on this device, with no TensorFlow or torch.

    \b
    Greedy by default, so the same bundle and prompt give the same text; --temperature,
    --top-k and --top-p sample, and --seed makes sampling repeatable. It stops at
    --max-tokens, at the bundle's stop tokens, at a --stop string, or at the context.
    With --json: the text, the tokens, why it stopped, time to first token and tokens/s.
    \b
    Examples:
      edgekit generate assistant.ekb --prompt "kitchen lights are" --max-tokens 40
      edgekit generate assistant --prompt "it is too warm" --temperature 0.7 --top-p 0.9 --seed 1 --stream
    """
    from edgekit.cli.running import model_options

    settings = {k: fields.pop(k) for k in (
        "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "stop"
    )}  # fmt: skip
    model = load_model(ctx, bundle, **model_options(fields))
    started = time.perf_counter()
    first, pieces = None, []
    try:
        for piece in model.generate_stream(prompt, **settings):
            first = first if first is not None else time.perf_counter() - started
            pieces.append(piece)
            if stream and not as_json:
                click.echo(piece, nl=False)
                sys.stdout.flush()
    finally:
        model.close()
    seconds = time.perf_counter() - started
    done = model.last_generation
    text = "".join(pieces)
    if as_json and done is not None:
        new = len(done.tokens)
        rate = round((new - 1) / (seconds - first), 1) if first is not None and new > 1 else None
        print_json({
            "prompt": prompt, "text": text, "tokens": done.tokens, "prompt_tokens": done.prompt_tokens,
            "stop_reason": done.stop_reason, "tokens_per_s": rate,
            "time_to_first_token_ms": None if first is None else round(1000 * first, 2),
        })  # fmt: skip
    elif stream:
        click.echo()
    else:
        click.echo(text)


COMMANDS = (generate,)
