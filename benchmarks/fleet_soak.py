"""A fleet soak with faults: simulated devices publishing real reports and sealed samples to one
Mosquitto, collectors in one shared group writing one PostgreSQL, for minutes, while a
collector is killed with -9 and restarted, PostgreSQL restarts and the broker restarts.

    python benchmarks/fleet_soak.py [--devices 2000] [--rate 5000] [--minutes 10] [--collectors 4]

Afterwards every message the devices published must be in the database once, with no gap
the devices did not make. Printed: the offered and sustained reports/s, each part's CPU, the
lag from publish to commit (p50, p99, outside the fault windows), redeliveries, and the
dashboard's fleet and device pages' p95 on the final database, with the fleet query's plan.
Devices are light: one process publishes for many, from a validated report template whose
sequence number and window change per message; one message in SAMPLE_EVERY is a sample
sealed to the fleet key. A device's outbox is paho's queue: QoS 1 messages wait there
while the broker is away and are sent again after it returns.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from soak_parts import CpuMeter, DatabaseDisk, soak_database  # noqa: E402

from edgekit.runtime.telemetry.publisher import NO_MATCHING_SUBSCRIBERS  # noqa: E402

SAMPLE_EVERY = 100
PUBLISHERS = 4


@dataclass(frozen=True)
class SoakConfig:
    devices: int = 2000
    rate: float = 5000.0
    """Messages per second offered, all devices together."""
    seconds: float = 600.0
    collectors: int = 4
    faults: bool = True


@dataclass
class SoakResult:
    config: SoakConfig
    published: int = 0
    committed: int = 0
    lost: int = 0
    gaps: int = 0
    redelivered: int = 0
    sustained: float = 0.0
    lag_p50_s: float = 0.0
    lag_p99_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    dashboard_p95_ms: dict[str, float] = field(default_factory=dict)
    fleet_plan: str = ""
    lost_at: dict[int, int] = field(default_factory=dict)
    """Messages missing, by the second of the run after which they were missing."""
    faults: list[tuple[str, float, float]] = field(default_factory=list)
    collectors_said: dict[str, int] = field(default_factory=dict)
    """The collectors' log lines (numbers blanked), with how many times each was said."""


def _publish(
    index: int, port: int, names: list[str], rate: float, stop: Any, results: Any, public: bytes
) -> None:
    """One publisher process: ``names`` devices at ``rate`` messages/s in all, until ``stop``."""
    import numpy as np
    import paho.mqtt.client as mqtt
    from cryptography.hazmat.primitives.asymmetric import x25519
    from fleet_sim import SimDevice, digits
    from paho.mqtt.enums import CallbackAPIVersion

    from edgekit.core.telemetry import topic

    key = x25519.X25519PublicKey.from_public_bytes(public)
    devices = [SimDevice(name) for name in names]
    templates = [json.loads(device.report(time.time(), window_s=1.0)) for device in devices]
    for device in devices:
        device.seq = 0
    x, pred, confidence = digits()[0][:2], np.arange(2), np.full(2, 0.4, np.float32)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-devices-{index}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    answers: deque[tuple[int, int]] = deque()  # PUBACKs, read by this thread (paho's calls back from its own)
    client.on_publish = lambda client, userdata, mid, reason, properties: answers.append((mid, reason.value))
    client.reconnect_delay_set(1, 30)  # as the agent backs off
    client.connect("127.0.0.1", port)
    client.loop_start()
    waiting: dict[int, tuple[str, bytes]] = {}
    unheard: list[tuple[str, bytes]] = []
    sent = samples = acked = 0
    interval, due, retry_at = 1.0 / rate, time.monotonic(), 0.0
    while not stop.is_set():
        acked += _answered(answers, waiting, unheard)
        now = time.monotonic()
        if unheard and now >= retry_at:  # kept, as the agent's outbox keeps what nobody took
            _resend(client, unheard, waiting)
            retry_at = now + 0.5
        if now < due:
            time.sleep(min(due - now, 0.005))
            continue
        burst = int((now - due) / interval) + 1
        for _ in range(burst):
            slot = sent % len(devices)
            device, template = devices[slot], templates[slot]
            sent += 1
            if sent % SAMPLE_EVERY == 0:
                payload, kind = device.sample(x, pred, confidence, key), "sample"
                samples += 1
            else:
                device.seq += 1
                wall = time.time()
                template.update(seq=device.seq, start=wall - 1.0, end=wall)
                payload, kind = json.dumps(template).encode(), "report"
            item = (topic("soak", device.node, kind), payload)
            waiting[client.publish(*item, qos=1).mid] = item
        due += burst * interval
    deadline = time.monotonic() + 120
    while acked < sent and time.monotonic() < deadline:
        acked += _answered(answers, waiting, unheard)
        _resend(client, unheard, waiting)
        time.sleep(0.2)
    client.disconnect()
    client.loop_stop()
    results.put({"sent": sent, "samples": samples, "unsent": sent - acked,
                 "seqs": {device.node: device.seq for device in devices}})  # fmt: skip


