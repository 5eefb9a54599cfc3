"""The fleet's drift report: per node, the drift score of each window, as JSON and as a page."""

from __future__ import annotations

import math
from typing import Any

from edgekit.fleet.messages import drift_level
from edgekit.runtime.telemetry.stats import PSI_MODERATE, PSI_SIGNIFICANT
from edgekit.views.figures import missing, png_img, pyplot


def drift_report(fleet: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    nodes: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        if not isinstance(report.get("drift"), dict) or not _finite(report["drift"].get("score")):
            continue  # no drift measured, or a number no schema accepts today (collected before)
        nodes.setdefault(report["node"], []).append(
            {
                "end": report["end"],
                "inferences": report["inferences"],
                "score": report["drift"]["score"],
                "input_psi": report["drift"]["input_psi"],
                "output_psi": report["drift"]["output_psi"],
            }
        )
    latest = {node: series[-1]["score"] for node, series in nodes.items() if series}
    flagged = sorted(node for node, score in latest.items() if score >= PSI_SIGNIFICANT)
    return {
        "fleet": {
            "name": fleet,
            "nodes": len(nodes),
            "windows": sum(len(s) for s in nodes.values()),
            "max_score": max(latest.values(), default=None),
            "drifting_nodes": flagged,
            "thresholds": {"shift": PSI_MODERATE, "drift": PSI_SIGNIFICANT},
        },
        "nodes": nodes,
    }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def drift_html(drift: dict[str, Any]) -> str:
    """A small self-contained page: drift score per node over time, with the thresholds."""
    image = _plot(drift["nodes"]) if drift["nodes"] else ""
    fleet = drift["fleet"]
    rows = "".join(
        f"<tr><td><code>{node[:12]}</code></td><td>{len(series)}</td><td>{series[-1]['score']:.3f}</td>"
        f"<td>{drift_level(series[-1]['score'])}</td></tr>"
        for node, series in sorted(drift["nodes"].items())
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekit drift: {fleet["name"]}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}
td,th{{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}}</style>
</head><body>
<h1>Drift in fleet {fleet["name"]}</h1>
<p>{fleet["nodes"]} nodes, {fleet["windows"]} windows. Population stability index of each window's
inputs and predictions against the bundle's reference statistics: below {PSI_MODERATE} stable,
{PSI_MODERATE}-{PSI_SIGNIFICANT} a shift, above {PSI_SIGNIFICANT} drift.
Drifting now: {", ".join(f"<code>{n[:12]}</code>" for n in fleet["drifting_nodes"]) or "none"}.</p>
{image}
<table><tr><th>node</th><th>windows</th><th>latest score</th><th>reading</th></tr>{rows}</table>
</body></html>
"""


def _plot(nodes: dict[str, list[dict[str, Any]]]) -> str:
    plt = pyplot()
    if plt is None:
        return missing("plot")
    figure, axis = plt.subplots(figsize=(8, 3.5), dpi=110)
    start = min(point["end"] for series in nodes.values() for point in series)
    for node, series in sorted(nodes.items()):
        minutes = [(p["end"] - start) / 60 for p in series]
        axis.plot(minutes, [p["score"] for p in series], marker=".", label=node[:8])
    axis.axhline(PSI_MODERATE, color="orange", linestyle="--", linewidth=1, label="shift (0.1)")
    axis.axhline(PSI_SIGNIFICANT, color="red", linestyle="--", linewidth=1, label="drift (0.25)")
    axis.set_xlabel("minutes since the first report")
    axis.set_ylabel("drift score (PSI)")
    axis.legend(fontsize="small", ncols=2)
    return png_img(figure, "drift score per node")
