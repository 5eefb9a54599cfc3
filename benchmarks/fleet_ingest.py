"""Fleet ingest into PostgreSQL with 1, 2 and 4 collectors in one shared subscription, against
a bare paho subscriber that only receives, in one run, on a local Mosquitto and PostgreSQL.

    python benchmarks/fleet_ingest.py [--reports 20000]

For each case, the subscribers connect and are then stopped (SIGSTOP), every report is
published, and the clock runs from SIGCONT until the last one is received (bare) or
committed (collectors: validated, written in batches, acknowledged after each commit). So
the publisher is not measured, only the ingest. Reports come from 200 simulated devices.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BARE = """
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, count = int(sys.argv[1]), int(sys.argv[2])
seen = [0, 0.0]
def on_message(client, userdata, message):
    seen[0] += 1
    seen[1] = time.time()
client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.on_connect = lambda c, u, f, r, p: c.subscribe("$share/bare/edgekit/bench/+/report", qos=1)
client.on_message = on_message
client.connect("127.0.0.1", port)
client.loop_start()
print("ready", flush=True)
while seen[0] < count:
    time.sleep(0.01)
print(seen[1], flush=True)
"""


def publish(port: int, count: int) -> None:
    from fleet_sim import Publisher, SimDevice

    devices = [SimDevice(f"gw{i}") for i in range(200)]
    publisher = Publisher(port, "bench")
    start = time.time() - (count // len(devices) + 1) * 60
    for index in range(count):
        device = devices[index % len(devices)]
        publisher.send(device, "report", device.report(start + (index // len(devices)) * 60))
        if index % 2000 == 1999:
            publisher.wait()
    publisher.close()


def bare(port: int, count: int) -> float:
    process = subprocess.Popen(
        [sys.executable, "-c", BARE, str(port), str(count)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    process.send_signal(signal.SIGSTOP)
    publish(port, count)
    started = time.time()
    process.send_signal(signal.SIGCONT)
    last = float(process.stdout.readline())
    process.wait()
    return last - started


def collectors(port: int, url: str, home: Path, count: int, n: int) -> float:
    import sqlalchemy as sa

    from edgekit.fleet import open_engine

    env = {**os.environ, "EDGEKIT_HOME": str(home)}
    running = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgekit",
                "fleet",
                "collect",
                "--broker",
                f"mqtt://127.0.0.1:{port}",
                "--fleet",
                "bench",
                "--db",
                url,
                "--group",
                f"ingest{n}",
                "--session",
                f"n{n}-c{i}",
                "--json",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    engine = open_engine(url)
    time.sleep(4)
    for process in running:
        process.send_signal(signal.SIGSTOP)
    publish(port, count)
    started = time.time()
    for process in running:
        process.send_signal(signal.SIGCONT)
    with engine.connect() as connection:
        while connection.execute(sa.text("SELECT COUNT(*) FROM reports")).scalar() < count:
            time.sleep(0.05)
            connection.commit()
    took = time.time() - started
    for process in running:
        process.send_signal(signal.SIGTERM)
        process.wait()
    engine.dispose()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=20000)
    args = parser.parse_args()

    from edgekit.fleet import init_fleet
    from edgekit.testing.mosquitto import LocalBroker
    from edgekit.testing.postgres import LocalPostgres

    with tempfile.TemporaryDirectory() as tmp, LocalPostgres() as postgres:
        folder = Path(tmp)
        init_fleet("bench", folder / "home" / "fleets" / "bench")
        print(f"{args.reports} reports from 200 simulated devices, Mosquitto and PostgreSQL on loopback, "
              f"{os.cpu_count()} cores")
        results = {}
        with LocalBroker(folder / "broker") as broker:
            took = bare(broker.port, args.reports)
            print(f"bare paho subscriber (receive only): {args.reports / took:8,.0f} reports/s")
            for n in (1, 2, 4):
                url = postgres.create_database(f"ingest{n}")
                results[n] = args.reports / collectors(broker.port, url, folder / "home", args.reports, n)
                versus_bare = results[n] * took / args.reports
                ratios = f"{results[n] / results[1]:.2f}x one collector, {versus_bare:.2f}x bare"
                name = f"{n} collector{'s' if n > 1 else ' '}"
                print(f"{name} into PostgreSQL:      {results[n]:8,.0f} reports/s ({ratios})")


if __name__ == "__main__":
    main()