def _resend(client: Any, unheard: list[tuple[str, bytes]], waiting: dict[int, tuple[str, bytes]]) -> None:
    for item in unheard:
        waiting[client.publish(*item, qos=1).mid] = item
    unheard.clear()


def _answered(answers: deque[tuple[int, int]], waiting: dict[int, tuple[str, bytes]],
              unheard: list[tuple[str, bytes]]) -> int:  # fmt: skip
    """Settle the PUBACKs so far: 'No matching subscribers' (16) goes back to be sent again."""
    taken = 0
    while answers:
        mid, reason = answers.popleft()
        item = waiting.pop(mid, None)  # publish() returned the mid, in this thread, before this runs
        if item is None:
            continue  # answered twice (sent again after a reconnect)
        if reason == NO_MATCHING_SUBSCRIBERS:
            unheard.append(item)
        else:
            taken += 1
    return taken


def _collector(broker_url: str, url: str, home: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "edgekit", "fleet", "collect", "--broker", broker_url, "--fleet", "soak",
               "--db", url, "--group", "soak", "--json"]  # fmt: skip
    with open(log, "ab") as handle:
        environment = {**os.environ, "EDGEKIT_HOME": str(home)}
        return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=handle)


def run_soak(config: SoakConfig, folder: Path, say: Any = print) -> SoakResult:
    """Run the soak in ``folder``; returns what it measured (see the module's text)."""
    from edgekit.fleet import init_fleet, load_collector_key
    from edgekit.testing.mosquitto import LocalBroker
    from edgekit.testing.postgres import LocalPostgres

    home = folder / "home"
    key = load_collector_key("soak", init_fleet("soak", home / "fleets" / "soak"))
    public = key.public_key().public_bytes_raw()
    result = SoakResult(config)
    postgres = LocalPostgres()
    disk = DatabaseDisk(postgres.folder / "tables")
    with disk, postgres, LocalBroker(folder / "broker") as broker:
        url = soak_database(postgres, disk)
        if config.faults and not disk.mounted:
            say("  (no tmpfs could be mounted, so the database disk is not filled: run as root for it)")
        logs = [folder / f"collector{i}.log" for i in range(config.collectors)]
        collectors = [_collector(broker.url, url, home, log) for log in logs]
        time.sleep(4)
        context = mp.get_context("fork")
        stop, results = context.Event(), context.Queue()
        names = [f"dev{i:05d}" for i in range(config.devices)]
        publishers = [  # daemons: if a fault step raises, they must not hold the process at exit
            context.Process(target=_publish, daemon=True, args=(
                i, broker.port, names[i::PUBLISHERS], config.rate / PUBLISHERS, stop, results, public))
            for i in range(PUBLISHERS)
        ]  # fmt: skip
        cpu = CpuMeter()
        started = time.time()
        for process in publishers:
            process.start()
        schedule = _faults(config, started, disk.mounted)
        while time.time() - started < config.seconds:
            assert broker._process is not None
            roles = {p.pid: "devices" for p in publishers if p.pid} | {broker._process.pid: "mosquitto"}
            cpu.sample(roles | {c.pid: "collectors" for c in collectors})
            if schedule and time.time() >= schedule[0][1]:
                name, _ = schedule.pop(0)
                began = time.time()
                _inject(name, collectors, broker, postgres, disk, (url, home, logs))
                result.faults.append((name, began, time.time()))
                say(f"  {time.time() - started:6.1f} s: {name}")
            time.sleep(0.5)
        stop.set()
        reports = [results.get(timeout=180) for _ in publishers]
        for process in publishers:
            process.join(timeout=30)
        published_seqs = {node: seq for r in reports for node, seq in r["seqs"].items()}
        result.published = sum(published_seqs.values())
        _wait_committed(url, result.published, timeout_s=120)
        cpu.sample({c.pid: "collectors" for c in collectors})
        for process in collectors:
            process.send_signal(signal.SIGTERM)
        for process in collectors:
            process.wait(timeout=120)
        _measure(result, url, published_seqs, started, config)
        result.collectors_said = _said(logs)
        result.cpu = {role: round(seconds / config.seconds, 2) for role, seconds in cpu.by_role().items()}
        _dashboard(result, url, sorted(published_seqs)[0], home / "fleets" / "soak")
    return result


