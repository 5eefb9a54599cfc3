"""``edgekit fleet privacy``: real devices' reports, collected into a fleet database, shown
as an auditor reads them, and a report whose ε ledger went back flagged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.fleet import Collector, init_fleet, load_collector_key
from edgekit.runtime import Model, Telemetry
from edgekit.runtime.telemetry.outbox import Outbox

pytest.importorskip("opendp")


@pytest.fixture(scope="module")
def bundle(converted: Any) -> Path:
    return converted("int8").output


def device_reports(bundle: Path, x: Any, tmp_path: Path, fleet: Path, name: str, **settings: Any) -> list[bytes]:
    outbox = tmp_path / f"{name}.sqlite"
    telemetry = Telemetry(
        "mqtt://127.0.0.1:9", "f7", device_id=name, fleet_dir=fleet, outbox=outbox, window_s=3600,
        close_timeout_s=0.1, ledger=tmp_path / f"{name}.ledger", **settings,
    )  # fmt: skip
    with Model.load(bundle, telemetry=telemetry) as model:
        for _ in range(2):
            model.predict(x[:16])
            telemetry.flush()
    return [entry.payload for entry in Outbox(outbox, 1 << 24, 86400).pending(0, 100)]


def collect(db: str, fleet: Path, payloads: list[bytes]) -> None:
    collector = Collector("f7", None, load_collector_key("f7", fleet), db)
    for payload in payloads:
        node = json.loads(payload)["node"]
        assert collector.handle(f"edgekit/f7/{node}/report", payload) == "report"
    collector.flush()


def privacy(db: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["fleet", "privacy", "--db", db, "--json"])
    return result.exit_code, json.loads(result.output)


def test_an_auditor_sees_each_devices_privacy_and_a_ledger_that_went_back(
    bundle: Path, digits_eval: Any, tmp_path: Path, home: Path
) -> None:
    x, _ = digits_eval
    fleet = init_fleet("f7", tmp_path / "fleet")
    db = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    private = device_reports(bundle, x, tmp_path, fleet, "pump-1", dp_epsilon=0.5, dp_clip=8, k_anonymity=3)
    plain = device_reports(bundle, x, tmp_path, fleet, "pump-2")
    collect(db, fleet, private + plain)
    code, view = privacy(db)
    assert code == 0 and view["summary"]["nodes"] == 2 and view["summary"]["with_dp"] == 1
    dp_node = next(n for n in view["nodes"] if n["dp_epsilon"] is not None)
    assert dp_node["reports"] == 3 and dp_node["dp_spent"] == pytest.approx(1.5)  # 2 windows and the close
    assert (dp_node["dp_unit"], dp_node["dp_clip"], dp_node["k"], dp_node["capture"]) == ("window", 8, 3, "none")
    assert dp_node["dp_budget"] == pytest.approx(50.0) and dp_node["dp_sensitivity"] >= 16
    assert not dp_node["findings"]

    forged = json.loads(private[-1])  # the same device, one more report, its ledger gone back
    forged["seq"] += 1
    forged["privacy"]["dp_spent"] = 0.5
    collect(db, fleet, [json.dumps(forged).encode()])
    code, view = privacy(db)
    assert code == 1 and view["summary"]["findings"] == 1
    assert "ε spent went from 1.5 to 0.5" in next(n for n in view["nodes"] if n["findings"])["findings"][0]
    table = CliRunner().invoke(main, ["fleet", "privacy", "--db", db])
    assert "window ≤8" in table.output and "finding:" in table.output
