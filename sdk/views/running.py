"""How running a model looks: ``run`` outputs and ``bench`` numbers."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from edgekit.views.bundles import mark, size


def model_info(model: Any) -> dict[str, Any]:
    info = model.info
    return {
        "name": info.name, "version": info.version, "format": info.format, "precision": info.precision,
        "engine": info.engine, "provider": info.provider, "threads": info.threads,
        "load_ms": info.load_ms, "fallbacks": list(info.fallbacks),
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in info.inputs],
        "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in info.outputs],
    }  # fmt: skip


def run_result(model: Any, outputs: Any, top_k: int | None) -> dict[str, Any]:
    result: dict[str, Any] = {"model": model_info(model)}
    arrays = outputs if isinstance(outputs, dict) else {model.info.outputs[0].name: outputs}
    if top_k is None:
        result["outputs"] = {name: value.tolist() for name, value in arrays.items()}
        return result
    primary = model.manifest.primary_output if model.manifest.primary_output in arrays else next(iter(arrays))
    scores = arrays[primary].reshape(len(arrays[primary]), -1)
    result["top_k_output"] = primary
    labels = model.manifest.labels
    best = []
    for row in scores:
        order = row.argsort()[::-1][:top_k]
        names = [labels[i] if labels and i < len(labels) else None for i in order]
        best.append(
            [{"class": int(i), "label": n, "score": float(row[i])} for i, n in zip(order, names, strict=True)]
        )
    result["top_k"] = best
    return result


def tag_result(model: Any, tagged: list[list[tuple[str, str | None]]]) -> dict[str, Any]:
    """A token classification run: each text's words with their tags, and the entity spans."""
    from edgekit.core.spans import entities

    texts = []
    for words in tagged:
        spans = entities([tag or "O" for _, tag in words])
        texts.append({
            "words": [{"word": word, "tag": tag} for word, tag in words],
            "entities": [
                {"type": kind, "text": " ".join(w for w, _ in words[first : last + 1])}
                for kind, first, last in spans
            ],
        })
    return {"model": model_info(model), "texts": texts}


def print_run(out: Console, model: Any, result: dict[str, Any]) -> None:
    info = model.info
    out.print(
        f"[dim]{info.name} v{info.version}: {info.format} {info.precision} on {info.engine}[/]",
        highlight=False,
    )
    if "telemetry" in result:
        status = result["telemetry"]
        waiting = f", {status['queued']} waiting on disk" if status["queued"] else ""
        out.print(
            f"[dim]telemetry to {status['broker']}: {status['released']} report(s), "
            f"{status['sent']} message(s) delivered{waiting}[/]",
            highlight=False,
        )
    if "texts" in result:
        table = Table("text", "entities", box=None, padding=(0, 2))
        for text in result["texts"]:
            found = ", ".join(f"{e['type']}: {e['text']}" for e in text["entities"]) or "-"
            table.add_row(" ".join(w["word"] for w in text["words"]), found)
        out.print(table)
        return
    if "top_k" in result:
        table = Table("sample", "rank", "class", "label", "score", box=None, padding=(0, 2))
        for sample, ranked in enumerate(result["top_k"]):
            for rank, entry in enumerate(ranked, 1):
                table.add_row(str(sample) if rank == 1 else "", str(rank), str(entry["class"]),
                              entry["label"] or "-", f"{entry['score']:.4f}")
        out.print(table)
        return
    import numpy as np

    with np.printoptions(precision=4, suppress=True, threshold=200):
        for name, value in result["outputs"].items():
            out.print(f"[bold]{name}[/] {np.asarray(value).shape}", highlight=False)
            out.print(str(np.asarray(value)), highlight=False)


def print_bench(out: Console, model: Any, result: Any) -> None:
    info = model.info
    out.print(
        f"[bold]{info.name}[/] v{info.version}: {info.format} {info.precision} on {info.engine}, "
        f"{info.threads} threads, {result.runs} runs, batch {result.batch}"
        + (f", {result.concurrency} callers at once" if result.concurrency > 1 else ""),
        highlight=False,
    )
    for line in info.fallbacks:
        out.print(f"  [yellow]fallback:[/] {line}", highlight=False)
    table = Table("", "p50", "p90", "p99", "samples/s", box=None, padding=(0, 2))
    rows = [("edgekit", result.edgekit)] + ([("bare", result.bare)] if result.bare else [])
    for name, t in rows:
        table.add_row(name, f"{t.p50_ms:.3f} ms", f"{t.p90_ms:.3f} ms", f"{t.p99_ms:.3f} ms",
                      f"{t.throughput_per_s:,.0f}/s")
    out.print(table)
    if result.overhead_ratio is not None:
        out.print(
            f"  overhead     {result.overhead_ratio:.3f}× at p50 ({result.overhead_us:+.1f} µs per call)"
        )
    out.print(f"  load         {result.load_ms:.1f} ms (verify, decompress, open)")
    out.print(f"  peak RSS     {size(result.peak_rss_bytes)} (this process)")
    if result.latency_budget_ms is not None:
        verdict, p90 = mark(bool(result.within_latency_budget)), result.edgekit.p90_ms
        out.print(f"  budget       {verdict} p90 {p90:.3f} ms of {result.latency_budget_ms:g} ms")


def generation_line(found: dict[str, Any]) -> str:
    """``bench`` of a decoder, in one line."""
    return (
        f"{found['model']['name']}: time to first token {found['time_to_first_token_ms']:.1f} ms "
        f"({found['prompt_tokens']} prompt tokens), {found['decode_tokens_per_s']:.0f} tokens/s over "
        f"{found['new_tokens']} new tokens (median of {found['runs']}), peak memory "
        f"{found['peak_rss_bytes'] / 2**20:.0f} MB; the cache takes "
        f"{found['cache_bytes_at_context'] / 2**20:.1f} MB at the full context"
    )