FAULTS = ("kill -9 one collector, restart it", "restart PostgreSQL", "restart the broker",
          "fill the database disk for 3 s")  # fmt: skip


def _faults(config: SoakConfig, started: float, disk: bool) -> list[tuple[str, float]]:
    """The faults, spread over the run at a fifth of it apart."""
    names = (FAULTS if disk else FAULTS[:-1]) if config.faults else ()
    return [(name, started + (i + 1) / 5 * config.seconds) for i, name in enumerate(names)]


def _inject(name: str, collectors: list[subprocess.Popen[bytes]], broker: Any, postgres: Any,
            disk: DatabaseDisk, collector_args: tuple[str, Path, list[Path]]) -> None:  # fmt: skip
    url, home, logs = collector_args
    if name == FAULTS[0]:
        collectors[0].send_signal(signal.SIGKILL)
        collectors[0].wait()
        time.sleep(2)
        collectors[0] = _collector(broker.url, url, home, logs[0])
    elif name == FAULTS[1]:
        postgres.pause()
        time.sleep(3)
        postgres.resume()
    elif name == FAULTS[2]:
        broker.stop()
        time.sleep(2)
        broker.start()
    else:
        disk.fill()
        time.sleep(3)
        disk.clear()


def _said(logs: list[Path]) -> dict[str, int]:
    import re

    lines = [re.sub(r"\d+(\.\d+)?", "N", line)[:160] for log in logs for line in log.read_text().splitlines()]
    return {line: lines.count(line) for line in sorted(set(lines))}


def _wait_committed(url: str, expected: int, timeout_s: float) -> None:
    import sqlalchemy as sa

    from edgekit.fleet import open_engine

    engine = open_engine(url)
    deadline = time.monotonic() + timeout_s
    query = sa.text("SELECT (SELECT COUNT(*) FROM reports) + (SELECT COUNT(*) FROM samples)")
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.execute(query).scalar() >= expected:
                break
        time.sleep(1)
    engine.dispose()


