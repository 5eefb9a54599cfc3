"""The ε ledger by file surgery: deleting, truncating, editing or rolling back the ledger or
the outbox never resets the privacy budget."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgekit.core.errors import EdgekitError
from edgekit.core.telemetry import Report
from edgekit.fleet import init_fleet
from edgekit.runtime import Model, Telemetry
from edgekit.runtime.store import Store
from edgekit.runtime.telemetry.outbox import Outbox

pytest.importorskip("opendp")
DEAD = "mqtt://127.0.0.1:9"


@pytest.fixture(scope="module")
def bundle(converted: Any) -> Path:
    return converted("int8").output


@pytest.fixture
def device(tmp_path: Path, home: Path) -> dict[str, Any]:
    return {
        "device_id": "pump-7", "fleet_dir": init_fleet("f7", tmp_path / "fleet"),
        "outbox": tmp_path / "outbox.sqlite", "window_s": 3600, "close_timeout_s": 0.1,
        "dp_epsilon": 1.0, "dp_budget": 10.0, "k_anonymity": 1,
    }  # fmt: skip


def ledger_of(home: Path) -> Path:
    return home / "privacy" / "f7.ledger"


def releases(
    bundle: Path, x: Any, settings: dict[str, Any], windows: int
) -> tuple[list[int | None], dict[str, Any]]:
    """Start the device, report ``windows`` windows, stop; (their seqs, the final status)."""
    telemetry = Telemetry(DEAD, "f7", **settings)
    model = Model.load(bundle, telemetry=telemetry)
    seqs = []
    for _ in range(windows):
        model.predict(x[:8])
        seqs.append(telemetry.flush())
    status = telemetry.status
    model.close()
    return seqs, status


def spent_in_reports(outbox: Path) -> list[float | None]:
    entries = Outbox(outbox, 1 << 24, 86400).pending(0, 1000)
    return [Report.model_validate_json(e.payload).privacy.dp_spent for e in entries if e.kind == "report"]


def test_the_ledger_counts_across_restarts(
    bundle: Path, digits_eval: Any, device: dict[str, Any], home: Path
) -> None:
    x, _ = digits_eval
    releases(bundle, x, device, 2)
    seqs, status = releases(bundle, x, device, 1)
    assert seqs[0] is not None and status["privacy_stopped"] is None
    # two windows, the first run's closing (idle) window, one more: 4; its closing one: 5
    assert status["epsilon_spent"] == pytest.approx(4.0)
    assert spent_in_reports(device["outbox"]) == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])


@pytest.mark.parametrize(
    ("surgery", "says"),
    [
        (lambda path, old: path.unlink(), "is missing, and the outbox shows 3 releases"),
        (lambda path, old: path.write_bytes(path.read_bytes()[:40]), "is cut short"),
        (lambda path, old: path.write_bytes(b""), "is cut short"),
        (lambda path, old: path.write_bytes(old), "shows 1 releases and the outbox 3: an older copy"),
        (
            lambda path, old: path.write_text(path.read_text().replace('"spent": 3.0', '"spent": 0.0')),
            "does not verify",
        ),
    ],
    ids=["deleted", "truncated", "emptied", "rolled-back", "edited"],
)
def test_a_damaged_ledger_stops_releases_and_says_why(
    bundle: Path, digits_eval: Any, device: dict[str, Any], home: Path, surgery: Any, says: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    x, _ = digits_eval
    releases(bundle, x, {**device, "close_timeout_s": 0.1}, 0)  # the closing window: release 1
    old = ledger_of(home).read_bytes()
    releases(bundle, x, device, 1)  # one window and the closing one: 3
    surgery(ledger_of(home), old)
    before = len(spent_in_reports(device["outbox"]))
    with caplog.at_level(logging.WARNING, logger="edgekit.telemetry"):
        seqs, status = releases(bundle, x, device, 2)
    assert seqs == [None, None]
    assert says in status["privacy_stopped"] and "put back the newest" in status["privacy_stopped"]
    assert len(spent_in_reports(device["outbox"])) == before
    warnings = [r.getMessage() for r in caplog.records if says in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]


@pytest.mark.parametrize("surgery", ["deleted", "emptied", "rolled-back"])
def test_a_lost_or_older_outbox_does_not_reset_the_budget(
    bundle: Path, digits_eval: Any, device: dict[str, Any], home: Path, tmp_path: Path, surgery: str
) -> None:
    x, _ = digits_eval
    outbox = device["outbox"]
    releases(bundle, x, device, 1)
    shutil.copy(outbox, tmp_path / "old.sqlite")
    releases(bundle, x, device, 1)  # ε 4 spent
    for suffix in ("", "-wal", "-shm"):
        Path(f"{outbox}{suffix}").unlink(missing_ok=True)
    if surgery == "emptied":
        outbox.write_bytes(b"")
    elif surgery == "rolled-back":
        shutil.copy(tmp_path / "old.sqlite", outbox)
    seqs, status = releases(bundle, x, device, 1)
    assert seqs[0] is not None and status["privacy_stopped"] is None
    assert status["epsilon_spent"] == pytest.approx(5.0)
    assert spent_in_reports(outbox)[-2:] == pytest.approx([5.0, 6.0])


def test_the_budget_holds_when_the_outbox_is_deleted(
    bundle: Path, digits_eval: Any, device: dict[str, Any], home: Path
) -> None:
    x, _ = digits_eval
    settings = {**device, "dp_budget": 3.0}
    releases(bundle, x, settings, 2)  # 2 windows and the closing one: the budget is spent
    device["outbox"].unlink()
    seqs, status = releases(bundle, x, settings, 2)
    assert seqs == [None, None] and status["epsilon_spent"] == pytest.approx(3.0)


def test_rotating_the_device_key_keeps_the_ledger(
    bundle: Path, digits_eval: Any, device: dict[str, Any], home: Path
) -> None:
    x, _ = digits_eval
    releases(bundle, x, device, 1)
    Store().rotate_device_key()
    seqs, status = releases(bundle, x, device, 1)
    assert seqs[0] is not None and status["privacy_stopped"] is None
    assert status["epsilon_spent"] == pytest.approx(3.0)


def test_a_budget_below_one_report_is_one_line(bundle: Path, device: dict[str, Any], home: Path) -> None:
    telemetry = Telemetry(DEAD, "f7", **{**device, "dp_epsilon": 1.0, "dp_budget": 0.5})
    with pytest.raises(EdgekitError, match=r"dp_budget 0.5 is below one report's ε 1, .*raise dp_budget"):
        Model.load(bundle, telemetry=telemetry)


def test_no_device_key_is_one_line(bundle: Path, device: dict[str, Any], home: Path) -> None:
    (home / "device.key").unlink()
    telemetry = Telemetry(DEAD, "f7", **device)
    with pytest.raises(EdgekitError, match="ε ledger sealed with the device key.*edgekit keys init --device"):
        Model.load(bundle, telemetry=telemetry)
