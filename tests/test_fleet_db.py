"""The fleet database on both engines: a real SQLite file and a real PostgreSQL server (started
here, as the tests start Mosquitto). Idempotent writes, migrations and the refusal of a newer
schema, exports and labels, one-line errors, and collectors that scale out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from fleet_sim import Publisher, SimDevice, digits

from edgekit.cli import main
from edgekit.fleet import Collector, init_fleet, load_collector_key, open_engine
from edgekit.fleet.database import SCHEMA_VERSION, tables
from edgekit.fleet.queries import set_label
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto
from edgekit.testing.postgres import LocalPostgres

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto is not installed (.ci/run installs it)"
)


def _messages(key: Any) -> tuple[list[tuple[str, bytes]], np.ndarray]:
    x, _ = digits()
    devices = [SimDevice("line1"), SimDevice("line2", drift=0.4)]
    messages = []
    for window in range(3):
        for device in devices:
            messages.append(
                (f"edgekit/f7/{device.node}/report", device.report(time.time() - 60 * (3 - window)))
            )
            rows = x[window * 4 : window * 4 + 4]
            sample = device.sample(rows, np.arange(4), np.full(4, 0.4), key)
            messages.append((f"edgekit/f7/{device.node}/sample", sample))
    return messages, x


def test_a_redelivered_message_is_one_row_and_labels_reach_the_export(db_url: str, tmp_path: Path) -> None:
    fleet = init_fleet("f7", tmp_path / "fleet")
    key = load_collector_key("f7", fleet)
    messages, x = _messages(key.public_key())
    first = Collector("f7", None, key, db_url)
    for message in messages[:8]:
        assert first.handle(*message) in ("report", "sample")
    first.flush()
    second = Collector("f7", tmp_path / "out", key, db_url)  # a second collector, given everything again
    for message in messages:
        second.handle(*message)
    status = f"edgekit/f7/{SimDevice('line1').node}/status"
    for state in (b"online", b"online", b"offline"):  # a retained status comes again at each reconnect
        assert second.handle(status, state) == "status"
    second.flush()
    second.handle(status, b"offline")
    second.flush()
    assert (first.reports, second.reports) == (4, 2) and second.skipped["duplicate"] == 8
    state = second.state()
    assert state["reports"] == 6 and state["samples"] == 24 and state["gaps"] == {}
    assert state["inferences"] == 6 * 600 and state["skipped"]["duplicate"] == 8
    engine = open_engine(db_url)
    node = SimDevice("line2").node
    assert set_label(engine, node, 1, 2, 3, 7) and not set_label(engine, node, 1, 999, 0, 7)
    _check_dashboard_queries(engine, node)
    summary = second.finish()
    assert summary["drift"]["drifting_nodes"] == [node]
    with np.load(tmp_path / "out" / "samples.npz") as exported:
        assert exported["x"].shape == (24, 8, 8, 1) and "y" not in exported  # not every sample has a label
        assert {row.tobytes() for row in exported["x"]} == {row.tobytes() for row in x[:12]}
    result = CliRunner().invoke(main, ["fleet", "export", "--db", db_url, "--out",  # f7: the only fleet
                                       str(tmp_path / "labelled"), "--fleet-dir", str(fleet), "--labelled", "--json"])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "labelled" / "samples.npz") as labelled:
        assert labelled["y"].tolist() == [7] and labelled["x"][0].tobytes() == x[3].tobytes()
    assert json.loads(result.output)["samples"] == 24
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a folder under a file cannot be made, even by root (a read-only mount)
    result = CliRunner().invoke(main, ["fleet", "export", "--db", db_url, "--fleet", "f7", "--out",
                                       str(blocked / "out"), "--fleet-dir", str(fleet)])  # fmt: skip
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"cannot write the export to {blocked / 'out'}" in result.output
    engine.dispose()


def _check_dashboard_queries(engine: Any, drifting: str) -> None:
    """What the dashboard's pages read, on this engine."""
    from edgekit.fleet.dashboard import data
    from edgekit.fleet.database import record_event

    rows = data.fleet_rows(engine, "f7")
    assert [r["level"] for r in rows if r["node"] == drifting] == ["drift"] and len(rows) == 2
    assert {r["status"] for r in rows if r["node"] != drifting} == {"offline"}
    with engine.connect() as connection:
        history = connection.execute(tables()["statuses"].select().order_by(tables()["statuses"].c.at)).all()
    assert [row.status for row in history] == ["online", "offline"]  # changes only
    series = data.device_series(engine, drifting)
    assert len(series) == 3 and series[0]["end"] < series[-1]["end"] and data.class_shares(series) is not None
    assert data.drift_since(series) == series[0]["end"]
    assert data.sample_counts(engine, "f7") == {"unlabelled": 23, "labelled": 1, "all": 24}
    queue = data.sample_queue(engine, "f7", "labelled")
    assert [(q["node"], q["seq"], q["idx"], q["label"]) for q in queue] == [(drifting, 2, 3, 7)]
    assert data.sealed_message(engine, drifting, 1, 2) is not None
    record_event(str(engine.url.render_as_string(hide_password=False)), "f7",
                 {"time": 1.0, "event": "started", "rollout": "r1", "model": "digits", "version": 2})
    assert [e["body"]["version"] for e in data.rollout_events(engine, "f7")] == [2]


