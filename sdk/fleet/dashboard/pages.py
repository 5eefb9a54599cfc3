"""The dashboard's HTML: every page is complete without scripts; dashboard.js adds sorting,
filtering, labelling and live updates by polling the same server."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from edgekit.fleet.dashboard import svg
from edgekit.fleet.dashboard.data import class_shares
from edgekit.runtime.telemetry.stats import PSI_MODERATE, PSI_SIGNIFICANT

POLL_MS = 2000
NAV = (
    ("/", "Fleet"), ("/drift", "Drift"), ("/samples", "Samples"), ("/rollouts", "Rollouts"),
    ("/privacy", "Privacy"),
)  # fmt: skip
COLUMNS = (
    ("node", "device"), ("status", "state"), ("last_seen", "last seen"), ("version", "model"),
    ("rate", "inferences/s"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("error_rate", "errors"),
    ("drift", "drift"), ("dropped", "drops"),
)


def layout(fleet: str, title: str, body: str, here: str) -> str:
    links = "".join(
        f'<a href="{href}"{" class=here" if href == here else ""}>{name}</a>' for href, name in NAV
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{escape(title)} · {escape(fleet)} · edgekit</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml"><link rel="stylesheet" href="/static/dashboard.css"><script src="/static/dashboard.js" defer></script>
</head><body data-poll="{POLL_MS}">
<header><strong>edgekit</strong> <span class="fleet">fleet {escape(fleet)}</span><nav>{links}</nav>
<span id="updated" class="muted"></span></header>
<main><h1>{escape(title)}</h1>{body}</main></body></html>"""


