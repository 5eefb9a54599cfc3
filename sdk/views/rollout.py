"""How rollouts look: ``fleet deploy``'s progress lines and outcome, and the
``fleet rollout status`` table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from edgekit.rollout.deploy import Outcome
from edgekit.rollout.fleet import FleetState, group_label


def deploy_progress(out: Console, as_json: bool) -> Callable[[str, dict[str, Any]], None]:
    """One line per step on stderr (stdout stays for --json)."""
    last: dict[str, str] = {}

    def show(step: str, event: dict[str, Any]) -> None:
        if step == "started":
            out.print(f"rollout {event['rollout']}: {event['model']} v{event['version']} to "
                      f"{event['canaries']} canaries of {event['devices']} devices "
                      f"(the others stay on v{event['previous']})")
        elif step == "watching":
            line = _watch_line(event)
            if line != last.get("line"):
                last["line"] = line
                out.print(line)
        elif step == "decided":
            out.print(f"[bold]{event['decision']}[/]: {event['reason']}")

    return show


def _watch_line(event: dict[str, Any]) -> str:
    sides = [
        f"{side} {n['calls']} calls, errors {100 * n['error_rate']:.2f}%, "
        f"p95 {n['p95_ms']:g} ms, drift {n['drift']:.3f}"
        for side, n in (("canaries", event["canary"]), ("control", event["control"]))
    ]
    return f"  {event['left_s']:>6.0f} s left: " + " | ".join(sides)


def print_outcome(out: Console, outcome: Outcome) -> None:
    running = ", ".join(f"v{version} on {count}" for version, count in outcome.running.items()) or "none"
    settled = "every device followed" if outcome.settled else "some devices have not followed yet"
    out.print(f"rollout {outcome.rollout} {outcome.decision}; {settled}: {running}")


def status_rows(state: FleetState, group: str | None) -> list[dict[str, Any]]:
    """Per group: desired version, devices running each version, healthy ones, phase."""
    rows = []
    for name, members in sorted(state.groups().items(), key=lambda item: group_label(item[0])):
        if group is not None and name != group:
            continue
        document = state.documents.get(name) or state.documents.get(None)
        model = document.model.name if document else None
        online = [s for s in members if s.phase != "offline"]
        running = Counter(s.models.get(model) for s in online if model and s.models.get(model))
        healthy = [s for s in online if s.phase == "active" and (not model or s.running == s.desired)]
        rows.append({
            "group": name, "devices": len(members), "online": len(online),
            "rollout": document.rollout if document else None, "phase": document.phase if document else None,
            "model": model, "version": document.model.version if document else None,
            "previous": document.previous if document else None,
            "running": {str(v): n for v, n in sorted(running.items())}, "healthy": len(healthy),
            "failed": [{"node": s.node, "reason": s.reason} for s in online if s.phase == "failed"],
            "refused": sum(sum(s.refused.values()) for s in members),
        })
    return rows


def print_status(out: Console, fleet: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"fleet {fleet}: rollouts", title_justify="left")
    for column in ("group", "rollout", "phase", "desired", "running", "healthy", "online", "failed"):
        table.add_column(column)
    for row in rows:
        desired = f"{row['model']} v{row['version']}" if row["model"] else "-"
        if row["phase"] == "canary":
            desired += f" (canaries; others v{row['previous']})"
        running = ", ".join(f"v{v}: {n}" for v, n in row["running"].items()) or "-"
        table.add_row(group_label(row["group"]), row["rollout"] or "-", row["phase"] or "-", desired, running,
                      f"{row['healthy']}/{row['online']}", f"{row['online']}/{row['devices']}",
                      str(len(row["failed"])), style="red" if row["failed"] else "")
    out.print(table)
    for row in rows:
        for failed in row["failed"]:
            out.print(f"[red]{failed['node'][:12]} failed[/]: {failed['reason']}")