def test_a_newer_schema_is_refused_naming_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite"
    engine = open_engine(str(path))
    with engine.begin() as connection:
        connection.execute(
            tables()["schema_version"].insert().values(version=SCHEMA_VERSION + 4, applied=0.0)
        )
    engine.dispose()
    init_fleet("f7", tmp_path / "fleet")
    result = CliRunner().invoke(main, ["fleet", "export", "--db", str(path), "--fleet", "f7", "--out",
                                       str(tmp_path / "o"), "--fleet-dir", str(tmp_path / "fleet")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: this fleet database has schema version {SCHEMA_VERSION + 4}, written by a newer edgekit; "
        f"this edgekit reads up to version {SCHEMA_VERSION}: upgrade edgekit"
    ]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "postgresql://ops@127.0.0.1:1/fleet",
            "cannot open the fleet database postgresql://ops@127.0.0.1:1/fleet:",
        ),
        (
            "postgresql://ops:secret@127.0.0.1:1/fleet",
            "cannot open the fleet database postgresql://ops@127.0.0.1:1/",
        ),
        ("mysql://ops@db/fleet", "--db mysql://ops@db/fleet: give a file path (SQLite) or postgresql://"),
        ("mysql://ops:secret@db/fleet", "--db mysql://ops@db/fleet: give a file path"),
        ("http://ops:secret@db/fleet", "--db http://ops@db/fleet: give a file path"),
        ("postgresql://ops:secret@127.0.0.1:abc/fleet", "--db postgresql://ops@127.0.0.1:abc/fleet: not a database URL"),
        ("GARBAGE", "is not a fleet database (file is not a database)"),
        ("TRUNCATED", "is not a fleet database"),
    ],
)
def test_a_wrong_or_unreachable_database_is_one_line(url: str, says: str, tmp_path: Path) -> None:
    init_fleet("f7", tmp_path / "fleet")
    if url == "GARBAGE":
        url = str(tmp_path / "garbage.sqlite")
        Path(url).write_bytes(b"not a database at all " * 200)
    elif url == "TRUNCATED":
        url = str(tmp_path / "truncated.sqlite")
        open_engine(url).dispose()
        Path(url).write_bytes(Path(url).read_bytes()[:3000])
    fleet = ["--fleet", "f7", "--fleet-dir", str(tmp_path / "fleet")]
    for command in (["fleet", "export", "--db", url, *fleet, "--out", str(tmp_path / "o")],
                    ["fleet", "collect", "--db", url, *fleet, "--broker", "mqtt://127.0.0.1:1"],
                    ["fleet", "dashboard", "--db", url, *fleet]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert says in result.output and "secret" not in result.output


def test_readers_refuse_a_missing_database(tmp_path: Path) -> None:
    init_fleet("f7", tmp_path / "fleet")
    fleet = ["--fleet", "f7", "--fleet-dir", str(tmp_path / "fleet")]
    missing = tmp_path / "nothing.sqlite"
    for command in (["fleet", "export", "--db", str(missing), *fleet, "--out", str(tmp_path / "o")],
                    ["fleet", "dashboard", "--db", str(missing), *fleet]):  # fmt: skip
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and "no fleet database at" in result.output, result.output
        assert not missing.exists()


def test_migrations_apply_once_and_the_schema_is_recorded(db_url: str) -> None:
    import sqlalchemy as sa

    for _ in range(2):
        engine = open_engine(db_url)
        with engine.connect() as connection:
            versions = connection.execute(sa.select(tables()["schema_version"].c.version)).scalars().all()
            names = set(sa.inspect(connection).get_table_names())
        engine.dispose()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert {"reports", "samples", "sample_rows", "statuses", "skipped", "counters", "rollout_events"} <= names


@pytest.fixture
def reaper() -> Iterator[list[list[subprocess.Popen[str]]]]:
    groups: list[list[subprocess.Popen[str]]] = []
    yield groups
    for process in (process for group in groups for process in group):
        if process.poll() is None:
            process.kill()
            process.wait()


def _collector(broker: LocalBroker, db: str, home: Path, session: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "edgekit", "fleet", "collect", "--broker", broker.url, "--fleet", "f7",
               "--db", db, "--group", "ingest", "--session", session, "--json"]  # fmt: skip
    return subprocess.Popen(command, env={**os.environ, "EDGEKIT_HOME": str(home)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _count(engine: Any) -> tuple[int, int]:
    import sqlalchemy as sa

    with engine.connect() as connection:
        return connection.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT node) FROM reports")).one()  # type: ignore[no-any-return]


@needs_mosquitto
@pytest.mark.slow
def test_three_collectors_share_one_postgres_and_a_kill_loses_and_repeats_nothing(
    postgres: LocalPostgres, tmp_path: Path, reaper: list[list[subprocess.Popen[str]]]
) -> None:
    home = tmp_path / "home"
    init_fleet("f7", home / "fleets" / "f7")
    devices = [SimDevice(f"gw{i}") for i in range(30)]
    windows = 60
    with LocalBroker(tmp_path / "broker") as broker:
        collectors = [_collector(broker, postgres.url, home, f"c{i}") for i in range(3)]
        reaper.append(collectors)  # killed at teardown, should an assertion fail first
        engine = open_engine(postgres.url)
        time.sleep(3)  # subscribed (and the schema migrated once, under the lock)
        publisher = Publisher(broker.port, "f7")
        start = time.time() - windows * 60
        for window in range(windows):
            for device in devices:
                publisher.send(device, "report", device.report(start + window * 60))
            if window == windows // 3:
                collectors[1].send_signal(signal.SIGSTOP)  # it takes messages, and never acks them
            if window == windows // 2:
                publisher.wait()
                collectors[1].send_signal(signal.SIGKILL)
                collectors[1].wait()
                time.sleep(1.5)  # the others commit what they took
                held = (window + 1) * len(devices) - _count(engine)[0]
                collectors[1] = _collector(broker, postgres.url, home, "c1")  # the same session comes back
            time.sleep(0.01)
        publisher.close()
        expected = windows * len(devices)
        deadline = time.monotonic() + 60
        while _count(engine)[0] < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.5)  # anything redelivered late would show now
        for collector in collectors:
            collector.send_signal(signal.SIGTERM)
        summaries = [json.loads(c.communicate(timeout=30)[0]) for c in collectors]
    import sqlalchemy as sa

    with engine.connect() as connection:
        per_node = connection.execute(sa.text("SELECT node, COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) "
                                              "FROM reports GROUP BY node")).all()
    engine.dispose()
    assert _count(engine) == (expected, len(devices))
    assert all(
        rows == distinct == windows and (low, high) == (1, windows)
        for _, rows, distinct, low, high in per_node
    )
    assert held > 0  # messages the killed collector had taken were missing until it came back
    assert all(summary["collected"]["reports"] > 0 for summary in summaries)  # the group split the load
    final = summaries[-1]
    assert final["reports"] == expected and final["gaps"] == {} and final["skipped"]["malformed"] == 0


@needs_mosquitto
@pytest.mark.slow
def test_a_database_outage_holds_the_acks_and_loses_nothing(postgres: LocalPostgres, tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_fleet("f7", home / "fleets" / "f7")
    url = postgres.create_database("outage")
    devices = [SimDevice(f"gw{i}") for i in range(10)]
    with LocalBroker(tmp_path / "broker") as broker:
        command = [sys.executable, "-m", "edgekit", "fleet", "collect", "--broker", broker.url, "--fleet", "f7",
                   "--db", url, "--group", "none", "--json", "--idle", "6"]  # fmt: skip
        collector = subprocess.Popen(command, env={**os.environ, "EDGEKIT_HOME": str(home)}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2.5)
            publisher = Publisher(broker.port, "f7")
            start = time.time() - 3600
            for window in range(20):
                if window == 5:
                    publisher.wait()
                    time.sleep(1)
                    postgres.pause()  # the database goes away mid-run
                if window == 12:
                    publisher.wait()
                    time.sleep(2)  # the collector has held messages it cannot commit
                    postgres.resume()
                for device in devices:
                    publisher.send(device, "report", device.report(start + window * 60))
            publisher.close()
            out, err = collector.communicate(timeout=60)
        finally:
            if collector.poll() is None:
                collector.kill()
    assert collector.returncode == 0, err
    summary = json.loads(out)
    assert summary["reports"] == 200 and summary["gaps"] == {} and summary["skipped"]["duplicate"] == 0
    warnings = [line for line in err.splitlines() if "fleet database" in line]
    assert (
        len(warnings) == 2 and "is unavailable" in warnings[0] and "nothing was acknowledged" in warnings[0]
    )
    assert "is back after" in warnings[1] and "Traceback" not in err


def test_a_label_is_one_of_the_models_classes_by_name_or_index() -> None:
    from edgekit.fleet.dashboard.app import label_value
    from edgekit.fleet.dashboard.pages import sample_card

    classes = ("idle", "running", "bearing fault", "imbalance")
    assert label_value("bearing fault", classes) == (2, None)
    assert label_value("3", classes) == (3, None)
    assert label_value("", classes) == (None, None)  # clears it
    assert label_value("9", classes) == (None, "this model has 4 classes: a label is one of idle, running, "
                                               "bearing fault, imbalance, or its index")  # fmt: skip
    assert label_value("9", None) == (9, None)  # no bundle given: any index
    row = {"node": "ab" * 16, "epoch": 1, "seq": 2, "idx": 0, "label": 2, "pred": 1, "confidence": 0.4}
    card = sample_card(row, "", classes)
    assert "predicted running at" in card and '<option value="bearing fault" selected>' in card
    assert 'type="number"' in sample_card(row, "")
