"""What the examples share: run edgekit commands as a user types them, start a local broker
when Mosquitto is installed, and check and record each example's success criteria.

An example plays two machines in one folder: the operator's workstation (OUT/operator) and
the device (OUT/device); each is the EDGEKIT_HOME of the commands it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.testing.mosquitto import INSTALL_HINT, LocalBroker, find_mosquitto

QUICK_ENV = "EDGEKIT_EXAMPLES_QUICK"


def arguments(doc: str, out: str) -> argparse.Namespace:
    """--out (emptied and made again on every run, if an example made it) and --quick (or
    EDGEKIT_EXAMPLES_QUICK=1)."""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc
    )
    parser.add_argument("--out", type=Path, default=Path(out), help=f"work folder (default: {out})")
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get(QUICK_ENV) == "1",
        help=f"train briefly, as CI does (also {QUICK_ENV}=1)",
    )
    args = parser.parse_args()
    marker = args.out / ".edgekit-example"
    if args.out.exists() and any(args.out.iterdir()) and not marker.exists():
        parser.error(f"{args.out} has files this example did not make; choose another --out")
    shutil.rmtree(args.out, ignore_errors=True)  # a fresh start: earlier keys, store and broker go
    args.out.mkdir(parents=True)
    marker.touch()
    return args


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


class Machines:
    """``edgekit(...)`` on the operator's workstation, ``device(...)`` on the device."""

    def __init__(self, out: Path) -> None:
        self.operator_home = out / "operator"
        self.device_home = out / "device"

    def edgekit(self, *args: str | Path) -> Any:
        return self._run(self.operator_home, args)

    def device(self, *args: str | Path) -> Any:
        return self._run(self.device_home, args)

    @contextmanager
    def on_device(self) -> Iterator[None]:
        """In-process code (the device's application) sees the device's EDGEKIT_HOME."""
        before = os.environ.get("EDGEKIT_HOME")
        os.environ["EDGEKIT_HOME"] = str(self.device_home)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("EDGEKIT_HOME", None)
            else:
                os.environ["EDGEKIT_HOME"] = before

    def background(self, *args: str | Path) -> subprocess.Popen[str]:
        """Start an operator's command that runs alongside (``fleet watch``); stdout is piped."""
        wide = {**self._env(self.operator_home), "COLUMNS": "120"}  # rich's table width in a pipe
        return subprocess.Popen(
            self._command(self.operator_home, args), env=wide, stdout=subprocess.PIPE, text=True
        )

    def _command(self, home: Path, args: tuple[str | Path, ...]) -> list[str]:
        command = ["edgekit", *map(str, args)]
        where = "device" if home == self.device_home else "operator"
        print(f"[{where}]$ {shlex.join(command)}", flush=True)
        return command

    def _env(self, home: Path) -> dict[str, str]:
        return {**os.environ, "EDGEKIT_HOME": str(home)}

    def _run(self, home: Path, args: tuple[str | Path, ...]) -> Any:
        """Print the command, run it, and return its parsed output when it has --json.
        A failing command stops the example with the command's own one-line error."""
        command = self._command(home, args)
        as_json = "--json" in command
        done = subprocess.run(
            command,
            env=self._env(home),
            stdout=subprocess.PIPE if as_json else None,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"example stopped: `{shlex.join(command)}` exited {done.returncode}")
        return json.loads(done.stdout) if as_json else None


@contextmanager
def local_broker(folder: Path) -> Iterator[LocalBroker | None]:
    """A Mosquitto broker on a free loopback port, or None (said once) without Mosquitto."""
    if find_mosquitto() is None:
        print(
            f"\nno MQTT broker here, so the telemetry part is skipped: {INSTALL_HINT}, then run again",
            flush=True,
        )
        yield None
        return
    with LocalBroker(folder) as broker:
        print(f"\nMosquitto listening on {broker.url} (its files in {folder})", flush=True)
        yield broker


@dataclass
class Checks:
    """The example's success criteria: printed, written to OUT/summary.json, and the exit code."""

    out: Path
    results: list[dict[str, Any]] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.results.append({"check": name, "ok": bool(ok), "detail": detail})

    def finish(self, telemetry: bool | None = None) -> int:
        """``telemetry``: whether the telemetry part ran (False: skipped, no broker; None: none)."""
        heading("checks")
        for result in self.results:
            print(f"  {'PASS' if result['ok'] else 'FAIL'}  {result['check']}: {result['detail']}")
        if telemetry is False:
            print("  SKIP  telemetry checks: no Mosquitto here")
        summary = {"telemetry": telemetry, "checks": self.results, "numbers": self.numbers}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        failed = [r["check"] for r in self.results if not r["ok"]]
        verdict = f"FAILED: {', '.join(failed)}" if failed else "all checks passed"
        print(f"\n{verdict} ({self.out / 'summary.json'})")
        return 1 if failed else 0


def run(main: Any) -> None:
    """Run an example's ``main() -> exit code``; Ctrl-C stops it quietly."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
