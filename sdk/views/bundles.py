"""How profiles, conversions and bundles look: rich tables for people, dicts for ``--json``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from edgekit.converters import ready_made
from edgekit.core.classes import metric_name
from edgekit.core.manifest import ArtifactEntry, Manifest
from edgekit.core.profiles import DeviceProfile
from edgekit.views.classes import class_table
from edgekit.views.progress import some

if TYPE_CHECKING:
    from edgekit.convert import ConvertResult

MB = 1024 * 1024


def size(n: float) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", MB), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def profiles_table(profiles: list[DeviceProfile]) -> Table:
    """One line per profile, within 80 columns (rich's width in a pipe)."""
    table = Table(
        title="Device profiles (--target ID)", title_justify="left", box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0), pad_edge=False, show_edge=False,
    )
    for column, justify in (("id", "left"), ("cpu", "left"), ("RAM", "right"), ("accelerator", "left"),
                            ("formats", "left"), ("budget MB", "right")):
        table.add_column(column, no_wrap=True, justify=justify, style="bold" if column == "id" else None)  # type: ignore[arg-type]
    for p in profiles:
        table.add_row(
            p.id,
            f"{_ARCH.get(p.hardware.cpu_arch, p.hardware.cpu_arch)}×{p.hardware.cpu_cores}",
            f"{p.hardware.ram_mb // 1024} GB" if p.hardware.ram_mb >= 1024 else f"{p.hardware.ram_mb} MB",
            _accelerator(p),
            ",".join(p.runtime.formats),
            f"{p.budget.model_memory_mb:g}/{p.budget.model_storage_mb:g}",
        )
    table.caption, table.caption_justify = "budget: model memory / storage", "left"
    return table


_ARCH = {"aarch64": "arm64", "x86_64": "x86-64", "armv7l": "armv7"}


def _accelerator(profile: DeviceProfile) -> str:
    acc = profile.accelerator
    if acc.kind != "cuda":
        return "-"
    return f"CUDA {acc.cuda_compute_capability}" + (
        f"/TRT {acc.tensorrt_version}" if acc.tensorrt_version else ""
    )


def convert_json(result: ConvertResult) -> dict[str, Any]:
    return {
        "output": str(result.output),
        "manifest": result.manifest.model_dump(mode="json"),
        "tried": [{"precision": c.entry.precision, "problems": list(c.problems)} for c in result.tried],
        "warnings": list(result.warnings),
        "timings": {step: round(seconds, 3) for step, seconds in result.timings.items()},
    }


def mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[red bold]✗[/]"


def print_convert_summary(ui: Console, out: Console, result: ConvertResult) -> None:
    manifest = result.manifest
    for entry in manifest.artifacts:
        chosen = next((c for c in result.tried if c.entry.path == entry.path), None)
        if chosen is not None and chosen.problems:
            ui.print(
                Panel(
                    "\n".join(chosen.problems),
                    title="[red bold]SHIPPING A MODEL THAT BREAKS ITS LIMITS (explicitly allowed)",
                    border_style="red",
                )
            )
    names = ", ".join(f"{e.format} {e.precision}" for e in manifest.artifacts)
    out.print(
        f"[green bold]✓[/] wrote [bold]{result.output}[/]: {names} for {manifest.profile['id']}",
        highlight=False,
    )
    for entry in manifest.artifacts:
        if len(manifest.artifacts) > 1:
            out.print(f"[bold]{entry.path}[/]", highlight=False)
        out.print(_artifact_table(entry, manifest.profile, ready_made(manifest.source.kind)), highlight=False)
        _print_selection(out, entry)
        _print_classes(out, entry, manifest.labels)


def _print_classes(out: Console, entry: ArtifactEntry, labels: tuple[str, ...] | None) -> None:
    accuracy = entry.metrics.accuracy
    if accuracy is not None and accuracy.classes is not None:
        out.print(class_table(accuracy.classes, labels, entry.precision), highlight=False)


