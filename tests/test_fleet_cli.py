"""The loop through the command line: run with telemetry, watch, collect, convert the samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.testing.mosquitto import LocalBroker, find_mosquitto

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None, reason="mosquitto is not installed (.ci/run installs it)"
)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


@pytest.mark.slow
def test_run_watch_collect_and_convert_the_samples(
    tmp_path: Path, converted: Any, digits_files: dict[str, Path], digits_eval: Any
) -> None:
    x, _ = digits_eval
    bundle = converted("int8").output
    assert converted("int8").manifest.reference is not None  # drift baseline from the calibration data
    init = _cli("fleet", "init", "meters", "--json")
    assert init.exit_code == 0, init.output
    assert set(json.loads(init.output)["device_files"]) == {"fleet.pub", "fleet.secret"}
    with LocalBroker(tmp_path / "broker") as broker:
        common = ["--broker", broker.url, "--fleet", "meters"]
        out = tmp_path / "collected"
        first = _cli("fleet", "collect", *common, "--out", str(out), "--duration", "0.3", "--json")
        assert first.exit_code == 0, first.output  # the session now exists at the broker
        watch = subprocess.Popen(
            [sys.executable, "-m", "edgekit", "fleet", "watch", *common, "--json", "--duration", "25"],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        config = tmp_path / "telemetry.toml"
        config.write_text(
            f'[telemetry]\nbroker = "{broker.url}"\nfleet = "meters"\ncapture = "low-confidence:0.9999"\n'
            f'capture_max = 40\noutbox = "{tmp_path / "outbox.sqlite"}"\n'
        )
        np.savez(tmp_path / "batch.npz", x=x)
        import time

        time.sleep(3)  # let watch subscribe
        run = _cli(
            "run",
            str(bundle),
            "--input",
            str(tmp_path / "batch.npz"),
            "--telemetry-config",
            str(config),
            "--json",
        )
        assert run.exit_code == 0, run.output
        status = json.loads(run.output)["telemetry"]
        assert status["sent"] == 2 and status["queued"] == 0  # one report, one sample message
        collect = _cli("fleet", "collect", *common, "--out", str(out), "--idle", "2", "--json")
        assert collect.exit_code == 0, collect.output
        summary = json.loads(collect.output)
        watch.terminate()
        lines = [json.loads(line) for line in watch.communicate(timeout=30)[0].splitlines()]
        # without a terminal, the table is printed once when watch stops (here: idle for 1 s)
        table = _cli("fleet", "watch", *common, "--idle", "1")
    assert table.exit_code == 0 and "fleet meters: 0 online, 1 offline" in table.stdout
    assert summary["reports"] == 1 and summary["inferences"] == len(x)
    assert summary["samples"] == 40 and sum(summary["skipped"].values()) == 0
    assert (out / "drift.html").read_text().count("<img") == 1
    reports = [line for line in lines if line["event"] == "report"]
    assert reports[0]["node"][:12] in table.stdout  # the retained status names the node
    assert reports and reports[0]["inferences"] == len(x) and reports[0]["drift"] < 0.1
    v2 = _cli(
        "convert", str(digits_files["model"]), "--target", "raspberry-pi-5", "--precision", "int8",
        "--calibration", str(out / "samples.npz"), "--eval", str(digits_files["evaluation"]),
        "-o", str(tmp_path / "v2.ekb"), "--json",
    )
    assert v2.exit_code == 0, v2.output
    from edgekit.core.bundle import read_manifest

    manifest = read_manifest(tmp_path / "v2.ekb")
    assert manifest.artifacts[0].metrics.calibration_samples == 40


def test_telemetry_options_fail_in_one_line(tmp_path: Path, converted: Any, digits_eval: Any) -> None:
    x, _ = digits_eval
    np.save(tmp_path / "x.npy", x[:2])
    bundle = str(converted("int8").output)
    no_fleet = _cli("run", bundle, "--input", str(tmp_path / "x.npy"), "--telemetry", "mqtt://127.0.0.1:9")
    assert no_fleet.exit_code == 2 and "--fleet" in no_fleet.stderr
    unknown = _cli(
        "run",
        bundle,
        "--input",
        str(tmp_path / "x.npy"),
        "--telemetry",
        "mqtt://127.0.0.1:9",
        "--fleet",
        "nobody",
    )
    assert unknown.exit_code == 2
    assert (
        unknown.stderr.startswith("error: no readable fleet secret") and "fleet init nobody" in unknown.stderr
    )
    assert len(unknown.stderr.strip().splitlines()) == 1
    bad_url = _cli(
        "run", bundle, "--input", str(tmp_path / "x.npy"), "--telemetry", "http://x", "--fleet", "a"
    )
    assert bad_url.exit_code == 2 and "mqtt://host:1883" in bad_url.stderr
    offline = _cli("fleet", "watch", "--broker", "mqtt://127.0.0.1:9", "--fleet", "a", "--duration", "1")
    assert offline.exit_code == 1 and offline.stderr.startswith("error: cannot reach broker")


def test_collect_progress_in_a_pipe_is_whole_lines_not_carriage_returns() -> None:
    import io
    from types import SimpleNamespace

    from edgekit.views.fleet import collect_progress

    collector = SimpleNamespace(reports=3, sample_count=1, skipped={"malformed": 2})
    log = io.StringIO()  # not a terminal
    show = collect_progress(log, every=0.0)
    show(collector)
    show(collector)
    assert log.getvalue() == "3 reports, 1 samples, 2 skipped\n" * 2
    throttled = io.StringIO()
    show = collect_progress(throttled)  # at most one line every ten seconds
    for _ in range(50):
        show(collector)
    assert throttled.getvalue().count("\n") == 1


def test_watch_in_a_pipe_prints_the_table_with_every_number_whole() -> None:
    import io

    from rich.console import Console

    from edgekit.fleet.view import FleetView, NodeState
    from edgekit.views.fleet import fleet_display

    view = FleetView("factory-7")
    node = "ab" * 16
    view.nodes[node] = NodeState(node, "online", {
        "model": "vibration-classifier-v12", "rate": 29999.125, "p50_ms": 1234.5678, "p95_ms": 98765.4321,
        "error_rate": 0.0, "drift": 0.1234, "dropped": 123456789,
    })  # fmt: skip
    piped = io.StringIO()
    with fleet_display(Console(file=piped), view, as_json=False) as show:
        show(None)
    text = piped.getvalue()
    assert "…" not in text
    for whole in ("status", "vibration-classifier-v12", "29999.1", "98765.4", "123456789", "dropped"):
        assert whole in text, whole
