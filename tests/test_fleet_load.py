"""The fleet side run the way its help text invites: several collectors on one host with
default options (each its own MQTT session, the same one again after a restart), a session
taken over (one line naming --session), the dashboard with a slow query, and migrations
frozen at what each version created."""

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

import paho.mqtt.client as mqtt
import pytest
from fleet_sim import Publisher, SimDevice
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.fleet import init_fleet, open_engine
from edgekit.fleet.sessions import SessionSlot
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto is not installed (.ci/run installs it)"
)


def test_collectors_on_one_host_take_the_lowest_free_slot_and_get_theirs_back(tmp_path: Path) -> None:
    slots = [SessionSlot.claim("f7", "ingest", tmp_path) for _ in range(3)]
    ids = [slot.session_id for slot in slots]
    assert len(set(ids)) == 3 and [i.rsplit("-", 1)[1] for i in ids] == ["0", "1", "2"]
    slots[1].release()  # collector 1 restarts while 0 and 2 run: it is given its own session back
    again = SessionSlot.claim("f7", "ingest", tmp_path)
    assert again.session_id == ids[1]
    assert SessionSlot.claim("f7", "other", tmp_path).session_id.endswith("-other-" + ids[0].split("-")[-2] + "-0")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from edgekit.fleet.sessions import SessionSlot; "
         "slot = SessionSlot.claim('f7', 'kill', Path(sys.argv[1])); print(slot.session_id, flush=True); "
         "time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    held = holder.stdout.readline().strip()
    other = SessionSlot.claim("f7", "kill", tmp_path)
    assert other.session_id != held
    other.release()
    holder.kill()  # kill -9: the kernel releases its lock, and a new collector takes the slot
    holder.wait()
    assert SessionSlot.claim("f7", "kill", tmp_path).session_id == held