def _measure(result: SoakResult, url: str, seqs: dict[str, int], started: float, config: SoakConfig) -> None:
    import sqlalchemy as sa

    from edgekit.fleet import open_engine
    from edgekit.fleet.queries import fleet_state

    engine = open_engine(url)
    state = fleet_state(engine, "soak")
    result.gaps = sum(state["gaps"].values())
    result.redelivered = state["skipped"]["duplicate"]
    windows = [f"NOT (end_s BETWEEN {a - 1:.3f} AND {b + 15:.3f})" for _, a, b in result.faults]
    quiet = " AND ".join(windows) or "TRUE"
    with engine.connect() as connection:
        per_node = dict(connection.execute(sa.text(
            "SELECT node, COUNT(*) FROM (SELECT node FROM reports UNION ALL SELECT node FROM samples) m "
            "GROUP BY node"
        )).all())  # fmt: skip
        p50, p99 = connection.execute(sa.text(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY received - end_s), "
            f"percentile_cont(0.99) WITHIN GROUP (ORDER BY received - end_s) FROM reports WHERE {quiet}"
        )).one()  # fmt: skip
        last = connection.execute(sa.text("SELECT MAX(received) FROM reports")).scalar()
        holes = connection.execute(sa.text(
            "SELECT received, step FROM (SELECT received, "
            "LEAD(seq) OVER (PARTITION BY node ORDER BY seq) - seq AS step FROM (SELECT node, seq, received "
            "FROM reports UNION ALL SELECT node, seq, received FROM samples) m) s WHERE step > 1"
        )).all()  # fmt: skip
    for received, step in holes:
        second = int(received - started)
        result.lost_at[second] = result.lost_at.get(second, 0) + step - 1
    engine.dispose()
    result.committed = sum(per_node.values())
    result.lost = sum(max(0, seq - per_node.get(node, 0)) for node, seq in seqs.items())
    result.sustained = round(state["reports"] / max(last - started, 1e-9), 1)
    result.lag_p50_s, result.lag_p99_s = round(p50, 3), round(p99, 3)


def _dashboard(result: SoakResult, url: str, node: str, fleet_dir: Path) -> None:
    """The fleet and device pages' p95 over 20 requests each, in process, on the final database."""
    import asyncio

    import httpx
    import sqlalchemy as sa

    from edgekit.fleet import load_collector_key, open_engine
    from edgekit.fleet.dashboard.app import Dashboard, build_app

    engine = open_engine(url)
    app = build_app(Dashboard(engine, "soak", load_collector_key("soak", fleet_dir)))

    async def timed(path: str) -> float:
        transport = httpx.ASGITransport(app=app)
        took = []
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for _ in range(20):
                began = time.perf_counter()
                answer = await client.get(path)
                assert answer.status_code == 200, (path, answer.status_code)
                took.append(time.perf_counter() - began)
        return sorted(took)[18] * 1e3

    result.dashboard_p95_ms = {page: round(asyncio.run(timed(path)), 1)
                               for page, path in (("fleet", "/"), ("device", f"/device/{node}"))}  # fmt: skip
    from edgekit.fleet.dashboard.data import latest_query

    with engine.connect() as connection:
        plan = connection.execute(sa.text("EXPLAIN " + str(latest_query("soak").compile(
            engine, compile_kwargs={"literal_binds": True})))).scalars()  # fmt: skip
        result.fleet_plan = "\n".join(plan)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s offered, all devices together")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--collectors", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = SoakConfig(args.devices, args.rate, args.minutes * 60, args.collectors)
    print(f"{config.devices} devices offering {config.rate:,.0f} messages/s for {config.seconds:.0f} s, "
          f"{config.collectors} collectors, Mosquitto and PostgreSQL on loopback, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        result = run_soak(config, Path(tmp))
    if args.json:
        print(json.dumps(asdict(result), indent=2))
        return
    print(f"published {result.published:,}, committed {result.committed:,}: lost {result.lost}, gaps "
          f"{result.gaps}, redelivered (counted, written once) {result.redelivered:,}")
    print(f"sustained {result.sustained:,.0f} reports/s; publish to commit p50 {result.lag_p50_s:.3f} s, "
          f"p99 {result.lag_p99_s:.3f} s (outside the fault windows)")
    cores = ", ".join(f"{role} {used:.2f}" for role, used in sorted(result.cpu.items()))
    print(f"CPU (cores, mean): {cores}")
    print(f"dashboard p95: fleet page {result.dashboard_p95_ms['fleet']:.0f} ms, device page "
          f"{result.dashboard_p95_ms['device']:.0f} ms")
    for line, count in result.collectors_said.items():
        print(f"collectors said ({count}×): {line}")
    if result.lost_at:
        print("missing after second: " + ", ".join(f"{t}: {n}" for t, n in sorted(result.lost_at.items())))
    print("fleet page query plan:\n  " + result.fleet_plan.replace("\n", "\n  "))


if __name__ == "__main__":
    main()