def _print_selection(out: Console, entry: ArtifactEntry) -> None:
    """Why this precision, and every candidate's numbers; long reasons wrap under themselves."""
    selection = entry.selection
    if selection is None or selection.method == "explicit":  # auto says why, on every profile
        return
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True, min_width=11)
    grid.add_column()
    grid.add_row("  chosen", f"{entry.precision}: {selection.reason}")
    for c in selection.candidates:
        why = "; ".join(c.problems) or "passed"
        grid.add_row("", f"{c.precision}: {size(c.size_bytes)}, {c.host_latency_ms:.3f} ms, {why}")
    out.print(grid, highlight=False)


def _size_line(weights: int, artifact: int) -> str:
    """The artifact against its float32 weights, saying so when it grew (a small model's
    graph and metadata outweigh its weights; an int8 model kept mostly in float)."""
    if weights <= 0:
        return f"{size(artifact)} (no float32 weights counted)"
    ratio = artifact / weights
    grew = ", larger than the float32 weights" if ratio > 1 else ""
    return f"{size(weights)} float32 weights → {size(artifact)} ({ratio:.2f}×{grew})"


def _artifact_table(entry: ArtifactEntry, profile: dict[str, Any], ready_made: bool = False) -> Table:
    m = entry.metrics
    budget = profile["budget"]
    table = Table(box=None, show_header=False, padding=(0, 1, 0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    storage_ok = m.size_bytes <= budget["model_storage_mb"] * MB
    memory_ok = m.peak_memory_bytes <= budget["model_memory_mb"] * MB
    if ready_made:
        table.add_row("size", f"{size(m.size_bytes)}, shipped as it was given")
    else:
        table.add_row("size", _size_line(m.float_parameter_bytes, m.size_bytes))
    table.add_row(
        "storage", f"{mark(storage_ok)} {size(m.size_bytes)} of {budget['model_storage_mb']:g} MB budget"
    )
    if m.model_memory_bytes is not None:  # a decoder: its weights and cache, then what the probe saw
        memory_ok = m.model_memory_bytes <= budget["model_memory_mb"] * MB
        memory = (f"{mark(memory_ok)} {size(m.model_memory_bytes)} weights and the cache at the full "
                  f"context, of {budget['model_memory_mb']:g} MB; {size(m.peak_memory_bytes)} measured "
                  "with the engine")  # fmt: skip
    else:
        memory = (f"{mark(memory_ok)} {size(m.peak_memory_bytes)} peak, measured (load + invoke), "
                  f"of {budget['model_memory_mb']:g} MB")  # fmt: skip
    table.add_row("memory", memory)
    g = m.generation
    if g is not None:
        table.add_row(
            "perplexity",
            f"{mark(g.gate == 'passed')} {g.float_perplexity:.4g} float → {g.artifact_perplexity:.4g} "
            f"{entry.precision}: {g.increase:+.2f}% (max {g.max_increase:g}%, {g.tokens} tokens of "
            f"{g.texts} texts)",
        )
        greedy = f"{g.agreement:.1f}% of the float model's first {g.continuation_tokens} tokens per prompt"
        table.add_row("greedy", greedy)
        table.add_row("decode", f"{1000 / m.host_latency_ms:.0f} tokens/s on this machine, batch 1")
        return table
    a = m.accuracy
    if a is None:
        why = "no float model to compare" if ready_made else "no --eval"
        table.add_row("accuracy", f"[yellow]not checked ({why})[/]")
    elif a.level == "map":
        table.add_row(
            "accuracy",
            f"{mark(a.gate == 'passed')} cosine with float {a.cosine:.4f}, max abs error "
            f"{a.max_abs_error:.3g} (n={a.samples}; no output is class scores, so cosine judges)",
        )
    else:
        spans = a.classes is not None and a.classes.float_model.names is not None
        what = metric_name(a.metric, a.level, spans)
        table.add_row(
            "accuracy",
            f"{mark(a.drop <= a.max_drop)} {what} {a.float_model:.2f}% float → "
            f"{a.artifact:.2f}% {entry.precision}: drop {a.drop:+.2f} pp (max {a.max_drop:g}, "
            f"n={a.samples})" + (f" on output '{a.output}'" if a.outputs else ""),
        )
    for name, each in (a.outputs or {}).items() if a is not None else ():
        table.add_row(
            "", f"output '{name}': cosine {each.cosine:.4f}, max abs error {each.max_abs_error:.3g}"
        )
    table.add_row("latency", f"{m.host_latency_ms:.3f} ms median, batch 1, on this host")
    q = entry.quantization
    if q is not None:
        details = [q.scheme] + [
            f"{label} {value}"
            for label, value in (("weights", q.weights), ("activations", q.activations),
                                 ("calibration", q.calibration_method), ("for", q.target),
                                 ("input and output", q.io))
            if value
        ]  # fmt: skip
        if q.float_nodes:
            details.append(f"kept in float: {some(q.float_nodes)}")
        table.add_row("quantized", ", ".join(details))
    if entry.opset:
        table.add_row("opset", str(entry.opset))
    return table


def print_manifest(
    out: Console, path: Path, manifest: Manifest, signature: dict[str, str] | None = None
) -> None:
    if signature is None:
        signed = "[yellow]unsigned[/]"
    else:
        color = "green" if signature["status"] == "trusted here" else "red"
        signed = f"[{color}]signed by {signature['key_id']} ({signature['status']})[/]"
    title = f"[bold]{manifest.name}[/] v{manifest.version}  [dim]{path}[/]"
    out.print(f"{title}  [green]✓ hashes verified[/]  {signed}", highlight=False)
    info = Table(box=None, show_header=False, padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    info.add_row("target", f"{manifest.profile['id']}: {manifest.profile['description']}")
    info.add_row(
        "source",
        f"{manifest.source.file} ({manifest.source.kind}, {size(manifest.source.size_bytes)}, "
        f"sha256 {manifest.source.sha256[:16]}…)",
    )
    info.add_row("created", manifest.created)
    info.add_row("tools", ", ".join(f"{k} {v}" for k, v in sorted(manifest.tools.items())))
    pre = manifest.preprocessing
    info.add_row(
        "preprocessing", f"layout {pre.layout or '-'}, calibrated input range {pre.input_range or '-'}"
    )
    if manifest.labels:
        info.add_row("labels", ", ".join(manifest.labels))
    if manifest.primary_output and len(manifest.artifacts[0].outputs) > 1:
        info.add_row("primary output", f"{manifest.primary_output} (telemetry's classes and confidence)")
    if manifest.state:
        pairs = ", ".join(f"{p.output} → {p.input}" for p in manifest.state)
        info.add_row("state", f"{pairs} (model.stream() feeds it back)")
    out.print(info)
    for entry in manifest.artifacts:
        out.print(
            f"\n[bold]{entry.path}[/]  {entry.format} {entry.precision}, {size(entry.size)}, "
            f"sha256 {entry.sha256[:16]}…",
            highlight=False,
        )
        tensors = Table(box=None, padding=(0, 1, 0, 1))
        for column in ("", "name", "shape", "dtype", "scale", "zero pt"):
            tensors.add_column(column, no_wrap=column != "name", overflow="fold")
        for role, group in (("input", entry.inputs), ("output", entry.outputs)):
            for t in group:
                q = t.quantization
                tensors.add_row(
                    role,
                    t.name,
                    str(list(t.shape)).replace("None", "?"),
                    t.dtype,
                    f"{q.scale:.6g}" if q else "",
                    str(q.zero_point) if q else "",
                )
        out.print(tensors)
        out.print(_artifact_table(entry, manifest.profile, ready_made(manifest.source.kind)))
        _print_classes(out, entry, manifest.labels)
        _print_selection(out, entry)