def ago(seconds: float, now: float | None = None) -> str:
    gone = max(0.0, (time.time() if now is None else now) - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if gone >= size:
            return f"{gone / size:.0f} {unit} ago"
    return f"{gone:.0f} s ago"


def cell(key: str, row: dict[str, Any]) -> str:
    """One fleet-table cell, with its sort value."""
    value = row[key]
    shown = {
        "node": lambda: f'<a href="/device/{row["node"]}"><code>{row["node"][:12]}</code></a>',
        "status": lambda: f'<span class="state-{row["status"]}">{row["status"]}</span>',
        "last_seen": lambda: ago(row["last_seen"]),
        "version": lambda: f"{escape(row['model'])} v{row['version']}",
        "error_rate": lambda: f"{row['error_rate']:.2%}",
        "drift": lambda: "-" if value is None else f"{value:.3f} {row['level']}",
    }.get(key, lambda: "-" if value is None else f"{value:g}")()
    level = f' class="level-{row["level"]}"' if key == "drift" else ""
    sort = "" if value is None else escape(str(value))
    return f'<td data-sort="{sort}"{level}>{shown}</td>'


def fleet_rows_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f'<tr><td colspan="{len(COLUMNS)}" class="muted">no reports yet: is fleet collect running?</td></tr>'
    return "".join(
        f'<tr data-node="{r["node"]}" data-text="{escape(r["node"] + " " + r["status"] + " " + r["model"] + " v" + str(r["version"]) + " " + r["level"])}">'
        + "".join(cell(key, r) for key, _ in COLUMNS)
        + "</tr>"
        for r in rows
    )


def fleet_page(fleet: str, rows: list[dict[str, Any]]) -> str:
    online = sum(r["status"] in ("online", "reporting") for r in rows)
    drifting = sum(r["level"] == "drift" for r in rows)
    head = "".join(f'<th data-key="{key}" tabindex="0">{name}</th>' for key, name in COLUMNS)
    body = f"""<p class="summary"><span id="count">{len(rows)}</span> devices, {online} online, {drifting} drifting.
Drift is the PSI against the bundle's reference: below {PSI_MODERATE} ok, {PSI_MODERATE}-{PSI_SIGNIFICANT} a shift,
above {PSI_SIGNIFICANT} drift.</p>
<input id="filter" type="search" placeholder="filter: a device, a version, drift, offline..." aria-label="filter">
<table id="fleet" class="sortable"><thead><tr>{head}</tr></thead>
<tbody data-source="/fragment/fleet">{fleet_rows_html(rows)}</tbody></table>"""
    return layout(fleet, "Fleet", body, "/")


def device_charts(series: list[dict[str, Any]], reference: list[float] | None) -> str:
    if not series:
        return '<p class="muted">no reports from this device</p>'
    times = [s["end"] for s in series]
    charts = [
        svg.line_chart("latency (ms)", times, {"p50": [s["p50_ms"] for s in series], "p95": [s["p95_ms"] for s in series]}, " ms"),
        svg.line_chart("throughput (inferences/s)", times, {"inferences/s": [s["rate"] for s in series]}),
        svg.line_chart("errors per window", times, {"errors": [s["errors"] for s in series]}),
        svg.line_chart("drift (PSI)", times, {"input": [s["input_psi"] for s in series],
                                              "output": [s["output_psi"] for s in series]},
                       thresholds={"shift": PSI_MODERATE, "drift": PSI_SIGNIFICANT}),
    ]  # fmt: skip
    shares = class_shares(series)
    if shares is not None:
        groups = {"last 10 windows": shares}
        if reference is not None and len(reference) == len(shares):
            groups["bundle's reference"] = list(reference)
        charts.append(svg.bars("predicted classes", groups, [str(i) for i in range(len(shares))]))
    return "".join(charts)


def device_page(fleet: str, node: str, series: list[dict[str, Any]], reference: list[float] | None) -> str:
    latest = series[-1] if series else None
    running = f"{escape(latest['model'])} v{latest['version']}" if latest else "-"
    node = escape(node)
    body = f"""<p>Device <code>{node}</code> (a pseudonym of this epoch) runs {running};
{len(series)} windows shown.</p>
<div id="charts" data-source="/fragment/device/{node}">{device_charts(series, reference)}</div>"""
    return layout(fleet, f"Device {node[:12]}", body, "")


def drift_rows_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<tr><td colspan="6" class="muted">no drift measured yet</td></tr>'
    out = []
    for r in rows:
        since = "-" if r["since"] is None else ago(r["since"])
        features = (
            ", ".join(
                f'<span class="level-{f["level"]}">{escape(f["feature"])}: {f["psi"]:.2f}</span>'
                for f in r["features"]
            )
            or '<span class="muted">per-feature PSI needs --bundle</span>'
        )
        drift = "-" if r["drift"] is None else f"{r['drift']:.3f}"
        out.append(
            f'<tr data-node="{r["node"]}"><td><a href="/device/{r["node"]}"><code>{r["node"][:12]}</code></a></td>'
            f'<td class="level-{r["level"]}">{drift} {r["level"]}</td><td>{since}</td>'
            f"<td>{_num(r['input_psi'])} / {_num(r['output_psi'])}</td><td>{features}</td>"
            f"<td>{svg.sparkline(r['trend'], PSI_SIGNIFICANT)}</td></tr>"
        )
    return "".join(out)


def drift_page(fleet: str, rows: list[dict[str, Any]]) -> str:
    body = f"""<p>Which devices drift, since when, and which input features drift most (the PSI of the
last windows' summed bins against the bundle's reference). Threshold: {PSI_SIGNIFICANT}.</p>
<table id="drift"><thead><tr><th>device</th><th>drift now</th><th>drifting since</th><th>input / output PSI</th>
<th>features</th><th>trend</th></tr></thead><tbody data-source="/fragment/drift">{drift_rows_html(rows)}</tbody></table>"""
    return layout(fleet, "Drift", body, "/drift")


def sample_card(row: dict[str, Any], preview: str, classes: tuple[str, ...] | None = None) -> str:
    """One captured sample with its label form: the model's class names when a bundle gave
    them (a menu of its classes), else a class index."""
    key = f"{row['node']}/{row['epoch']}/{row['seq']}/{row['idx']}"
    label = row["label"]
    predicted = _class_name(row["pred"], classes)
    if classes:
        options = "".join(
            f'<option value="{escape(name)}"{" selected" if i == label else ""}>{escape(name)}</option>'
            for i, name in enumerate(classes)
        )
        field = f'<select name="label" aria-label="label" required><option value="">class...</option>{options}</select>'
    else:
        shown = "" if label is None else str(label)
        field = f'<input name="label" type="number" min="0" step="1" value="{shown}" aria-label="label" required>'
    return f"""<figure class="sample" data-key="{key}">{preview}
<figcaption><code>{row["node"][:8]}</code> #{row["seq"]}.{row["idx"]} · predicted {escape(predicted)} at
{row["confidence"]:.2f}<form class="label" method="post" action="/label/{key}">{field}
<button type="submit">{"Relabel" if label is not None else "Label"}</button></form></figcaption></figure>"""


def _class_name(index: Any, classes: tuple[str, ...] | None) -> str:
    if classes and isinstance(index, int) and 0 <= index < len(classes):
        return classes[index]
    return str(index)


def samples_page(fleet: str, cards: list[str], show: str, counts: dict[str, int]) -> str:
    tabs = " · ".join(
        f'<a href="/samples?show={name}"{" class=here" if name == show else ""}>{name} ({counts[name]})</a>'
        for name in ("unlabelled", "labelled", "all")
    )
    body = f"""<p>Captured samples, least confident first, decrypted here with the fleet key. A label is one of
the model's classes, chosen by name where the dashboard was given its bundle (<code>--bundle</code>), else
its class index; it is written to the database at once. {tabs}</p>
<p>Export for retraining: <a href="/export/samples.npz?labelled=1">labelled samples.npz</a> (x, y: for
<code>convert --eval</code>) · <a href="/export/samples.npz">all samples.npz</a> (for <code>--calibration</code>),
or <code>edgekit fleet export --labelled</code>.</p>
<div id="samples">{"".join(cards) or '<p class="muted">no samples here</p>'}</div>"""
    return layout(fleet, "Samples", body, "/samples")


def rollouts_page(fleet: str, rollouts: list[dict[str, Any]]) -> str:
    sections = []
    for item in rollouts:
        events = "".join(
            f"<tr><td>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['at']))}</td><td>{escape(e['event'])}</td>"
            f"<td>{escape(str(e['body'].get('decision') or e['body'].get('reason') or ''))}</td></tr>"
            for e in item["events"]
        )
        sections.append(f"""<section class="rollout"><h2>{escape(item["rollout"])}
<span class="phase-{escape(item["decision"] or "running")}">{escape(item["decision"] or "watching")}</span></h2>
<p>{escape(item["reason"] or "")}</p>{item["charts"]}
<p class="muted">Dashed: what the rule allowed, the control group's value plus its limit.</p><table><tbody>{events}</tbody></table></section>""")
    body = "".join(sections) or '<p class="muted">no rollouts recorded: run fleet deploy with --db</p>'
    return layout(
        fleet, "Rollouts", f'<div id="rollouts" data-source="/fragment/rollouts">{body}</div>', "/rollouts"
    )


def privacy_rows_html(view: dict[str, Any]) -> str:
    if not view["nodes"]:
        return '<tr><td colspan="8" class="muted">no reports yet</td></tr>'
    out = []
    for n in view["nodes"]:
        budget, spent = n["dp_budget"], n["dp_spent"]
        meter = (
            f'<meter min="0" max="{budget:g}" value="{spent:g}" high="{0.8 * budget:g}"></meter> '
            f"{spent:.3g} of {budget:.3g}"
            if budget and spent is not None
            else "-"
        )
        unit = "no DP" if n["dp_unit"] is None else (
            f"a window of ≤{n['dp_clip']}" if n["dp_unit"] == "window" else f"one {n['dp_unit']}"
        )  # fmt: skip
        text = {None: "-", True: "de-identified", False: "as typed"}[n["deidentified"]]
        findings = "".join(f"<div>{escape(f)}</div>" for f in n["findings"])
        warn = " class=level-drift" if n["findings"] or n["deidentified"] is False else ""
        out.append(
            f'<tr{warn}><td><a href="/device/{n["node"]}"><code>{n["node"][:12]}</code></a></td>'
            f"<td>{_num(n['dp_epsilon'])}</td><td>{meter}</td><td>{unit}</td><td>{n['k'] or '-'}</td>"
            f"<td>{escape(n['capture'])}</td><td>{text}</td><td>{findings or '-'}</td></tr>"
        )
    return "".join(out)


def privacy_page(fleet: str, view: dict[str, Any]) -> str:
    s = view["summary"]
    body = f"""<p>What each device's reports say of their privacy, checked where a reader can check it
(docs/privacy.md): {s['with_dp']} of {s['nodes']} device pseudonyms report with differential privacy,
{s['findings']} findings. The same as <code>edgekit fleet privacy</code>.</p>
<table id="privacy"><thead><tr><th>device</th><th>ε per report</th><th>ε spent of the budget</th>
<th>ε protects</th><th>k</th><th>captures</th><th>text</th><th>findings</th></tr></thead>
<tbody data-source="/fragment/privacy">{privacy_rows_html(view)}</tbody></table>"""
    return layout(fleet, "Privacy", body, "/privacy")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
