"""``fleet privacy``: one row per device pseudonym, and what the fleet's reports promise."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def privacy_table(view: dict[str, Any]) -> Table:
    summary = view["summary"]
    table = Table(
        title=f"fleet {view['fleet']}: {summary['with_dp']} of {summary['nodes']} device pseudonyms "
        f"report with differential privacy, {summary['findings']} findings",
        title_justify="left",
    )
    table.add_column("node", no_wrap=True, min_width=12)
    for column in ("epoch", "reports", "ε/report", "ε spent", "budget", "protects", "k", "capture", "text"):
        table.add_column(column, justify="right" if column in ("epoch", "reports", "k") else "left")
    for node in view["nodes"]:
        table.add_row(
            node["node"][:12], str(node["epoch"]), str(node["reports"]),
            _number(node["dp_epsilon"]), _number(node["dp_spent"]), _number(node["dp_budget"]),
            _unit(node), str(node["k"] if node["k"] is not None else "-"), node["capture"],
            {None: "-", True: "de-identified", False: "AS TYPED"}[node["deidentified"]],
            style="red" if node["findings"] or node["deidentified"] is False else "",
        )  # fmt: skip
    return table


def findings(view: dict[str, Any]) -> list[str]:
    return [f"{node['node'][:12]}: {finding}" for node in view["nodes"] for finding in node["findings"]]


def _unit(node: dict[str, Any]) -> str:
    if node["dp_unit"] is None:
        return "no DP"
    if node["dp_unit"] == "window":
        return f"window ≤{node['dp_clip']}"
    return f"1 {node['dp_unit']}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