def _collect(broker: LocalBroker, home: Path, db: str, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "edgekit", "fleet", "collect", "--broker", broker.url, "--fleet", "f7",
               "--db", db, "--json", *extra]  # fmt: skip
    return subprocess.Popen(command, env={**os.environ, "EDGEKIT_HOME": str(home)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@needs_mosquitto
def test_a_session_taken_over_stops_the_collector_in_one_line_naming_session(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    home = tmp_path / "home"
    init_fleet("f7", home / "fleets" / "f7")
    with LocalBroker(tmp_path / "broker") as broker:
        first = _collect(broker, home, str(tmp_path / "fleet.sqlite"), "--session", "line-7")
        processes.append(first)
        time.sleep(3)  # connected and subscribed
        thief = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="line-7", protocol=mqtt.MQTTv5)
        thief.connect("127.0.0.1", broker.port)
        thief.loop_start()
        try:
            _, err = first.communicate(timeout=60)
        finally:
            thief.disconnect()
            thief.loop_stop()
    lines = [line for line in err.splitlines() if line.strip()]
    assert first.returncode == 1 and len(lines) == 1, err
    assert "MQTT session" in lines[0] and "own --session" in lines[0] and "line-7" in lines[0], lines


def test_a_broker_that_says_session_taken_over_stops_the_inbox_at_once() -> None:
    """Brokers that send MQTT 5's reason 142 (newer than this machine's Mosquitto 2.0.11) are
    believed at the first DISCONNECT; the inbox stops reconnecting and says why."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from edgekit.fleet.inbox import Inbox, SessionTakenOver
    from edgekit.runtime.telemetry.broker import Broker

    inbox = Inbox(Broker.parse("mqtt://127.0.0.1:1"), ["edgekit/f7/+/report"], "line-7")
    inbox._on_disconnect(inbox.client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=142), None)  # type: ignore[arg-type]
    with pytest.raises(SessionTakenOver, match="as line-7 and took this collector's MQTT session"):
        inbox.get(0.01)


@needs_mosquitto
def test_reports_nobody_is_subscribed_for_wait_in_the_outbox_until_a_collector_is(
    tmp_path: Path, converted: Any, digits_eval: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto 2.0 keeps a collector's session over a restart but not its shared subscription:
    what devices publish before the collector subscribes again is answered 'No matching
    subscribers' and thrown away. The device keeps those reports on disk and sends them again."""
    from edgekit.core.telemetry import Report, read_message
    from edgekit.fleet import Collector, Inbox, load_collector_key, subscriptions
    from edgekit.runtime import Model, Telemetry
    from edgekit.runtime.telemetry.broker import Broker

    x, _ = digits_eval
    fleet_dir = init_fleet("f7", tmp_path / "fleet")
    with LocalBroker(tmp_path / "broker") as broker:
        shared = subscriptions("f7", ("report",), "g")
        Inbox(Broker.parse(broker.url), shared, session="collector-1").start().stop()
        broker.restart()
        telemetry = Telemetry(broker.url, "f7", device_id="d1", fleet_dir=fleet_dir, outbox=tmp_path / "outbox",
                              window_s=3600, backoff_max_s=0.3)  # fmt: skip
        model = Model.load(converted("int8").output, telemetry=telemetry)
        seqs = []
        for i in range(8):
            model.predict(x[i : i + 1])
            seqs.append(telemetry.flush())
        time.sleep(2)
        assert telemetry.status["queued"] == 8, telemetry.status
        assert "no collector is subscribed" in caplog.text
        collector = Collector("f7", tmp_path / "collected", load_collector_key("f7", fleet_dir))
        inbox = Inbox(Broker.parse(broker.url), shared, session="collector-1").start()
        received = []
        deadline = time.monotonic() + 30
        while len(received) < 8 and time.monotonic() < deadline:
            message = inbox.get(0.1)
            if message is not None and collector.handle(message[0], message[1]) == "report":
                received.append(read_message(Report, json.loads(message[1]))[0].seq)
                inbox.ack([(message[2], message[3])])
        inbox.stop()
        model.close()
    assert sorted(received) == seqs and telemetry.status["queued"] == 0


def _count(db: str) -> tuple[int, int]:
    import sqlalchemy as sa

    engine = open_engine(db)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT seq || node) FROM reports")).one()  # type: ignore[no-any-return]
    finally:
        engine.dispose()


@needs_mosquitto
@pytest.mark.slow
def test_collectors_on_one_host_with_default_options_each_take_every_report_once(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Three collectors, one host, one group, no --session (as --help shows them): each its
    own session, no takeover, every report committed once and delivered once."""
    home, db = tmp_path / "home", str(tmp_path / "fleet.sqlite")
    init_fleet("f7", home / "fleets" / "f7")
    open_engine(db).dispose()  # migrated before three processes open it
    devices = [SimDevice(f"gw{i}") for i in range(3)]
    windows = 40
    with LocalBroker(tmp_path / "broker") as broker:
        collectors = [_collect(broker, home, db, "--group", "ingest") for _ in range(3)]
        processes.extend(collectors)
        time.sleep(4)
        publisher = Publisher(broker.port, "f7")
        start = time.time() - windows
        for window in range(windows):
            for device in devices:
                publisher.send(device, "report", device.report(start + window, window_s=1.0))
            time.sleep(0.05)
        publisher.close()
        deadline = time.monotonic() + 30
        while _count(db)[0] < windows * len(devices) and time.monotonic() < deadline:
            time.sleep(0.3)
        time.sleep(1.5)  # a redelivery after a takeover would arrive now
        for collector in collectors:
            collector.send_signal(signal.SIGTERM)
        results = [c.communicate(timeout=30) for c in collectors]
    assert all(c.returncode == 0 for c in collectors), [err for _, err in results]
    summaries = [json.loads(out) for out, _ in results]
    assert len({s["session"] for s in summaries}) == 3
    assert _count(db) == (windows * len(devices), windows * len(devices))
    assert sum(s["collected"]["reports"] for s in summaries) == windows * len(devices)
    assert sum(s["collected"]["duplicates"] for s in summaries) == 0, summaries
    assert all("session" not in err for _, err in results)


def test_a_slow_query_holds_only_its_own_dashboard_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet page's query stands in for a slow one by waiting until the device and drift
    pages have answered beside it: handlers on the event loop would hold those (the test
    would time out, not pass)."""
    import asyncio
    import threading

    import httpx

    from edgekit.fleet import Collector, load_collector_key
    from edgekit.fleet.dashboard import data
    from edgekit.fleet.dashboard.app import Dashboard, build_app

    key = load_collector_key("f7", init_fleet("f7", tmp_path / "fleet"))
    db = str(tmp_path / "fleet.sqlite")
    collector = Collector("f7", None, key, db)
    device = SimDevice("line1")
    for window in range(3):
        collector.handle(f"edgekit/f7/{device.node}/report", device.report(time.time() - 60 * (3 - window)))
    collector.flush()
    release, real, calls = threading.Event(), data.fleet_rows, []

    def slow_fleet_rows(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:  # the fleet page's; the drift page reads it too
            assert release.wait(20), "the other pages never answered"
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(data, "fleet_rows", slow_fleet_rows)
    app = build_app(Dashboard(collector.engine, "f7", key))

    async def run() -> tuple[int, list[int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            slow = asyncio.create_task(client.get("/"))
            try:
                others = [await asyncio.wait_for(client.get(path), 20)
                          for path in (f"/device/{device.node}", "/drift", "/rollouts")]  # fmt: skip
            finally:
                release.set()
            return (await slow).status_code, [answer.status_code for answer in others]

    assert asyncio.run(run()) == (200, [200, 200, 200])
    collector.engine.dispose()


def _schema(engine: object) -> dict[str, object]:
    """Tables, columns (name, type, nullable), primary keys and indexes, as the database has them."""
    import sqlalchemy as sa

    inspector = sa.inspect(engine)
    return {
        table: {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            "pk": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)),
        }
        for table in sorted(inspector.get_table_names())
    }


FROZEN = {1: "4d7b1fa5202c", 2: "111bfc91b70b"}
"""A digest of the SQLite schema each version creates: a migration edited after it shipped
changes it (append a migration instead)."""


def _digest(schema: dict[str, object]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:12]


@pytest.mark.parametrize("engine_name", ["sqlite", "postgresql"])
def test_a_database_at_every_older_version_migrates_to_what_a_fresh_one_is(
    engine_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import sqlalchemy as sa

    from edgekit.fleet.database import SCHEMA_VERSION, engine_url, migrate

    def url(name: str) -> str:
        if engine_name == "sqlite":
            return str(tmp_path / f"{name}.sqlite")
        return request.getfixturevalue("postgres").create_database(f"{name}{time.monotonic_ns()}")  # type: ignore[no-any-return]

    fresh = open_engine(url("fresh"))
    expected = _schema(fresh)
    fresh.dispose()
    for version in range(SCHEMA_VERSION):
        old_url = url(f"v{version}")
        old = sa.create_engine(engine_url(old_url))
        assert migrate(old, target=version) == version
        if engine_name == "sqlite" and version:
            assert _digest(_schema(old)) == FROZEN[version], f"migration {version} creates another schema now"
        old.dispose()
        migrated = open_engine(old_url)
        assert _schema(migrated) == expected, f"a database at version {version}, migrated"
        with migrated.connect() as connection:
            found = connection.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars()
            assert list(found) == list(range(1, SCHEMA_VERSION + 1))
        migrated.dispose()
    if engine_name == "sqlite":
        assert _digest(expected) == FROZEN[SCHEMA_VERSION]


def test_rollout_events_reuse_one_engine_and_a_database_outage_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from edgekit.fleet import database
    from edgekit.rollout.history import History, read_history

    opened: list[str] = []
    real = database.open_engine
    monkeypatch.setattr(database, "open_engine", lambda url, **kw: opened.append(url) or real(url, **kw))
    db = str(tmp_path / "fleet.sqlite")
    history = History(tmp_path / "rollouts.jsonl", "f7", db)
    for event in ("started", "canary", "promoted"):
        history.record({"event": event, "rollout": "r1"})
    assert opened == [db]
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    History(tmp_path / "more.jsonl", "f7", str(blocked / "fleet.sqlite")).record({"event": "started"})
    assert [e["event"] for e in read_history(tmp_path / "more.jsonl")] == ["started"]
    assert "the event is in" in caplog.text


@pytest.mark.slow
@needs_mosquitto
def test_a_soak_with_faults_commits_every_report_once(tmp_path: Path) -> None:
    """2,000 devices for two minutes through 4 collectors into PostgreSQL, while a collector is
    killed with -9, PostgreSQL and the broker restart and (as root) the database disk fills."""
    from edgekit.testing.postgres import find_postgres

    if find_postgres() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from fleet_soak import SoakConfig, run_soak

    result = run_soak(SoakConfig(devices=2000, rate=800, seconds=120), tmp_path, say=lambda line: None)
    assert len(result.faults) >= 3, result.faults
    assert result.published > 80_000 and result.committed == result.published, result
    assert (result.lost, result.gaps) == (0, 0), result.lost_at
    assert result.dashboard_p95_ms["fleet"] < 1000 and "Seq Scan" not in result.fleet_plan, result.fleet_plan
